//! Reading PyTorch checkpoints (`torch.save` files) without Python and without executing them.
//!
//! Both containers are supported: the legacy stream (PyTorch < 1.6, and `torch.save(...,
//! _use_new_zipfile_serialization=False)`; the released FairNAS checkpoints are of this kind)
//! and the zip archive (PyTorch >= 1.6). [`pickle`] interprets the pickles safely,
//! [`container`] finds the storages and materialises tensors, [`layout`] maps the names of the
//! known source layouts onto this project's canonical weight names.

pub mod container;
pub mod layout;
pub mod pickle;

pub use container::{read_checkpoint, read_checkpoint_bytes, Checkpoint, TorchTensor};
pub use layout::{convert_state_dict, ConversionProblem, ConvertedWeights, SourceLayout};

/// Element types of torch storages this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    /// From a storage class name (`FloatStorage`, ...).
    pub fn from_storage_type(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => TorchDtype::F32,
            "DoubleStorage" => TorchDtype::F64,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" | "UntypedStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }

    /// From a `torch.<name>` dtype object.
    pub fn from_dtype_name(name: &str) -> Option<Self> {
        Some(match name {
            "float32" | "float" => TorchDtype::F32,
            "float64" | "double" => TorchDtype::F64,
            "float16" | "half" => TorchDtype::F16,
            "bfloat16" => TorchDtype::BF16,
            "int64" | "long" => TorchDtype::I64,
            "int32" | "int" => TorchDtype::I32,
            "int16" | "short" => TorchDtype::I16,
            "int8" => TorchDtype::I8,
            "uint8" => TorchDtype::U8,
            "bool" => TorchDtype::Bool,
            _ => return None,
        })
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, TorchDtype::F32 | TorchDtype::F64 | TorchDtype::F16 | TorchDtype::BF16)
    }

    pub fn safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype;
        match self {
            TorchDtype::F32 => Dtype::F32,
            TorchDtype::F64 => Dtype::F64,
            TorchDtype::F16 => Dtype::F16,
            TorchDtype::BF16 => Dtype::BF16,
            TorchDtype::I64 => Dtype::I64,
            TorchDtype::I32 => Dtype::I32,
            TorchDtype::I16 => Dtype::I16,
            TorchDtype::I8 => Dtype::I8,
            TorchDtype::U8 => Dtype::U8,
            TorchDtype::Bool => Dtype::BOOL,
        }
    }
}

impl std::fmt::Display for TorchDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            TorchDtype::F32 => "float32",
            TorchDtype::F64 => "float64",
            TorchDtype::F16 => "float16",
            TorchDtype::BF16 => "bfloat16",
            TorchDtype::I64 => "int64",
            TorchDtype::I32 => "int32",
            TorchDtype::I16 => "int16",
            TorchDtype::I8 => "int8",
            TorchDtype::U8 => "uint8",
            TorchDtype::Bool => "bool",
        };
        f.write_str(name)
    }
}

/// Why a checkpoint could not be read. Every variant says what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a PyTorch checkpoint: {0}")]
    NotACheckpoint(String),
    #[error("refusing to load global `{0}`: checkpoints may only reference tensors, storages and OrderedDict (the reader never executes code)")]
    ForbiddenGlobal(String),
    #[error("checkpoint is truncated: {0} ends early")]
    Truncated(&'static str),
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("storage '{key}': {message}")]
    Storage { key: String, message: String },
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
    #[error("zip archive: {0}")]
    Zip(String),
}
