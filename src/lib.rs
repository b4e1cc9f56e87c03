//! # moxe
//!
//! Portable GPU inference for MoxE language models ("Mixture of xLSTM Experts with
//! Entropy-Aware Routing") on wgpu: Vulkan, Metal, DX12, and OpenGL as a fallback.
//!
//! Layers of the crate:
//! - [`checkpoint`]: checkpoint formats and their validation (model directories, safetensors
//!   files and shards, manifests, generation configs), without the GPU;
//! - [`arch`]: the architectures (MoxE, dense xLSTM, xLSTM-Large) and their blocks;
//! - [`runtime`]: a loaded model, its step graphs, sessions and generation;
//! - [`context`]: the GPU context (device, queue, caches) — new or around an existing device;
//! - [`tensor`]: GPU tensors with shape and dtype, chunked past the storage-binding limit;
//! - [`quant`]: the q8 and q4 weight formats and their CPU quantiser and reference;
//! - [`shaders`] and [`pipeline`]: the kernel registry (plain `.wgsl` files) and the
//!   pipeline cache;
//! - [`graph`]: command graphs recorded once per layer and replayed each step;
//! - [`ops`]: one file per kernel, each with its CPU reference and GPU tests;
//! - [`testing`]: helpers for headless kernel tests;
//! - [`bench`](mod@bench): benchmarks returning printable reports.

pub mod arch;
pub mod bench;
pub mod checkpoint;
pub mod context;
pub mod convert;
pub mod error;
pub mod graph;
pub mod ops;
pub mod pipeline;
pub mod profile;
pub mod quant;
pub mod runtime;
pub mod server;
pub mod shaders;
pub mod tensor;

pub mod testing;

pub use context::{Backend, Context, ContextOptions, KernelFamily};
pub use error::{Error, Result};
pub use graph::{Graph, Workgroups};
pub use tensor::{DType, HostData, Tensor};
/// The wgpu version the engine is built on, for applications that share their device.
pub use wgpu;

/// Compiles and runs the README's Rust examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
