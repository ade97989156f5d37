//! The two `torch.save` containers, and turning pickled tensor views into owned tensors.
//!
//! Legacy stream (torch/serialization.py `_legacy_save`): five pickles back to back (magic
//! number, protocol version, sys-info dict, the object with persistent storage ids, the sorted
//! list of storage keys), then every storage in key order as an 8-byte little-endian element
//! count followed by its bytes. Zip archive: `<prefix>/data.pkl` holds the object and each
//! storage is the member `<prefix>/data/<key>`.
//!
//! Every size read from the file is checked against the bytes actually present before anything
//! is allocated, so a hostile header cannot make us reserve gigabytes.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::pickle::{storage_from_persistent_id, unpickle, Arena, StorageRef, Value, ValueId};
use super::{CheckpointError, TorchDtype};

/// The legacy container's magic number, 0x1950a86a20f9469cfc6c, as pickled (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// How many times the stored bytes a state dict's tensors may add up to (shared storages are
/// legitimate, endless repeats of one are not).
const MAX_EXPANSION: usize = 4;

/// Which container a checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Legacy,
    Zip,
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Container::Legacy => "legacy",
            Container::Zip => "zip",
        })
    }
}

/// An owned, contiguous (row-major) tensor with little-endian elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub dtype: TorchDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl TorchTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements widened to f64 (bools as 0/1); exact for every supported dtype except
    /// i64 values beyond 2^53.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let size = self.dtype.size_in_bytes();
        self.data
            .chunks_exact(size)
            .map(|b| match self.dtype {
                TorchDtype::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
                TorchDtype::F64 => f64::from_le_bytes(b.try_into().unwrap()),
                TorchDtype::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                TorchDtype::BF16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                TorchDtype::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
                TorchDtype::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
                TorchDtype::I16 => i16::from_le_bytes(b.try_into().unwrap()) as f64,
                TorchDtype::I8 => b[0] as i8 as f64,
                TorchDtype::U8 | TorchDtype::Bool => b[0] as f64,
            })
            .collect()
    }

    /// A candle tensor with the same dtype (bool becomes u8; i8, which candle lacks, is widened
    /// to i16).
    pub fn to_candle(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        use candle_core::DType;
        if self.dtype == TorchDtype::I8 {
            let widened: Vec<i16> = self.data.iter().map(|&b| b as i8 as i16).collect();
            return candle_core::Tensor::from_vec(widened, self.shape.as_slice(), device);
        }
        let dtype = match self.dtype {
            TorchDtype::F32 => DType::F32,
            TorchDtype::F64 => DType::F64,
            TorchDtype::F16 => DType::F16,
            TorchDtype::BF16 => DType::BF16,
            TorchDtype::I64 => DType::I64,
            TorchDtype::I32 => DType::I32,
            TorchDtype::I16 => DType::I16,
            TorchDtype::I8 => unreachable!("handled above"),
            TorchDtype::U8 | TorchDtype::Bool => DType::U8,
        };
        candle_core::Tensor::from_raw_buffer(&self.data, dtype, &self.shape, device)
    }
}

impl safetensors::View for &TorchTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A parsed checkpoint: the unpickled object tree and the bytes of every storage it uses.
#[derive(Debug)]
pub struct Checkpoint {
    pub container: Container,
    arena: Arena,
    root: ValueId,
    storages: HashMap<String, (TorchDtype, Vec<u8>)>,
}

/// Reads a `torch.save` file of either container.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let data = std::fs::read(path)
        .map_err(|source| CheckpointError::Io { path: path.display().to_string(), source })?;
    read_checkpoint_bytes(&data)
}

/// Reads a checkpoint from memory (the container is recognised by its first bytes).
pub fn read_checkpoint_bytes(data: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if data.starts_with(b"PK\x03\x04") {
        read_zip(data)
    } else if data.first() == Some(&0x80) {
        read_legacy(data)
    } else if data.is_empty() {
        Err(CheckpointError::NotACheckpoint("the file is empty".into()))
    } else {
        Err(CheckpointError::NotACheckpoint(
            "it is neither a zip archive nor a legacy torch.save stream (it does not start with a pickle)"
                .into(),
        ))
    }
}

/// Records the storages the object pickle refers to, checking that repeated ids agree.
#[derive(Default)]
struct StorageTable {
    declared: HashMap<String, (TorchDtype, usize)>,
}

impl StorageTable {
    fn record(&mut self, storage: &StorageRef) -> Result<(), CheckpointError> {
        let bad = |message: String| CheckpointError::Storage { key: storage.key.clone(), message };
        if let Some((offset, len)) = storage.view {
            if offset.checked_add(len).is_none_or(|end| end > storage.numel) {
                return Err(bad(format!(
                    "view [{offset}, +{len}) lies outside its {}-element storage",
                    storage.numel
                )));
            }
        }
        match self.declared.get(&storage.key) {
            Some(&(dtype, numel)) if dtype != storage.dtype || numel != storage.numel => Err(bad(format!(
                "declared twice, as {numel} x {dtype} and as {} x {}",
                storage.numel, storage.dtype
            ))),
            Some(_) => Ok(()),
            None => {
                self.declared.insert(storage.key.clone(), (storage.dtype, storage.numel));
                Ok(())
            }
        }
    }

    fn byte_len(&self, key: &str) -> Result<(TorchDtype, usize), CheckpointError> {
        let &(dtype, numel) = self.declared.get(key).ok_or_else(|| CheckpointError::Storage {
            key: key.to_string(),
            message: "listed in the file but never referenced".into(),
        })?;
        let bytes = numel.checked_mul(dtype.size_in_bytes()).ok_or_else(|| CheckpointError::Storage {
            key: key.to_string(),
            message: format!("absurd size {numel}"),
        })?;
        Ok((dtype, bytes))
    }
}

fn read_legacy(data: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let mut arena = Arena::default();
    let mut no_storages = |_: &Arena, _: ValueId| -> Result<StorageRef, CheckpointError> {
        Err(CheckpointError::Malformed("storage reference in a legacy header pickle".into()))
    };
    let (magic, pos) = unpickle(data, 0, &mut arena, &mut no_storages)?;
    match arena.get(magic) {
        Value::BigInt(bytes) if bytes[..] == LEGACY_MAGIC => {}
        _ => {
            return Err(CheckpointError::NotACheckpoint(format!(
                "wrong magic number {} (expected 0x1950a86a20f9469cfc6c)",
                describe_number(arena.get(magic))
            )))
        }
    }
    let (version, pos) = unpickle(data, pos, &mut arena, &mut no_storages)?;
    if arena.get(version) != &Value::Int(LEGACY_PROTOCOL_VERSION) {
        return Err(CheckpointError::NotACheckpoint(format!(
            "unsupported legacy protocol version {}",
            describe_number(arena.get(version))
        )));
    }
    let (sys_info, pos) = unpickle(data, pos, &mut arena, &mut no_storages)?;
    let little_endian = arena.dict(sys_info).and_then(|entries| {
        entries
            .iter()
            .find(|(k, _)| arena.str(*k) == Some("little_endian"))
            .map(|(_, v)| arena.get(*v).clone())
    });
    if little_endian == Some(Value::Bool(false)) {
        return Err(CheckpointError::NotACheckpoint("big-endian checkpoints are not supported".into()));
    }

    let mut table = StorageTable::default();
    let mut load = |arena: &Arena, pid: ValueId| {
        let storage = storage_from_persistent_id(arena, pid)?;
        table.record(&storage)?;
        Ok(storage)
    };
    let (root, pos) = unpickle(data, pos, &mut arena, &mut load)?;
    let (keys, mut pos) = unpickle(data, pos, &mut arena, &mut no_storages)?;
    let keys: Vec<String> = match arena.get(keys) {
        Value::List(items) => items
            .iter()
            .map(|&k| {
                arena
                    .str(k)
                    .map(str::to_string)
                    .ok_or_else(|| CheckpointError::Malformed("storage key list holds a non-string".into()))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(CheckpointError::Malformed(format!(
                "expected the storage key list after the object, found {other:?}"
            )))
        }
    };

    let mut storages = HashMap::new();
    for key in keys {
        let (dtype, declared_bytes) = table.byte_len(&key)?;
        let header = data.get(pos..pos + 8).ok_or(CheckpointError::Truncated("storage data"))?;
        let stored = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        pos += 8;
        let left = (data.len() - pos) as u64;
        let stored_bytes = stored
            .checked_mul(dtype.size_in_bytes() as u64)
            .filter(|&b| b <= left)
            .ok_or_else(|| CheckpointError::Storage {
                key: key.clone(),
                message: format!(
                    "header says {stored} elements of {dtype} but only {left} bytes remain in the file (truncated?)"
                ),
            })? as usize;
        if stored_bytes < declared_bytes {
            return Err(CheckpointError::Storage {
                key,
                message: format!(
                    "holds {stored} elements but the object refers to {} (storage shorter than declared)",
                    declared_bytes / dtype.size_in_bytes()
                ),
            });
        }
        storages.insert(key, (dtype, data[pos..pos + stored_bytes].to_vec()));
        pos += stored_bytes;
    }
    if let Some(missing) = table.declared.keys().find(|k| !storages.contains_key(*k)) {
        return Err(CheckpointError::Storage {
            key: missing.clone(),
            message: "referenced by a tensor but absent from the file".into(),
        });
    }
    Ok(Checkpoint { container: Container::Legacy, arena, root, storages })
}

fn describe_number(value: &Value) -> String {
    match value {
        Value::Int(i) => format!("{i:#x}"),
        Value::BigInt(bytes) => {
            let hex: String = bytes.iter().rev().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
        _ => "(not a number)".into(),
    }
}

fn read_zip(data: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let zip_err = |e: zip::result::ZipError| CheckpointError::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(zip_err)?;
    let pickle_names: Vec<String> = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .map(str::to_string)
        .collect();
    let pickle_name = match pickle_names.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(CheckpointError::NotACheckpoint(
                "zip archive without a data.pkl (not a torch.save file)".into(),
            ))
        }
        _ => return Err(CheckpointError::Zip(format!("several data.pkl members: {pickle_names:?}"))),
    };
    let prefix = pickle_name.strip_suffix("data.pkl").expect("filtered on the suffix").to_string();

    if let Ok(mut member) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        member
            .by_ref()
            .take(16)
            .read_to_string(&mut order)
            .map_err(|e| CheckpointError::Zip(e.to_string()))?;
        if order.trim() != "little" {
            return Err(CheckpointError::NotACheckpoint(format!(
                "byte order '{}' is not supported",
                order.trim()
            )));
        }
    }

    let pickle_bytes = read_member(&mut archive, &pickle_name, None)?;
    let mut arena = Arena::default();
    let mut table = StorageTable::default();
    let mut load = |arena: &Arena, pid: ValueId| {
        let storage = storage_from_persistent_id(arena, pid)?;
        table.record(&storage)?;
        Ok(storage)
    };
    let (root, _) = unpickle(&pickle_bytes, 0, &mut arena, &mut load)?;

    let mut storages = HashMap::new();
    let keys: Vec<String> = table.declared.keys().cloned().collect();
    for key in keys {
        let (dtype, bytes) = table.byte_len(&key)?;
        let name = format!("{prefix}data/{key}");
        let content = read_member(&mut archive, &name, Some(bytes)).map_err(|e| match e {
            CheckpointError::Zip(message) => CheckpointError::Storage { key: key.clone(), message },
            other => other,
        })?;
        storages.insert(key, (dtype, content));
    }
    Ok(Checkpoint { container: Container::Zip, arena, root, storages })
}

/// Reads a zip member; with `expected`, exactly that many bytes (an error when fewer exist).
/// Reading goes through `take`, so a member that claims a huge size cannot make us allocate
/// more than it really holds.
fn read_member(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    expected: Option<usize>,
) -> Result<Vec<u8>, CheckpointError> {
    let mut member =
        archive.by_name(name).map_err(|e| CheckpointError::Zip(format!("member {name}: {e}")))?;
    let limit = expected.map(|e| e as u64).unwrap_or(member.size());
    let mut out = Vec::new();
    member
        .by_ref()
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| CheckpointError::Zip(format!("member {name}: {e}")))?;
    if let Some(expected) = expected {
        if out.len() < expected {
            return Err(CheckpointError::Zip(format!(
                "member {name} holds {} bytes but the object refers to {expected} (storage shorter than declared)",
                out.len()
            )));
        }
    }
    Ok(out)
}

impl Checkpoint {
    /// The top-level keys, when the checkpoint is a dict (for error messages).
    pub fn top_level_keys(&self) -> Vec<String> {
        self.arena
            .dict(self.root)
            .map(|entries| entries.iter().map(|(k, _)| self.arena.describe(*k)).collect())
            .unwrap_or_default()
    }

    /// The state dict: `root[key]` when `key` is given; otherwise `root["model_state"]`,
    /// `root["state_dict"]` or the root itself, whichever is a dict of tensors. Entries keep
    /// their order; every tensor is materialised (views copied to contiguous storage).
    pub fn state_dict(&self, key: Option<&str>) -> Result<Vec<(String, TorchTensor)>, CheckpointError> {
        let root = self.arena.dict(self.root).ok_or_else(|| {
            CheckpointError::Malformed("the checkpoint is not a dict (was a whole model pickled?)".into())
        })?;
        let lookup =
            |name: &str| root.iter().find(|(k, _)| self.arena.str(*k) == Some(name)).map(|(_, v)| *v);
        let dict = match key {
            Some(name) => lookup(name).ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "no entry '{name}' in the checkpoint (top-level keys: {})",
                    self.top_level_keys().join(", ")
                ))
            })?,
            None => ["model_state", "state_dict"].into_iter().find_map(lookup).unwrap_or(self.root),
        };
        let entries = self.arena.dict(dict).ok_or_else(|| {
            CheckpointError::Malformed(format!(
                "the state dict is a {}, not a dict",
                self.arena.describe(dict)
            ))
        })?;
        let mut out = Vec::with_capacity(entries.len());
        // Many entries may view one storage; a hostile file could use that to expand a small
        // storage into unbounded memory, so the tensors may hold at most a few times the bytes
        // the file itself stores.
        let stored: usize = self.storages.values().map(|(_, bytes)| bytes.len()).sum();
        let budget = stored.saturating_mul(MAX_EXPANSION).saturating_add(1 << 20);
        let mut materialised = 0usize;
        for &(k, v) in entries {
            let name = self.arena.str(k).ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "state dict key {} is not a string",
                    self.arena.describe(k)
                ))
            })?;
            let Value::Tensor(view) = self.arena.get(v) else {
                return Err(CheckpointError::Tensor {
                    name: name.to_string(),
                    message: format!(
                        "is a {}, not a tensor (top-level keys: {}; pick the state dict with --key)",
                        self.arena.describe(v),
                        self.top_level_keys().join(", ")
                    ),
                });
            };
            let tensor = self
                .materialise(view, budget - materialised)
                .map_err(|message| CheckpointError::Tensor { name: name.to_string(), message })?;
            materialised += tensor.data.len();
            out.push((name.to_string(), tensor));
        }
        Ok(out)
    }

    /// Copies a view out of its storage, refusing to produce more than `budget` bytes.
    fn materialise(&self, view: &super::pickle::TensorRef, budget: usize) -> Result<TorchTensor, String> {
        let storage = &view.storage;
        let (dtype, bytes) =
            self.storages.get(&storage.key).ok_or_else(|| format!("storage '{}' is missing", storage.key))?;
        let size = dtype.size_in_bytes();
        let stored = bytes.len() / size;
        let (base, available) = match storage.view {
            Some((offset, len)) => (offset, len),
            None => (0, storage.numel.min(stored)),
        };
        if base + available > stored {
            return Err(format!(
                "storage view ends at element {} but the storage holds {stored}",
                base + available
            ));
        }
        let numel = view
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("absurd shape {:?}", view.shape))?;
        if numel == 0 {
            return Ok(TorchTensor { dtype: *dtype, shape: view.shape.clone(), data: Vec::new() });
        }
        let last = view.shape.iter().zip(&view.strides).try_fold(view.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|step| acc.checked_add(step))
        });
        match last {
            Some(last) if last < available && numel <= available => {}
            _ => {
                return Err(format!(
                    "shape {:?} with strides {:?} at offset {} needs more than the {available} elements its storage holds",
                    view.shape, view.strides, view.offset
                ))
            }
        }
        if numel * size > budget {
            return Err(format!(
                "the state dict's tensors would need more than {MAX_EXPANSION}x the {} storage bytes in the file (views of one storage repeated?)",
                self.storages.values().map(|(_, b)| b.len()).sum::<usize>()
            ));
        }
        let src = &bytes[base * size..(base + available) * size];
        let contiguous = candle_core::Layout::contiguous(view.shape.as_slice()).stride().to_vec();
        let data = if view.strides == contiguous {
            src[view.offset * size..(view.offset + numel) * size].to_vec()
        } else {
            gather(src, size, view.offset, &view.shape, &view.strides, numel)
        };
        Ok(TorchTensor { dtype: *dtype, shape: view.shape.clone(), data })
    }
}

/// Copies a strided view into row-major order (indices already checked against `src`).
fn gather(
    src: &[u8],
    size: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
    numel: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; shape.len()];
    let mut at = offset;
    for _ in 0..numel {
        out.extend_from_slice(&src[at * size..(at + 1) * size]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += strides[d];
            if index[d] < shape[d] {
                break;
            }
            at -= strides[d] * shape[d];
            index[d] = 0;
        }
    }
    out
}
