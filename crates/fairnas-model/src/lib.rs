//! Architecture specs, the FairNAS search space, the named model family, the cost model and the
//! candle network that runs any spec, and the reader that turns PyTorch checkpoints into its
//! weights.
//!
//! Everything about one network that is not training: what it is ([`spec::ArchSpec`]: stem,
//! MBConv blocks, head, padding and BN conventions, framework-independent and serde-serialisable),
//! what it costs ([`cost::cost_report`]: params, multiply-adds, thop FLOPs, per layer), and how it
//! runs ([`network::Network`]: the eval-mode candle network of any spec, on the kernels of
//! `fairnas-ops`). It sits on `fairnas-ops` and under everything else: `fairnas-supernet` trains
//! supernets of its [`search_space::SearchSpace`]s, `fairnas-search` searches them,
//! `fairnas-data` evaluates its networks on image folders, and the `fairnas` CLI is on top.
//!
//! - Naming networks: [`selection::ModelSelection`] turns a model name (`fairnas-a`,
//!   `fairnas-b-se-0.5-transfer`, `efficientnet-lite0`...), block strings
//!   ([`block_string`]) or a choice vector into an `ArchSpec`; [`zoo`] builds the named family.
//! - Search spaces: [`search_space::SearchSpace`] (FairNAS's 19 layers x 6 candidates,
//!   NAS-Bench-Macro's 8 x 3, or any user-defined one) and [`search_space::Choices`]; a choice
//!   vector becomes a spec with [`search_space::SearchSpace::subnet`].
//! - Weights: [`pytorch`] reads `torch.save` files (legacy and zip) without Python and maps
//!   their names onto the canonical ones ([`pytorch::convert_state_dict`],
//!   [`pytorch::SourceLayout`]); [`weights`] loads a network from a local file or the Hugging
//!   Face Hub in one call; [`synthetic`] makes reproducible weights for tests and benchmarks.
//! - Deployment: [`onnx::export`] writes any network as a standard ONNX graph (opset 17) for
//!   onnxruntime, OpenVINO, tract and the rest.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use fairnas_model::cost::cost_report;
//! use fairnas_model::search_space::SearchSpace;
//! use fairnas_model::selection::ModelSelection;
//! use fairnas_model::synthetic::synthetic_network;
//! use fairnas_model::zoo::{FairnasModel, FairnasVariant};
//!
//! // FairNAS-A by name: the published size (4.6M params, 388M multiply-adds at 224x224).
//! let spec = ModelSelection::named("fairnas-a").resolve()?;
//! let cost = cost_report(&spec);
//! assert_eq!((cost.params, cost.madds), (4_651_352, 388_122_848));
//!
//! // The same network as a choice vector of the FairNAS search space.
//! let space = SearchSpace::fairnas(FairnasVariant::PLAIN);
//! let choices: Vec<usize> = FairnasModel::A.choices().0.iter().map(|&c| c as usize).collect();
//! assert_eq!(cost_report(&space.subnet(&choices)?).madds, cost.madds);
//!
//! // A NAS-Bench-Macro sub-network (CIFAR-10, 32x32) as a candle network, synthetic weights.
//! let macro_space = SearchSpace::nas_bench_macro();
//! let net = synthetic_network(&macro_space.subnet(&[1, 0, 2, 1, 0, 0, 2, 1])?, 0, DType::F32, &Device::Cpu)?;
//! let logits = net.forward(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/classify_photo.rs` reads the real EfficientNet-Lite0 PyTorch checkpoint, builds
//! the network and classifies the photos in `data/images`.

pub mod bench;
pub mod block_string;
pub mod cost;
pub mod network;
pub mod onnx;
pub mod persist;
pub mod pytorch;
pub mod search_space;
pub mod selection;
pub mod self_check;
pub mod spec;
pub mod synthetic;
pub mod weights;
pub mod zoo;

pub use fairnas_ops::Activation;
