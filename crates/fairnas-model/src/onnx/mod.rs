//! ONNX export: any network of the family as a standard ONNX graph (opset 17), for runtimes
//! outside this project (onnxruntime, OpenVINO, tract, TensorRT, browsers, phones).
//!
//! The graph uses standard operators only: `Conv` (with `group` for depthwise), BN folded into
//! the conv's weights and bias ([`OnnxOptions::fold_bn`], default) or `BatchNormalization`,
//! `Relu` / `Clip` (ReLU6) / `Sigmoid` + `Mul` (swish), `GlobalAveragePool`, an explicit `Pad`
//! in front of every TF-SAME conv that pads, `Add` for residuals, `Flatten` + `Gemm` for the
//! classifier. The batch dimension is dynamic (`batch`); the spatial size is the spec's input
//! size, which TF-SAME padding depends on. The input preprocessing a deployer must reproduce
//! goes into the model's metadata ([`OnnxOptions::metadata`]; `fairnas-data`'s
//! `EvalTransform::metadata` gives the family's rule).
//!
//! The exporter reads the same canonical tensor names as [`crate::network::Network::load`]
//! and checks every one against [`Network::tensor_manifest`] first, so a missing or misshapen
//! tensor is an error naming it, never a broken file.
//!
//! ```
//! use fairnas_model::onnx::{export, OnnxOptions};
//! use fairnas_model::search_space::SearchSpace;
//! use fairnas_model::synthetic::synthetic_weights;
//!
//! let space = SearchSpace::nas_bench_macro();
//! let spec = space.subnet(&[1, 2, 0, 1, 2, 0, 1, 2])?;
//! let tensors = synthetic_weights(&spec, 0, &candle_core::Device::Cpu)?;
//! let model = export(&spec, &tensors, &OnnxOptions::default())?;
//! assert_eq!(model.opset_import[0].version, 17);
//! assert!(!fairnas_model::onnx::to_bytes(&model).is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use fairnas_ops::{Activation, Padding2d};
use prost::Message;

use crate::network::Network;
use crate::spec::{ArchSpec, BlockKind, Padding, SpecError};
use proto::{
    attribute_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};

/// The operator set the graph is written for.
pub const OPSET: i64 = 17;
/// The ONNX IR version of opset 17.
const IR_VERSION: i64 = 8;
/// Names of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// Fold every BatchNorm into the conv before it (eval-mode BN is an affine map): fewer
    /// nodes, the same function up to float rounding.
    pub fold_bn: bool,
    /// Key/value pairs for the model's `metadata_props`, e.g. the input preprocessing.
    pub metadata: Vec<(String, String)>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions { fold_bn: true, metadata: Vec::new() }
    }
}

/// Why a network could not be exported, naming the tensor or the file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("tensor '{0}' is missing")]
    Missing(String),
    #[error("tensor '{name}' has shape {found:?}, the network needs {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// The ONNX model of `spec` with the weights `tensors` (canonical names, any float dtype;
/// every tensor [`Network::tensor_manifest`] lists must be there, extra ones are ignored).
pub fn export(
    spec: &ArchSpec,
    tensors: &HashMap<String, Tensor>,
    options: &OnnxOptions,
) -> Result<ModelProto, OnnxError> {
    spec.validate()?;
    check_tensors(spec, tensors)?;
    let mut g = Graph {
        tensors,
        fold_bn: options.fold_bn,
        eps: spec.bn_eps,
        nodes: Vec::new(),
        initializers: Vec::new(),
        relu6_bounds: false,
    };
    let logits = g.network(spec)?;
    let batch = || Dimension { dim_value: None, dim_param: Some("batch".into()) };
    let fixed = |n: usize| Dimension { dim_value: Some(n as i64), dim_param: None };
    let size = spec.input_size;
    let input = value_info(INPUT, vec![batch(), fixed(spec.in_channels), fixed(size), fixed(size)]);
    let output = value_info(&logits, vec![batch(), fixed(spec.classes)]);
    let mut metadata = vec![
        ("fairnas.model".to_string(), spec.name.clone()),
        (
            "fairnas.blocks".to_string(),
            crate::block_string::format_blocks(&spec.blocks, spec.default_activation),
        ),
    ];
    metadata.extend(options.metadata.iter().cloned());
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "fairnas-rs".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: format!("{} ({} classes, {size}x{size} input)", spec.name, spec.classes),
        graph: Some(GraphProto {
            node: g.nodes,
            name: spec.name.clone(),
            initializer: g.initializers,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// The serialised file contents.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `model` to `path` atomically (a killed export leaves no partial file); returns the
/// file's size in bytes.
pub fn write(path: &Path, model: &ModelProto) -> Result<u64, OnnxError> {
    let bytes = to_bytes(model);
    crate::persist::write_atomically(path, &bytes)
        .map_err(|source| OnnxError::Io { path: path.into(), source })?;
    Ok(bytes.len() as u64)
}

fn check_tensors(spec: &ArchSpec, tensors: &HashMap<String, Tensor>) -> Result<(), OnnxError> {
    for (name, expected) in Network::tensor_manifest(spec)? {
        let t = tensors.get(&name).ok_or_else(|| OnnxError::Missing(name.clone()))?;
        if t.dims() != expected.as_slice() {
            return Err(OnnxError::Shape { name, expected, found: t.dims().to_vec() });
        }
    }
    Ok(())
}

fn value_info(name: &str, dim: Vec<Dimension>) -> ValueInfoProto {
    let tensor_type = TensorTypeProto { elem_type: data_type::FLOAT, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor_type) }) }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: attribute_type::INT, ..Default::default() }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: value, r#type: attribute_type::FLOAT, ..Default::default() }
}

/// One convolution of the network: what `Network::load` builds as a `ConvBnAct`.
struct Conv<'a> {
    /// Canonical prefix (`stem`, `blocks.3.dw`): `{prefix}.conv.weight`, `{prefix}.bn.*`.
    prefix: &'a str,
    kernel: usize,
    stride: usize,
    groups: usize,
    padding: Padding2d,
    /// TF-SAME convs get an explicit `Pad` node (ONNX's `auto_pad` is deprecated and its
    /// asymmetric split is runtime-defined).
    explicit_pad: bool,
    activation: Activation,
}

/// The graph under construction.
struct Graph<'a> {
    tensors: &'a HashMap<String, Tensor>,
    fold_bn: bool,
    eps: f64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    relu6_bounds: bool,
}

impl Graph<'_> {
    fn values(&self, name: &str) -> Result<Vec<f32>, OnnxError> {
        let t = self.tensors.get(name).ok_or_else(|| OnnxError::Missing(name.into()))?;
        Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = dims.iter().map(|&d| d as i64).collect();
        self.initializers.push(TensorProto {
            dims,
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data,
        });
        name.into()
    }

    /// Appends a node; its output is named `output`.
    fn node(&mut self, op: &str, inputs: &[&str], output: String, attribute: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
        });
        output
    }

    fn network(&mut self, spec: &ArchSpec) -> Result<String, OnnxError> {
        let size = spec.input_size;
        let stem = Conv {
            prefix: "stem",
            kernel: spec.stem.kernel,
            stride: spec.stem.stride,
            groups: 1,
            padding: padding(spec.stem_padding, (size, size), spec.stem.kernel, spec.stem.stride),
            explicit_pad: spec.stem_padding == Padding::TfSame,
            activation: spec.stem.activation,
        };
        let mut x = self.conv(INPUT, &stem)?;
        for (i, (b, g)) in spec.blocks.iter().zip(spec.block_geometry(size)).enumerate() {
            let prefix = format!("blocks.{i}");
            let block_input = x.clone();
            if b.kind == BlockKind::Skip {
                if b.skip_projects(g.in_channels) {
                    let name = format!("{prefix}.project");
                    let conv = Conv {
                        prefix: &name,
                        kernel: 1,
                        stride: b.stride,
                        groups: 1,
                        padding: padding(b.padding, g.in_size, 1, b.stride),
                        explicit_pad: b.padding == Padding::TfSame,
                        activation: Activation::Identity,
                    };
                    x = self.conv(&x, &conv)?;
                }
                continue;
            }
            if b.kind == BlockKind::InvertedResidual {
                x = self.conv(&x, &Conv::pointwise(&format!("{prefix}.expand"), b.activation))?;
            }
            let name = format!("{prefix}.dw");
            let dw = Conv {
                prefix: &name,
                kernel: b.kernel,
                stride: b.stride,
                groups: g.hidden_channels,
                padding: padding(b.padding, g.in_size, b.kernel, b.stride),
                explicit_pad: b.padding == Padding::TfSame,
                activation: b.activation,
            };
            x = self.conv(&x, &dw)?;
            if g.se_channels.is_some() {
                x = self.squeeze_excite(&x, &format!("{prefix}.se"), b.activation)?;
            }
            x = self.conv(&x, &Conv::pointwise(&format!("{prefix}.project"), Activation::Identity))?;
            if g.residual {
                x = self.node("Add", &[&x, &block_input], format!("{prefix}.add"), vec![]);
            }
        }
        x = self.conv(&x, &Conv::pointwise("head", spec.head.activation))?;
        let pooled = self.node("GlobalAveragePool", &[&x], "pool".into(), vec![]);
        let flat = self.node("Flatten", &[&pooled], "flatten".into(), vec![int("axis", 1)]);
        let weight = self.initializer(
            "classifier.weight",
            &[spec.classes, spec.head.channels],
            &self.values("classifier.weight")?,
        );
        let bias = self.initializer("classifier.bias", &[spec.classes], &self.values("classifier.bias")?);
        Ok(self.node("Gemm", &[&flat, &weight, &bias], OUTPUT.into(), vec![int("transB", 1)]))
    }

    /// `[pad] -> Conv -> [BatchNormalization] -> activation`.
    fn conv(&mut self, x: &str, c: &Conv) -> Result<String, OnnxError> {
        let weight_name = format!("{}.conv.weight", c.prefix);
        let dims = self
            .tensors
            .get(&weight_name)
            .ok_or_else(|| OnnxError::Missing(weight_name.clone()))?
            .dims()
            .to_vec();
        let out_channels = dims[0];
        let mut weight = self.values(&weight_name)?;
        let bn = |field: &str| format!("{}.bn.{field}", c.prefix);
        let (gamma, beta) = (self.values(&bn("weight"))?, self.values(&bn("bias"))?);
        let (mean, var) = (self.values(&bn("running_mean"))?, self.values(&bn("running_var"))?);
        let p = c.padding;
        let mut input = x.to_string();
        let mut pads = [p.top, p.left, p.bottom, p.right].map(|v| v as i64);
        if c.explicit_pad && pads.iter().any(|&v| v > 0) {
            let [top, left, bottom, right] = pads;
            let amounts = [0, 0, top, left, 0, 0, bottom, right];
            let pads_name = format!("{}.pads", c.prefix);
            self.initializers.push(TensorProto {
                dims: vec![8],
                data_type: data_type::INT64,
                name: pads_name.clone(),
                raw_data: amounts.iter().flat_map(|v: &i64| v.to_le_bytes()).collect(),
            });
            input = self.node("Pad", &[&input, &pads_name], format!("{}.pad", c.prefix), vec![]);
            pads = [0; 4];
        }
        let attributes = vec![
            ints("kernel_shape", &[c.kernel as i64, c.kernel as i64]),
            ints("strides", &[c.stride as i64, c.stride as i64]),
            ints("pads", &pads),
            int("group", c.groups as i64),
        ];
        let conv_out = format!("{}.conv", c.prefix);
        let mut y = if self.fold_bn {
            // Eval-mode BN: y = (conv - mean) * gamma / sqrt(var + eps) + beta.
            let per_output = weight.len() / out_channels.max(1);
            let mut bias = vec![0f32; out_channels];
            for o in 0..out_channels {
                let scale = gamma[o] as f64 / (var[o] as f64 + self.eps).sqrt();
                weight[o * per_output..(o + 1) * per_output]
                    .iter_mut()
                    .for_each(|w| *w = (*w as f64 * scale) as f32);
                bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
            }
            let w = self.initializer(&weight_name, &dims, &weight);
            let b = self.initializer(&format!("{}.conv.bias", c.prefix), &[out_channels], &bias);
            self.node("Conv", &[&input, &w, &b], conv_out, attributes)
        } else {
            let w = self.initializer(&weight_name, &dims, &weight);
            let conv = self.node("Conv", &[&input, &w], conv_out, attributes);
            let n = [out_channels];
            let scale = self.initializer(&bn("weight"), &n, &gamma);
            let shift = self.initializer(&bn("bias"), &n, &beta);
            let mean = self.initializer(&bn("running_mean"), &n, &mean);
            let var = self.initializer(&bn("running_var"), &n, &var);
            let eps = vec![float("epsilon", self.eps as f32)];
            self.node(
                "BatchNormalization",
                &[&conv, &scale, &shift, &mean, &var],
                format!("{}.bn", c.prefix),
                eps,
            )
        };
        y = self.activation(&y, c.activation, c.prefix);
        Ok(y)
    }

    fn activation(&mut self, x: &str, activation: Activation, prefix: &str) -> String {
        let out = format!("{prefix}.act");
        match activation {
            Activation::Identity => x.to_string(),
            Activation::Relu => self.node("Relu", &[x], out, vec![]),
            Activation::Relu6 => {
                if !self.relu6_bounds {
                    self.initializer("relu6.min", &[], &[0.0]);
                    self.initializer("relu6.max", &[], &[6.0]);
                    self.relu6_bounds = true;
                }
                self.node("Clip", &[x, "relu6.min", "relu6.max"], out, vec![])
            }
            Activation::Sigmoid => self.node("Sigmoid", &[x], out, vec![]),
            Activation::Swish => {
                let gate = self.node("Sigmoid", &[x], format!("{prefix}.sigmoid"), vec![]);
                self.node("Mul", &[x, &gate], out, vec![])
            }
        }
    }

    /// `x * sigmoid(expand(act(reduce(mean_hw(x)))))`, the two FC layers as 1x1 convs with bias.
    fn squeeze_excite(&mut self, x: &str, prefix: &str, inner: Activation) -> Result<String, OnnxError> {
        let pooled = self.node("GlobalAveragePool", &[x], format!("{prefix}.pool"), vec![]);
        let mut h = pooled;
        for (stage, activation) in [("reduce", inner), ("expand", Activation::Sigmoid)] {
            let name = format!("{prefix}.{stage}");
            let dims = self.tensors[&format!("{name}.weight")].dims().to_vec();
            let w =
                self.initializer(&format!("{name}.weight"), &dims, &self.values(&format!("{name}.weight"))?);
            let b =
                self.initializer(&format!("{name}.bias"), &[dims[0]], &self.values(&format!("{name}.bias"))?);
            let conv =
                self.node("Conv", &[&h, &w, &b], format!("{name}.conv"), vec![ints("kernel_shape", &[1, 1])]);
            h = self.activation(&conv, activation, &name);
        }
        Ok(self.node("Mul", &[x, &h], format!("{prefix}.mul"), vec![]))
    }
}

impl<'a> Conv<'a> {
    fn pointwise(prefix: &'a str, activation: Activation) -> Self {
        Conv {
            prefix,
            kernel: 1,
            stride: 1,
            groups: 1,
            padding: Padding2d::symmetric(1),
            explicit_pad: false,
            activation,
        }
    }
}

fn padding(padding: Padding, (h, w): (usize, usize), kernel: usize, stride: usize) -> Padding2d {
    match padding {
        Padding::Symmetric => Padding2d::symmetric(kernel),
        Padding::TfSame => Padding2d::tf_same(h, w, kernel, stride),
    }
}
