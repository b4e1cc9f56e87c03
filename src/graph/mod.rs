//! Command graphs: the list of dispatches a layer records once, at load time, and replays
//! every step.
//!
//! A [`Dispatch`] is a pipeline, a bind group built when it was recorded, and a workgroup
//! count (fixed, or read by the GPU from an indirect-arguments buffer that an earlier
//! dispatch of the same step wrote). A step encodes all its graphs into ONE compute pass of
//! ONE command buffer and submits once ([`Context::submit`]); the per-step CPU work is a
//! loop of `set_pipeline` / `set_bind_group` / `dispatch`.
//!
//! Kernels that work on rows (tokens) describe their grid as a [`RowGrid`]; the graph turns
//! it into a fixed workgroup count, or — inside a [`DynamicRows`] section — into an indirect
//! dispatch whose row count the GPU writes during the step (how experts that receive no
//! tokens get zero workgroups).
//!
//! With `MOXE_PROFILE=1`, every dispatch is timed with timestamp queries (where the
//! adapter has them) and [`Context::profile_report`] prints a per-kernel table.

pub mod dynamic_rows;

use std::sync::Arc;

pub use dynamic_rows::DynamicRows;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;

/// The largest workgroup count in one grid dimension that every adapter accepts.
pub const MAX_GROUPS_PER_DIM: u32 = 65535;

/// How many workgroups a dispatch runs.
#[derive(Debug, Clone)]
pub enum Workgroups {
    /// A fixed grid.
    Direct([u32; 3]),
    /// Three u32 (x, y, z) at `offset` bytes of `buffer`, written by the GPU.
    Indirect { buffer: wgpu::Buffer, offset: u64 },
}

impl Workgroups {
    /// `n` workgroups laid out as a 2-D grid `(min(n, 65535), ceil(n / 65535))` so any `n`
    /// respects the per-dimension limit. Kernels recover the flat index as
    /// `wid.x + wid.y * num_workgroups.x` and skip indices `>= n`.
    pub fn linear(n: usize) -> Self {
        let n = n as u64;
        let max = MAX_GROUPS_PER_DIM as u64;
        let x = n.clamp(1, max);
        let y = n.div_ceil(max).max(1);
        Workgroups::Direct([x as u32, y as u32, 1])
    }

    /// A fixed 3-D grid (each dimension must be at most 65535).
    pub fn grid(x: usize, y: usize, z: usize) -> Result<Self> {
        for (name, v) in [("x", x), ("y", y), ("z", z)] {
            if v > MAX_GROUPS_PER_DIM as usize {
                return Err(Error::Limit {
                    what: format!("dispatch grid dimension {name} = {v}"),
                    detail: format!("at most {MAX_GROUPS_PER_DIM} workgroups per dimension"),
                });
            }
        }
        Ok(Workgroups::Direct([x as u32, y as u32, z as u32]))
    }
}

/// Rows handled by one workgroup slice in [`RowGrid::YZ`] (kernels compute
/// `row = wid.y + wid.z * ROWS_PER_Z`).
pub const ROWS_PER_Z: usize = MAX_GROUPS_PER_DIM as usize;

/// How a kernel lays rows (tokens) over its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowGrid {
    /// `(x, ceil(rows / per), 1)`.
    Y { x: usize, per: usize },
    /// `(x, y, ceil(rows / per))`.
    Z { x: usize, y: usize, per: usize },
    /// `(x, min(rows, 65535), ceil(rows / 65535))`; `row = wid.y + wid.z * 65535`.
    YZ { x: usize },
}

impl RowGrid {
    /// The grid for a row count known now.
    pub fn workgroups(self, rows: usize) -> Result<Workgroups> {
        match self {
            RowGrid::Y { x, per } => Workgroups::grid(x, rows.div_ceil(per), 1),
            RowGrid::Z { x, y, per } => Workgroups::grid(x, y, rows.div_ceil(per)),
            RowGrid::YZ { x } => {
                Workgroups::grid(x, rows.min(ROWS_PER_Z), rows.div_ceil(ROWS_PER_Z))
            }
        }
    }
}

/// One recorded dispatch.
pub struct Dispatch {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) workgroups: Workgroups,
}

impl Dispatch {
    /// The kernel's `shader::entry` label.
    pub fn label(&self) -> &str {
        self.pipeline.label()
    }

    /// The workgroup count.
    pub fn workgroups(&self) -> &Workgroups {
        &self.workgroups
    }

    pub(crate) fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        match &self.workgroups {
            Workgroups::Direct([x, y, z]) => pass.dispatch_workgroups(*x, *y, *z),
            Workgroups::Indirect { buffer, offset } => {
                pass.dispatch_workgroups_indirect(buffer, *offset)
            }
        }
    }
}

/// An ordered list of dispatches, recorded once and replayed.
#[derive(Default)]
pub struct Graph {
    dispatches: Vec<Dispatch>,
    /// While set, row dispatches take their row count from the GPU.
    dynamic: Option<(Arc<DynamicRows>, usize)>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Graph::default()
    }

    /// Records a dispatch: builds the bind group from `resources` (in the shader file's
    /// binding order) now, once.
    pub fn dispatch(
        &mut self,
        ctx: &Context,
        pipeline: &Arc<Pipeline>,
        resources: &[wgpu::BindingResource<'_>],
        workgroups: Workgroups,
    ) -> Result<()> {
        let bind_group = pipeline.bind_group(ctx, resources)?;
        self.dispatches.push(Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            workgroups,
        });
        Ok(())
    }

    /// Records a dispatch over `rows` rows laid out by `grid`. Inside a dynamic-rows section
    /// ([`Graph::set_dynamic_rows`]) `rows` is the capacity the buffers hold and the GPU
    /// supplies the actual count; otherwise `rows` sets the grid now. Zero rows record
    /// nothing.
    pub fn dispatch_rows(
        &mut self,
        ctx: &Context,
        pipeline: &Arc<Pipeline>,
        resources: &[wgpu::BindingResource<'_>],
        grid: RowGrid,
        rows: usize,
    ) -> Result<()> {
        let workgroups = match &self.dynamic {
            Some((dynamic, index)) => {
                // The GPU count never exceeds the capacity: if the capacity's grid is
                // within the limits, so is every grid the fill kernel writes.
                grid.workgroups(rows)?;
                dynamic.register(*index, grid)?
            }
            None if rows == 0 => return Ok(()),
            None => grid.workgroups(rows)?,
        };
        self.dispatch(ctx, pipeline, resources, workgroups)
    }

    /// Starts (`Some((rows, index))`: row counts come from `counts[index]` of `rows`) or
    /// ends (`None`) a dynamic-rows section.
    pub fn set_dynamic_rows(&mut self, source: Option<(&Arc<DynamicRows>, usize)>) {
        self.dynamic = source.map(|(d, i)| (d.clone(), i));
    }

    /// Appends all dispatches of `other`.
    pub fn append(&mut self, other: Graph) {
        self.dispatches.extend(other.dispatches);
    }

    /// The recorded dispatches, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Number of dispatches.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }
}

impl Context {
    /// A buffer holding `value` (kernel parameters fixed at record time), bindable as a
    /// uniform or a read-only storage buffer (the matmul kernels read theirs as storage:
    /// `shaders/common/matmul.wgsl` says why).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> Result<wgpu::Buffer> {
        let bytes = bytemuck::bytes_of(value);
        let size = (bytes.len() as u64).div_ceil(16) * 16;
        let buffer = self.scoped(&format!("creating uniform '{label}'"), || {
            self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            })
        })?;
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::Device {
                    operation: format!("writing uniform '{label}'"),
                    message: e.to_string(),
                })?;
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            view.copy_from_slice(&padded);
        }
        buffer.unmap();
        Ok(buffer)
    }

    /// Encodes `graphs` in order into one compute pass and lets `after` add copies (e.g. of
    /// sampled tokens into a read-back buffer): one command buffer, not yet submitted.
    pub fn encode(
        &self,
        graphs: &[&Graph],
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<wgpu::CommandBuffer> {
        self.scoped("encoding a step", || {
            let mut encoder =
                self.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("step"),
                    });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                });
                for graph in graphs {
                    for d in &graph.dispatches {
                        d.encode(&mut pass);
                    }
                }
            }
            after(&mut encoder);
            encoder.finish()
        })
    }

    /// Submits a command buffer made by [`Context::encode`]. Does not wait.
    pub fn submit_encoded(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        self.scoped("submitting a step", || {
            self.queue().submit([commands]);
        })
    }

    /// [`Context::encode`] and [`Context::submit_encoded`] (with per-dispatch timestamps
    /// while profiling). Does not wait.
    pub fn submit_with(
        &self,
        graphs: &[&Graph],
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        if self.profiling() {
            return self.submit_profiled(graphs, after);
        }
        let commands = self.encode(graphs, after)?;
        self.submit_encoded(commands)
    }

    /// [`Context::submit_with`] without extra commands.
    pub fn submit(&self, graphs: &[&Graph]) -> Result<()> {
        self.submit_with(graphs, |_| {})
    }

    /// Submits `graphs` and waits until the device has finished them.
    pub fn run(&self, graphs: &[&Graph]) -> Result<()> {
        self.submit(graphs)?;
        self.wait("running a step")
    }
}
