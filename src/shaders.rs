//! The kernel registry: every WGSL file of `shaders/`, compiled into the binary with
//! `include_str!`, validated with naga, and turned into wgpu shader modules on first use.
//!
//! Convention for all kernels: every resource is in bind group 0. The bind group layout of a
//! file is derived (with naga) from ALL resources the file declares, so every entry point of
//! one file shares one layout and a bind group built for one entry point fits the others.

use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};

/// One kernel module: a WGSL file of `shaders/` with the common files appended to it.
#[derive(Debug, Clone, Copy)]
pub struct ShaderSource {
    /// The registry name (the file stem, or the alias of a second variant of a file).
    pub name: &'static str,
    /// File stem: `shaders/<file>.wgsl`.
    pub file: &'static str,
    /// WGSL text.
    pub source: &'static str,
    /// Whether the module needs the SUBGROUP feature.
    pub subgroups: bool,
    /// Whether the module needs the SHADER_INT64 feature.
    pub int64: bool,
}

/// `"file"`, optionally `as "alias"` (a second module of the same file, named `alias`),
/// optionally `:` and the features it needs (`subgroups`, `int64`), then any `+ "common"`:
/// each file `shaders/common/<common>.wgsl` (declarations several kernels share; WGSL has
/// no includes) is appended to `shaders/<file>.wgsl`, in order.
macro_rules! registry {
    ($( $file:literal $(as $alias:literal)? $(: $($flag:ident)+)? $(+ $common:literal)* ),* $(,)?) => {
        &[$(ShaderSource {
            name: registry!(@name $file $($alias)?),
            file: $file,
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file, ".wgsl")),
                $("\n", include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"), "/shaders/common/", $common, ".wgsl"
                )),)*
            ),
            subgroups: registry!(@subgroups $($($flag)+)?),
            int64: registry!(@int64 $($($flag)+)?),
        }),*]
    };
    (@name $file:literal) => { $file };
    (@name $file:literal $alias:literal) => { $alias };
    (@subgroups) => { false };
    (@subgroups subgroups $($rest:ident)*) => { true };
    (@subgroups $other:ident $($rest:ident)*) => { registry!(@subgroups $($rest)*) };
    (@int64) => { false };
    (@int64 int64 $($rest:ident)*) => { true };
    (@int64 $other:ident $($rest:ident)*) => { registry!(@int64 $($rest)*) };
}

/// Every kernel of the engine. A test checks that the files of this list and `shaders/`
/// agree.
pub const SHADERS: &[ShaderSource] = registry![
    "matmul" + "weights" + "soft_cap" + "matmul" + "inputs" + "words32",
    "gemv_subgroup": subgroups + "weights" + "soft_cap" + "matmul" + "inputs" + "words32",
    "gemv_subgroup" as "gemv_subgroup64": subgroups int64
        + "weights" + "soft_cap" + "matmul" + "inputs" + "words64",
    "matmul" as "matmul_glu"
        + "weights" + "soft_cap" + "activation" + "matmul" + "inputs_glu" + "words32",
    "gemv_subgroup" as "gemv_subgroup_glu": subgroups
        + "weights" + "soft_cap" + "activation" + "matmul" + "inputs_glu" + "words32",
    "gemv_subgroup" as "gemv_subgroup64_glu": subgroups int64
        + "weights" + "soft_cap" + "activation" + "matmul" + "inputs_glu" + "words64",
    "layer_norm" + "activation" + "group_sum_shared",
    "layer_norm" as "layer_norm_subgroup": subgroups + "activation" + "group_sum_subgroup",
    "elementwise" + "activation",
    "bandwidth_probe" + "words32",
    "bandwidth_probe" as "bandwidth_probe64": int64 + "words64",
    "indirect_args",
    "gate" + "activation",
    "route",
    "group_route",
    "router_stats",
    "moe_rows",
    "conv1d",
    "slstm_cell" + "weights" + "activation" + "slstm_h_shared",
    "slstm_cell" as "slstm_cell_subgroup": subgroups + "weights" + "activation" + "slstm_h_subgroup",
    "embedding" + "weights",
    "sample" + "sample_reduce_shared",
    "sample" as "sample_subgroup": subgroups + "sample_reduce_subgroup",
    "nll",
    "mlstm_step" + "soft_cap" + "mlstm_cell",
    "mlstm_step_wide" + "soft_cap" + "mlstm_cell",
    "mlstm_step_tiles" + "soft_cap" + "mlstm_cell",
    "mlstm_step_simd": subgroups + "soft_cap" + "mlstm_cell" + "state32",
    "mlstm_step_simd" as "mlstm_step_simd64": subgroups int64 + "soft_cap" + "mlstm_cell" + "state64",
    "mlstm_chunk" + "soft_cap" + "mlstm_cell" + "mlstm_chunk",
    "mlstm_chunk_wide" + "soft_cap" + "mlstm_cell" + "mlstm_chunk",
    "mlstm_expert",
    "skip_gate" + "group_sum_shared",
    "skip_gate" as "skip_gate_subgroup": subgroups + "group_sum_subgroup",
];

/// Looks a shader up by name.
pub fn find(name: &str) -> Option<&'static ShaderSource> {
    SHADERS.iter().find(|s| s.name == name)
}

/// The most storage buffers one engine kernel binds (the limit
/// `max_storage_buffers_per_shader_stage` a device must allow), counted once over the
/// registry with naga's parser.
pub fn max_storage_buffers() -> u32 {
    static MAX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        SHADERS
            .iter()
            .filter_map(|s| naga::front::wgsl::parse_str(s.source).ok())
            .map(|m| storage_buffers(&m))
            .max()
            .unwrap_or(0)
    })
}

/// Storage buffers `module` binds.
fn storage_buffers(module: &naga::Module) -> u32 {
    module
        .global_variables
        .iter()
        .filter(|(_, v)| v.binding.is_some())
        .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
        .count() as u32
}

/// naga capabilities a device with `features` offers to shaders. `f16_in_f32` is the
/// adapter's SHADER_F16_IN_F32 downlevel flag (`unpack2x16float`; every full WebGPU adapter
/// has it).
pub fn capabilities(features: wgpu::Features, f16_in_f32: bool) -> naga::valid::Capabilities {
    use naga::valid::Capabilities as C;
    let mut caps = C::empty();
    if f16_in_f32 {
        caps |= C::SHADER_FLOAT16_IN_FLOAT32;
    }
    if features.contains(wgpu::Features::SHADER_F16) {
        caps |= C::SHADER_FLOAT16;
    }
    if features.contains(wgpu::Features::SUBGROUP) {
        caps |= C::SUBGROUP;
    }
    if features.contains(wgpu::Features::SHADER_INT64) {
        caps |= C::SHADER_INT64;
    }
    caps
}

/// Parses and validates WGSL with naga, returning a readable error with source locations.
pub fn validate(
    name: &str,
    source: &str,
    caps: naga::valid::Capabilities,
) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| Error::Shader {
        shader: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| Error::Shader {
            shader: name.to_string(),
            message: e.emit_to_string(source),
        })?;
    Ok((module, info))
}

/// A compiled shader file: the wgpu module and the bind group layout shared by its entry
/// points.
pub struct ShaderModule {
    pub(crate) name: String,
    pub(crate) module: wgpu::ShaderModule,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline_layout: wgpu::PipelineLayout,
    /// Binding numbers in group 0, ascending.
    pub(crate) bindings: Vec<u32>,
    pub(crate) entry_points: Vec<String>,
}

impl ShaderModule {
    /// Validates and compiles WGSL `source` on the context's device.
    pub fn compile(ctx: &Context, name: &str, source: &str) -> Result<Self> {
        let (module, _) = validate(name, source, ctx.shader_capabilities())?;
        let mut entries = Vec::new();
        for (_, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            if binding.group != 0 {
                return Err(Error::Shader {
                    shader: name.to_string(),
                    message: format!(
                        "resource '{}' is in bind group {}; engine kernels use group 0 only",
                        var.name.as_deref().unwrap_or("?"),
                        binding.group
                    ),
                });
            }
            let ty = match var.space {
                naga::AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
                    read_only: !access.contains(naga::StorageAccess::STORE),
                },
                naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
                other => {
                    return Err(Error::Shader {
                        shader: name.to_string(),
                        message: format!("unsupported resource address space {other:?}"),
                    })
                }
            };
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: binding.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        entries.sort_by_key(|e| e.binding);
        let entry_points = module.entry_points.iter().map(|e| e.name.clone()).collect();
        let device = ctx.device();
        let operation = format!("compiling shader '{name}'");
        let (module, layout, pipeline_layout) = ctx.scoped(&operation, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            (module, layout, pipeline_layout)
        })?;
        Ok(ShaderModule {
            name: name.to_string(),
            module,
            layout,
            pipeline_layout,
            bindings: entries.iter().map(|e| e.binding).collect(),
            entry_points,
        })
    }
}

impl Context {
    /// The compiled module of a registry shader, compiled once and cached.
    pub(crate) fn registry_module(&self, name: &'static str) -> Result<Arc<ShaderModule>> {
        if let Some(m) = self
            .modules()
            .lock()
            .expect("shader cache poisoned")
            .get(name)
        {
            return Ok(m.clone());
        }
        let src = find(name).ok_or_else(|| Error::UnknownShader {
            shader: name.to_string(),
            entry: String::new(),
        })?;
        for (needs, feature, what) in [
            (src.subgroups, wgpu::Features::SUBGROUP, "SUBGROUP"),
            (src.int64, wgpu::Features::SHADER_INT64, "SHADER_INT64"),
        ] {
            if needs && !self.features().contains(feature) {
                return Err(Error::Limit {
                    what: format!("shader '{name}'"),
                    detail: format!("it needs the {what} feature, which this device lacks"),
                });
            }
        }
        let module = Arc::new(ShaderModule::compile(self, name, src.source)?);
        self.modules()
            .lock()
            .expect("shader cache poisoned")
            .insert(name, module.clone());
        Ok(module)
    }
}
