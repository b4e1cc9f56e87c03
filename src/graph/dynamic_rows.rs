//! GPU-driven row counts: indirect dispatch arguments computed on the GPU from a counts
//! buffer, so a dispatch over rows whose number is decided during the step (the tokens
//! routed to one expert) runs exactly the workgroups it needs — none when the count is 0 —
//! without the CPU waiting for the routing. Kernel: `shaders/indirect_args.wgsl`.
//!
//! Use: create with the counts tensor, record [`DynamicRows::record_fill`] into the step
//! BEFORE the dispatches that depend on it, record those dispatches inside
//! [`Graph::set_dynamic_rows`](super::Graph::set_dynamic_rows) sections, then call
//! [`DynamicRows::finish`] once to upload the table of grids.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};

use super::{Graph, RowGrid, Workgroups, MAX_GROUPS_PER_DIM, ROWS_PER_Z};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, Tensor};

/// One registered dispatch: how to turn `counts[count_index]` into (x, y, z).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
struct Spec {
    /// 0 unused, 1 rows on y, 2 rows on z, 3 rows split over y and z.
    mode: u32,
    count_index: u32,
    x: u32,
    y: u32,
    per: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    capacity: u32,
    rows_per_z: u32,
    _pad: [u32; 2],
}

/// A table of indirect dispatches whose row counts come from a GPU counts buffer.
pub struct DynamicRows {
    args: Tensor,
    specs: Tensor,
    counts: wgpu::Buffer,
    n_counts: usize,
    registered: Mutex<Vec<Spec>>,
    capacity: usize,
}

impl DynamicRows {
    /// A table for up to `capacity` dispatches reading counts (u32) from `counts`.
    pub fn new(ctx: &Context, counts: &Tensor, capacity: usize) -> Result<Arc<Self>> {
        if counts.dtype() != DType::U32 {
            return Err(Error::mismatch("row counts dtype", "u32", counts.dtype()));
        }
        let specs = Tensor::from_host(
            ctx,
            "dynamic row specs",
            &[capacity, 8],
            DType::U32,
            HostData::U32(&vec![0; capacity * 8]),
        )?;
        Ok(Arc::new(DynamicRows {
            args: Tensor::indirect_args(ctx, "dynamic row args", capacity)?,
            specs,
            counts: counts.buffer()?.clone(),
            n_counts: counts.numel(),
            registered: Mutex::new(Vec::new()),
            capacity,
        }))
    }

    /// Records the dispatch that writes every registered dispatch's workgroup count.
    pub fn record_fill(&self, ctx: &Context, graph: &mut Graph) -> Result<()> {
        let params = Params {
            capacity: self.capacity as u32,
            rows_per_z: ROWS_PER_Z as u32,
            _pad: [0; 2],
        };
        let pipeline = ctx.pipeline("indirect_args", "fill", &[])?;
        let uniform = ctx.uniform("indirect args params", &params)?;
        graph.dispatch(
            ctx,
            &pipeline,
            &[
                uniform.as_entire_binding(),
                self.counts.as_entire_binding(),
                self.specs.binding()?,
                self.args.binding()?,
            ],
            Workgroups::linear(self.capacity.div_ceil(64)),
        )
    }

    /// Registers a dispatch laid out by `grid` whose rows are `counts[count_index]`.
    pub(crate) fn register(&self, count_index: usize, grid: RowGrid) -> Result<Workgroups> {
        if count_index >= self.n_counts {
            return Err(Error::mismatch(
                "dynamic row count index",
                format!("below {}", self.n_counts),
                count_index,
            ));
        }
        let (mode, x, y, per) = match grid {
            RowGrid::Y { x, per } => (1, x, 1, per),
            RowGrid::Z { x, y, per } => (2, x, y, per),
            RowGrid::YZ { x } => (3, x, 1, 1),
        };
        let mut registered = self.registered.lock().expect("dynamic rows poisoned");
        let slot = registered.len();
        if slot >= self.capacity {
            return Err(Error::Limit {
                what: "dynamic-row dispatches".into(),
                detail: format!("the table holds {}", self.capacity),
            });
        }
        registered.push(Spec {
            mode,
            count_index: count_index as u32,
            x: x as u32,
            y: y as u32,
            per: per.max(1) as u32,
            _pad: [0; 3],
        });
        Ok(Workgroups::Indirect {
            buffer: self.args.buffer()?.clone(),
            offset: (slot * 12) as u64,
        })
    }

    /// Uploads the registered grids. Call once, after recording.
    pub fn finish(&self) -> Result<()> {
        let registered = self.registered.lock().expect("dynamic rows poisoned");
        let mut table = vec![0u32; self.capacity * 8];
        for (i, s) in registered.iter().enumerate() {
            table[i * 8..i * 8 + 8].copy_from_slice(bytemuck::cast_slice(&[*s]));
        }
        self.specs.write(HostData::U32(&table))
    }

    /// Number of dispatches registered so far.
    pub fn len(&self) -> usize {
        self.registered.lock().expect("dynamic rows poisoned").len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads back the (x, y, z) the GPU wrote for every registered dispatch (for tests and
    /// telemetry; not used during a step).
    pub fn read_args(&self) -> Result<Vec<[u32; 3]>> {
        let n = self.len();
        let raw = self.args.to_u32()?;
        Ok(raw.chunks(3).take(n).map(|c| [c[0], c[1], c[2]]).collect())
    }

    /// Reads back the grids of each range of registered dispatches (as
    /// [`DynamicRows::record_section`] returned them).
    pub fn read_sections(&self, sections: &[Range<usize>]) -> Result<Vec<Vec<[u32; 3]>>> {
        let args = self.read_args()?;
        Ok(sections.iter().map(|r| args[r.clone()].to_vec()).collect())
    }

    /// Records `body` in a dynamic-rows section whose rows are `counts[count_index]`, and
    /// returns the range of dispatches it registered. When the table fills up, the error
    /// names `what` recorded the dispatches.
    pub fn record_section(
        self: &Arc<Self>,
        graph: &mut Graph,
        count_index: usize,
        what: &str,
        body: impl FnOnce(&mut Graph) -> Result<()>,
    ) -> Result<Range<usize>> {
        let first = self.len();
        graph.set_dynamic_rows(Some((self, count_index)));
        let recorded = body(graph);
        graph.set_dynamic_rows(None);
        if recorded.is_err() && self.len() >= self.capacity {
            return Err(Error::Limit {
                what: format!("the dispatches of {what}"),
                detail: format!(
                    "they need more row dispatches than the table of {} holds",
                    self.capacity
                ),
            });
        }
        recorded?;
        Ok(first..self.len())
    }
}

/// CPU reference of the fill kernel: the grid a dispatch laid out by `grid` gets for
/// `rows` rows (a zero dimension when `rows` is 0).
pub fn reference(grid: RowGrid, rows: usize) -> [u32; 3] {
    let n = rows as u32;
    let z = ROWS_PER_Z as u32;
    let grid = match grid {
        RowGrid::Y { x, per } => [x as u32, n.div_ceil(per as u32), 1],
        RowGrid::Z { x, y, per } => [x as u32, y as u32, n.div_ceil(per as u32)],
        RowGrid::YZ { x } => [x as u32, n.min(z), n.div_ceil(z)],
    };
    grid.map(|v| v.min(MAX_GROUPS_PER_DIM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{matmul::matmul, View};
    use crate::testing::{gpu, Rng};

    #[test]
    fn grids_follow_the_counts_written_on_the_gpu() {
        let ctx = gpu();
        let counts = Tensor::from_u32(ctx, "counts", &[3], &[5, 0, 70_000]).unwrap();
        let dynamic = DynamicRows::new(ctx, &counts, 16).unwrap();
        let grids = [
            (0, RowGrid::Y { x: 3, per: 4 }),
            (1, RowGrid::Y { x: 3, per: 1 }),
            (2, RowGrid::YZ { x: 2 }),
            (0, RowGrid::Z { x: 7, y: 2, per: 4 }),
            (1, RowGrid::YZ { x: 1 }),
        ];
        let mut g = Graph::new();
        dynamic.record_fill(ctx, &mut g).unwrap();
        for (i, grid) in grids {
            let wg = dynamic.register(i, grid).unwrap();
            assert!(matches!(wg, Workgroups::Indirect { .. }));
        }
        dynamic.finish().unwrap();
        ctx.run(&[&g]).unwrap();
        let rows = [5usize, 0, 70_000];
        let want: Vec<[u32; 3]> = grids
            .iter()
            .map(|&(i, gr)| reference(gr, rows[i]))
            .collect();
        assert_eq!(dynamic.read_args().unwrap(), want);
        assert_eq!(want[1], [3, 0, 1], "zero rows give zero workgroups");
    }

    #[test]
    fn a_dynamic_matmul_computes_only_the_counted_rows() {
        let ctx = gpu();
        // More than 8 rows: on CPU adapters the subgroup GEMM's pair kernels (8 tokens per
        // workgroup) take the counted rows.
        let (m, k, cap) = (12, 5, 9);
        let mut rng = Rng::new(4);
        let w = rng.normal_vec(m * k, 1.0);
        let x = rng.normal_vec(cap * k, 1.0);
        let wt = Tensor::weight(ctx, "w", &[m, k], DType::F32, HostData::F32(&w)).unwrap();
        let xt = Tensor::from_f32(ctx, "x", &[cap, k], &x).unwrap();
        let yt = Tensor::from_f32(ctx, "y", &[cap, m], &vec![-7.0; cap * m]).unwrap();
        for count in [0u32, 3, 9] {
            yt.write(HostData::F32(&vec![-7.0; cap * m])).unwrap();
            let counts = Tensor::from_u32(ctx, "counts", &[1], &[count]).unwrap();
            let dynamic = DynamicRows::new(ctx, &counts, 4).unwrap();
            let mut g = Graph::new();
            dynamic.record_fill(ctx, &mut g).unwrap();
            g.set_dynamic_rows(Some((&dynamic, 0)));
            matmul(ctx, &mut g, &wt, None, View::of(&xt), View::of(&yt), 0.0).unwrap();
            g.set_dynamic_rows(None);
            dynamic.finish().unwrap();
            ctx.run(&[&g]).unwrap();
            let got = yt.to_f32().unwrap();
            let want = crate::ops::matmul::reference(&w, k, &x, None);
            let c = count as usize;
            // Workgroups cover whole groups of rows, so rows past the count inside the last
            // group may be written; rows of groups beyond it never are.
            let per = crate::ops::matmul::MatmulKernel::choose(ctx, cap).tokens_per_workgroup(true);
            let groups_end = c.div_ceil(per) * per;
            crate::testing::assert_close(&got[..c * m], &want[..c * m], 1e-5, 1e-5, "counted rows");
            assert!(
                got[groups_end.min(cap) * m..].iter().all(|&v| v == -7.0),
                "count {count}: rows past the count were computed"
            );
        }
    }
}
