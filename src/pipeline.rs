//! Compute pipelines, cached by (shader, entry point, override constants), and bind groups.

use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::shaders::ShaderModule;

/// Cache key of a pipeline. Constants are kept sorted by name; values as f64 bit patterns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

/// A compute pipeline and the bind group layout of its shader file.
pub struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) module: Arc<ShaderModule>,
    /// `shader::entry`, for labels and profiles.
    pub(crate) label: String,
}

impl Pipeline {
    /// `shader::entry` (used as the dispatch label in profiles).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Creates a pipeline for `entry` of an already compiled module (registry or user WGSL).
    pub fn new(
        ctx: &Context,
        module: Arc<ShaderModule>,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Self> {
        if !module.entry_points.iter().any(|e| e == entry) {
            return Err(Error::UnknownShader {
                shader: module.name.clone(),
                entry: entry.to_string(),
            });
        }
        let label = format!("{}::{}", module.name, entry);
        let operation = format!("creating pipeline {label}");
        let pipeline = ctx.scoped(&operation, || {
            ctx.device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&module.pipeline_layout),
                    module: &module.module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        // Every kernel initialises the workgroup memory it reads.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        Ok(Pipeline {
            pipeline,
            module,
            label,
        })
    }

    /// Builds a bind group from `resources`, one per binding of the shader file in
    /// ascending binding order. A wrong count or an incompatible buffer is a typed error.
    pub fn bind_group(
        &self,
        ctx: &Context,
        resources: &[wgpu::BindingResource<'_>],
    ) -> Result<wgpu::BindGroup> {
        let bindings = &self.module.bindings;
        if resources.len() != bindings.len() {
            return Err(Error::mismatch(
                format!("bind group for {}", self.label),
                format!("{} resources (bindings {:?})", bindings.len(), bindings),
                format!("{} resources", resources.len()),
            ));
        }
        let entries: Vec<wgpu::BindGroupEntry<'_>> = bindings
            .iter()
            .zip(resources)
            .map(|(&binding, resource)| wgpu::BindGroupEntry {
                binding,
                resource: resource.clone(),
            })
            .collect();
        let operation = format!("binding resources for {}", self.label);
        ctx.scoped(&operation, || {
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&self.label),
                layout: &self.module.layout,
                entries: &entries,
            })
        })
    }
}

impl Context {
    /// The pipeline of a registry shader's entry point with the given override constants,
    /// created once and cached.
    pub fn pipeline(
        &self,
        shader: &'static str,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<Pipeline>> {
        let mut sorted: Vec<(&'static str, u64)> =
            constants.iter().map(|(k, v)| (*k, v.to_bits())).collect();
        sorted.sort_unstable();
        let key = PipelineKey {
            shader,
            entry,
            constants: sorted,
        };
        if let Some(p) = self
            .pipelines()
            .lock()
            .expect("pipeline cache poisoned")
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.registry_module(shader)?;
        let started = std::time::Instant::now();
        let pipeline = Arc::new(Pipeline::new(self, module, entry, constants)?);
        log::debug!(
            "pipeline {shader}::{entry} {constants:?} created in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        self.pipelines()
            .lock()
            .expect("pipeline cache poisoned")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Number of pipelines in the cache.
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines()
            .lock()
            .expect("pipeline cache poisoned")
            .len()
    }
}
