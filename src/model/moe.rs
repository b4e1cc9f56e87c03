//! A MoxE layer's mixture of experts (MODEL.md sections 2 and 3): the router, sparse expert
//! dispatch decided and executed on the GPU, and the router telemetry.
//!
//! One [`MoeLayer::record`] records, into the caller's graph, for u (N, D):
//! 1. the router matmul `logits = u [W_r; w_d]^T + [b_r; b_d]` (N, E [+1]);
//! 2. the fused gate ([`ops::gate`](crate::ops::gate)): p, top-k, weights, per-token terms;
//! 3. routing ([`ops::route`](crate::ops::route)): per-expert token counts, a token-order
//!    prefix sum and each (token, choice)'s row in its expert's region;
//! 4. the telemetry reduction ([`ops::router_stats`](crate::ops::router_stats));
//! 5. the indirect-dispatch arguments of every expert kernel, computed on the GPU from the
//!    counts ([`DynamicRows`]), so an expert that receives no tokens runs zero workgroups;
//! 6. per dispatch chunk: gather of the token rows into the expert regions, every expert
//!    (any [`Expert`]) over its region inside a dynamic-rows section, and the weighted
//!    combine into `out`.
//!
//! Nothing is read back during a step. The buffers of one recording (and its telemetry)
//! belong to the returned [`MoeStep`]; the expert regions come from the shared [`Scratch`],
//! so all layers reuse them.
//!
//! Expert regions: E regions of C rows, region e at rows `e * C ..`, where C (the dispatch
//! chunk) is N unless E * N * D floats exceed one storage binding; then the tokens are
//! dispatched in chunks of C (a multiple of 64) tokens, one after another in the same graph.

use std::ops::Range;
use std::sync::Arc;

use super::config::{MoxeConfig, RouterType};
use super::telemetry::RouterTelemetry;
use super::{Expert, Scope, Scratch};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{DynamicRows, Graph};
use crate::ops::gate::{self, GateOutputs, GateSpec, Router, STAT_COLS};
use crate::ops::matmul::matmul;
use crate::ops::moe_rows::{combine, gather};
use crate::ops::route::{route, RouteBuffers, RouteLayout, BLOCK_TOKENS};
use crate::ops::router_stats::{router_stats, RouterSummary, SUMMARY_HEAD};
use crate::ops::View;
use crate::tensor::{DType, Tensor};

/// Indirect dispatches one expert may record per chunk (the size of the table of GPU-written
/// dispatch arguments; unused entries cost nothing but 44 bytes).
pub const EXPERT_DISPATCH_BUDGET: usize = 64;

/// Host copies of a router's weights (E experts, dimension D).
#[derive(Debug, Clone, Copy)]
pub struct GateWeights<'a> {
    /// W_r (E, D), row-major.
    pub router: &'a [f32],
    /// b_r (E), with `gate_bias`.
    pub router_bias: Option<&'a [f32]>,
    /// (w_d (D), b_d) of the difficulty predictor: required by the entropy-aware gate,
    /// absent for the standard router.
    pub predictor: Option<(&'a [f32], f32)>,
}

/// A mixture-of-experts layer: router weights on the GPU and E experts.
pub struct MoeLayer {
    spec: GateSpec,
    dim: usize,
    /// [W_r; w_d] (E [+1], D), always f32: routing decisions are discrete and the matrix is
    /// small.
    router: Tensor,
    /// [b_r or 0; b_d] (E [+1]); None for a standard router without bias.
    router_bias: Option<Tensor>,
    experts: Vec<Box<dyn Expert>>,
}

/// The gate spec of a MoxE config.
pub fn gate_spec(cfg: &MoxeConfig) -> Result<GateSpec> {
    let router = match cfg.router {
        RouterType::Standard => Router::Standard,
        RouterType::ConditionedAddition => Router::Conditioned {
            modulation: cfg.modulation,
            gamma: cfg.gamma,
            tau: cfg.difficulty_threshold,
        },
    };
    GateSpec::new(cfg.num_experts, cfg.top_k, router)
}

impl MoeLayer {
    /// Loads the gate of layer `scope` (e.g. `"layers.0."`: `gate.router.weight` (E, D),
    /// `gate.router.bias` (E) with `gate_bias`, `gate.entropy_predictor.weight` (1, D) and
    /// `.bias` (1) for the entropy-aware gate) and takes its E `experts`, expert e at index e.
    pub fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        cfg: &MoxeConfig,
        d: usize,
        experts: Vec<Box<dyn Expert>>,
    ) -> Result<Self> {
        let spec = gate_spec(cfg)?;
        let e = spec.experts;
        let router = scope.f32("gate.router.weight", &[e, d])?;
        let bias = match cfg.gate_bias {
            true => Some(scope.f32("gate.router.bias", &[e])?),
            false => None,
        };
        let predictor = match spec.router.has_predictor() {
            true => Some((
                scope.f32("gate.entropy_predictor.weight", &[1, d])?,
                scope.f32("gate.entropy_predictor.bias", &[1])?[0],
            )),
            false => None,
        };
        let weights = GateWeights {
            router: &router,
            router_bias: bias.as_deref(),
            predictor: predictor.as_ref().map(|(w, b)| (w.as_slice(), *b)),
        };
        Self::new(ctx, &scope.name("gate."), spec, d, &weights, experts)
    }

    /// A layer from host gate weights; `label` names its GPU tensors.
    pub fn new(
        ctx: &Context,
        label: &str,
        spec: GateSpec,
        d: usize,
        weights: &GateWeights<'_>,
        experts: Vec<Box<dyn Expert>>,
    ) -> Result<Self> {
        let e = spec.experts;
        if experts.len() != e {
            return Err(Error::mismatch(
                format!("experts of MoE layer '{label}'"),
                e,
                experts.len(),
            ));
        }
        if d == 0 {
            return Err(Error::InvalidArgument(format!(
                "MoE layer '{label}' needs a positive dimension"
            )));
        }
        let check = |what: &str, got: usize, want: usize| match got == want {
            true => Ok(()),
            false => Err(Error::mismatch(
                format!("MoE layer '{label}' {what} elements"),
                want,
                got,
            )),
        };
        check("router weight", weights.router.len(), e * d)?;
        let mut matrix = weights.router.to_vec();
        let mut bias = match weights.router_bias {
            Some(b) => {
                check("router bias", b.len(), e)?;
                b.to_vec()
            }
            None => vec![0.0; e],
        };
        match (spec.router.has_predictor(), weights.predictor) {
            (true, Some((w, b))) => {
                check("difficulty predictor weight", w.len(), d)?;
                matrix.extend_from_slice(w);
                bias.push(b);
            }
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "MoE layer '{label}': the entropy-aware gate needs a difficulty predictor"
                )))
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "MoE layer '{label}': the standard router has no difficulty predictor"
                )))
            }
            (false, None) => {}
        }
        let rows = spec.logit_cols();
        let router = Tensor::weight(
            ctx,
            &format!("{label}router"),
            &[rows, d],
            DType::F32,
            crate::HostData::F32(&matrix),
        )?;
        let has_bias = weights.router_bias.is_some() || spec.router.has_predictor();
        let router_bias = match has_bias {
            true => Some(Tensor::from_f32(
                ctx,
                &format!("{label}router bias"),
                &[rows],
                &bias,
            )?),
            false => None,
        };
        Ok(MoeLayer {
            spec,
            dim: d,
            router,
            router_bias,
            experts,
        })
    }

    /// E, K and the router kind.
    pub fn spec(&self) -> &GateSpec {
        &self.spec
    }

    /// D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The dispatch chunk for N tokens on this context: N, or the largest multiple of 64
    /// tokens whose E expert regions of D floats fit one storage binding.
    pub fn dispatch_chunk(&self, ctx: &Context, tokens: usize) -> Result<usize> {
        let row_bytes = (self.spec.experts * self.dim * 4) as u64;
        let fit = (ctx.max_binding_bytes() / row_bytes) as usize;
        if tokens <= fit {
            return Ok(tokens);
        }
        match fit / BLOCK_TOKENS * BLOCK_TOKENS {
            0 => Err(Error::Limit {
                what: format!(
                    "MoE expert regions for {BLOCK_TOKENS} tokens ({} experts x {} floats)",
                    self.spec.experts, self.dim
                ),
                detail: format!(
                    "they need {} bytes but one storage binding holds {}",
                    BLOCK_TOKENS as u64 * row_bytes,
                    ctx.max_binding_bytes()
                ),
            }),
            chunk => Ok(chunk),
        }
    }

    /// Records the layer for the N tokens of `u` (N, D) into `graph`, writing `out` (N, D)
    /// (which may be `u` itself). `scratch` must have at least as many rows as the dispatch
    /// chunk ([`MoeLayer::dispatch_chunk`], at most N). Returns the recording's buffers,
    /// telemetry included.
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        u: View<'_>,
        out: View<'_>,
        scratch: &Scratch,
    ) -> Result<MoeStep> {
        u.check("MoE input")?;
        out.check("MoE output")?;
        let (n, d) = (u.rows, self.dim);
        if u.cols != d || out.cols != d || out.rows != n {
            return Err(Error::mismatch(
                "MoE input and output",
                format!("two ({n}, {d}) views"),
                format!("({}, {}) and ({}, {})", u.rows, u.cols, out.rows, out.cols),
            ));
        }
        let chunk = self.dispatch_chunk(ctx, n)?;
        if scratch.rows() < chunk {
            return Err(Error::mismatch(
                "scratch rows for the MoE experts",
                format!("at least {chunk} (the dispatch chunk)"),
                scratch.rows(),
            ));
        }
        let (e, k) = (self.spec.experts, self.spec.top_k);
        let layout = RouteLayout::new(n, e, k, chunk)?;
        let step = MoeStep::allocate(ctx, &self.spec, layout, d, scratch)?;
        matmul(
            ctx,
            graph,
            &self.router,
            self.router_bias.as_ref(),
            u,
            View::of(&step.logits),
            0.0,
        )?;
        gate::gate(
            ctx,
            graph,
            &self.spec,
            View::of(&step.logits),
            &step.gate_outputs(),
        )?;
        route(
            ctx,
            graph,
            &layout,
            &step.topk_idx,
            &step.topk_prob,
            &step.route,
        )?;
        router_stats(
            ctx,
            graph,
            &layout,
            self.spec.router.has_predictor(),
            &step.stats,
            &step.route,
            &step.summary,
            &step.counts,
        )?;
        step.dynamic.record_fill(ctx, graph)?;
        let mut step = step;
        for c in 0..layout.chunks() {
            let tokens = layout.chunk_tokens(c);
            gather(
                ctx,
                graph,
                u,
                &step.route.slots,
                tokens.clone(),
                &step.regions_in,
            )?;
            for (x, expert) in self.experts.iter().enumerate() {
                let rows = x * chunk..(x + 1) * chunk;
                let input = View::of(&step.regions_in).select_rows(rows.clone());
                let output = View::of(&step.regions_out).select_rows(rows);
                let first = step.dynamic.len();
                graph.set_dynamic_rows(Some((&step.dynamic, c * e + x)));
                let recorded = expert.record(ctx, graph, input, output, scratch);
                graph.set_dynamic_rows(None);
                if recorded.is_err() && step.dynamic.len() >= step.dispatch_capacity {
                    return Err(Error::Limit {
                        what: format!("expert {x} of a MoE layer"),
                        detail: format!(
                            "it records more than {EXPERT_DISPATCH_BUDGET} dispatches over \
                             its rows"
                        ),
                    });
                }
                recorded?;
                step.expert_dispatches.push(first..step.dynamic.len());
            }
            combine(
                ctx,
                graph,
                &step.regions_out,
                &step.route.slots,
                &step.topk_weight,
                tokens,
                out,
            )?;
        }
        step.dynamic.finish()?;
        Ok(step)
    }
}

/// The buffers of one recorded MoE step: routing, telemetry, and the GPU-written dispatch
/// arguments of the experts. Valid after the graph it was recorded into has run.
pub struct MoeStep {
    spec: GateSpec,
    layout: RouteLayout,
    /// (N, E [+1]) router logits.
    logits: Tensor,
    probs: Tensor,
    topk_idx: Tensor,
    topk_weight: Tensor,
    topk_prob: Tensor,
    stats: Tensor,
    route: RouteBuffers,
    summary: Tensor,
    counts: Tensor,
    dynamic: Arc<DynamicRows>,
    dispatch_capacity: usize,
    /// Registered dispatch indices of (chunk c, expert e), at index c * E + e.
    expert_dispatches: Vec<Range<usize>>,
    regions_in: Arc<Tensor>,
    regions_out: Arc<Tensor>,
}

impl MoeStep {
    fn allocate(
        ctx: &Context,
        spec: &GateSpec,
        layout: RouteLayout,
        d: usize,
        scratch: &Scratch,
    ) -> Result<Self> {
        let (n, e, k) = (layout.tokens, layout.experts, layout.top_k);
        let f32s = |label: &str, shape: &[usize]| Tensor::zeros(ctx, label, shape, DType::F32);
        let route = RouteBuffers::new(ctx, &layout)?;
        let dispatch_capacity = layout.chunks() * e * EXPERT_DISPATCH_BUDGET;
        let dynamic = DynamicRows::new(ctx, &route.chunk_counts, dispatch_capacity)?;
        Ok(MoeStep {
            spec: *spec,
            layout,
            logits: f32s("moe router logits", &[n, spec.logit_cols()])?,
            probs: f32s("moe router probs", &[n, e])?,
            topk_idx: Tensor::zeros(ctx, "moe top-k experts", &[n, k], DType::U32)?,
            topk_weight: f32s("moe top-k weights", &[n, k])?,
            topk_prob: f32s("moe top-k probs", &[n, k])?,
            stats: f32s("moe router stats", &[n, STAT_COLS])?,
            route,
            summary: f32s("moe router summary", &[SUMMARY_HEAD + e])?,
            counts: Tensor::zeros(ctx, "moe expert counts", &[e], DType::U32)?,
            dynamic,
            dispatch_capacity,
            expert_dispatches: Vec::with_capacity(layout.chunks() * e),
            regions_in: scratch.get_rows("moe.expert_in", layout.region_rows(), d)?,
            regions_out: scratch.get_rows("moe.expert_out", layout.region_rows(), d)?,
        })
    }

    fn gate_outputs(&self) -> GateOutputs<'_> {
        GateOutputs {
            probs: &self.probs,
            topk_idx: &self.topk_idx,
            topk_weight: &self.topk_weight,
            topk_prob: &self.topk_prob,
            stats: &self.stats,
        }
    }

    /// N tokens, E experts, K, and the dispatch chunk C.
    pub fn layout(&self) -> &RouteLayout {
        &self.layout
    }

    /// Reads the router telemetry of the last run of this recording (blocks until the
    /// device is idle; call it only when telemetry is wanted).
    pub fn read_telemetry(&self) -> Result<RouterTelemetry> {
        let stats = self.stats.to_f32()?;
        let col = |c: usize| -> Vec<f32> { stats.chunks(STAT_COLS).map(|r| r[c]).collect() };
        let summary = RouterSummary::from_buffers(&self.summary.to_f32()?, &self.counts.to_u32()?);
        Ok(RouterTelemetry::new(
            self.spec.top_k,
            col(gate::STAT_DIFFICULTY),
            col(gate::STAT_ENTROPY),
            self.probs.to_f32()?,
            self.topk_idx.to_u32()?,
            self.topk_weight.to_f32()?,
            summary,
        ))
    }

    /// Reads the router logits (N, E [+1]) of the last run: z, then the difficulty
    /// pre-activation for the entropy-aware gate.
    pub fn read_logits(&self) -> Result<Vec<f32>> {
        self.logits.to_f32()
    }

    /// Reads the rows each (chunk, expert) was given by the GPU, at index c * E + e.
    pub fn read_expert_rows(&self) -> Result<Vec<u32>> {
        self.route.chunk_counts.to_u32()
    }

    /// Reads the workgroup grids the GPU wrote for every expert dispatch of the last run:
    /// one list per (chunk c, expert e) at index c * E + e, in recording order. An expert
    /// that received no tokens has a zero dimension in every grid.
    pub fn read_expert_grids(&self) -> Result<Vec<Vec<[u32; 3]>>> {
        let args = self.dynamic.read_args()?;
        Ok(self
            .expert_dispatches
            .iter()
            .map(|r| args[r.clone()].to_vec())
            .collect())
    }

    /// The table of GPU-written dispatch arguments of the experts.
    pub fn dynamic_rows(&self) -> &DynamicRows {
        &self.dynamic
    }

    /// The expert input and output regions (E * C, D) of this recording (shared with every
    /// layer recorded on the same scratch).
    pub fn expert_regions(&self) -> (&Tensor, &Tensor) {
        (&self.regions_in, &self.regions_out)
    }
}

/// CPU reference of a whole layer for u (N, D): the gate's decisions and
/// `out[t] = sum_j w[t, j] * expert(idx[t, j], u[t])` (an expert maps one row (D) to (D)).
pub fn reference(
    spec: &GateSpec,
    d: usize,
    weights: &GateWeights<'_>,
    u: &[f32],
    expert: impl Fn(usize, &[f32]) -> Vec<f32>,
) -> (gate::GateReference, Vec<f32>) {
    let mut matrix = weights.router.to_vec();
    let mut bias = weights
        .router_bias
        .map_or(vec![0.0; spec.experts], <[f32]>::to_vec);
    if let Some((w, b)) = weights.predictor {
        matrix.extend_from_slice(w);
        bias.push(b);
    }
    let logits = crate::ops::matmul::reference(&matrix, d, u, Some(&bias));
    let g = gate::reference(spec, &logits);
    let k = spec.top_k;
    let mut out = vec![0.0f32; u.len()];
    for (t, row) in u.chunks(d).enumerate() {
        for j in 0..k {
            let y = expert(g.topk_idx[t * k + j] as usize, row);
            let w = g.topk_weight[t * k + j];
            for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(y) {
                *o += w * v;
            }
        }
    }
    (g, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::RowGrid;
    use crate::model::config::Modulation;
    use crate::model::mlp_expert::{self, MlpExpert};
    use crate::model::{ModelConfig, Weights};
    use crate::ops::gate::tests::{gate_case, GATE_FIXTURES};
    use crate::ops::matmul::MatmulKernel;
    use crate::pipeline::Pipeline;
    use crate::shaders::ShaderModule;
    use crate::testing::{assert_close, assert_close_rel_max, gpu, round_f16, Rng};
    use crate::HostData;

    const POISON: f32 = -1234.5;

    /// A test expert that maps a row to the value stored for the key row equal to it (so a
    /// fixture's per-token expert outputs can be served through the real dispatch), one
    /// workgroup per row, counting the rows it processes in `rows_done[expert]`.
    const LOOKUP_WGSL: &str = r#"
struct Params { in_offset: u32, out_offset: u32, d: u32, table_rows: u32, expert: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read_write> rows_done: array<atomic<u32>>;
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y + wid.z * 65535u;
    let x = p.in_offset + row * p.d;
    var found = p.table_rows;
    for (var t = 0u; t < p.table_rows; t++) {
        var same = true;
        for (var c = 0u; c < p.d; c++) {
            same = same && keys[t * p.d + c] == input[x + c];
        }
        if same && found == p.table_rows {
            found = t;
        }
    }
    for (var c = 0u; c < p.d; c++) {
        var v = -777.0;
        if found < p.table_rows {
            v = values[found * p.d + c];
        }
        output[p.out_offset + row * p.d + c] = v;
    }
    atomicAdd(&rows_done[p.expert], 1u);
}
"#;

    struct LookupExpert {
        expert: u32,
        d: usize,
        keys: Arc<Tensor>,
        values: Tensor,
        rows_done: Arc<Tensor>,
        pipeline: Arc<Pipeline>,
    }

    impl Expert for LookupExpert {
        fn record(
            &self,
            ctx: &Context,
            graph: &mut Graph,
            input: View<'_>,
            output: View<'_>,
            _scratch: &Scratch,
        ) -> Result<()> {
            assert_eq!((input.stride, output.stride), (self.d, self.d));
            let params = [
                input.offset as u32,
                output.offset as u32,
                self.d as u32,
                self.keys.rows() as u32,
                self.expert,
                0,
                0,
                0,
            ];
            let uniform = ctx.uniform("lookup params", &params)?;
            graph.dispatch_rows(
                ctx,
                &self.pipeline,
                &[
                    uniform.as_entire_binding(),
                    input.binding()?,
                    self.keys.binding()?,
                    self.values.binding()?,
                    output.binding()?,
                    self.rows_done.binding()?,
                ],
                RowGrid::YZ { x: 1 },
                input.rows,
            )
        }
    }

    /// E lookup experts serving `values` (E, N, D) for the key rows `keys` (N, D), and
    /// their shared row counter (E) u32.
    fn lookup_experts(
        ctx: &Context,
        keys: &[f32],
        values: &[f32],
        e: usize,
        d: usize,
    ) -> (Vec<Box<dyn Expert>>, Arc<Tensor>) {
        let n = keys.len() / d;
        let module = ShaderModule::compile(ctx, "lookup expert", LOOKUP_WGSL).unwrap();
        let pipeline = Arc::new(Pipeline::new(ctx, Arc::new(module), "main", &[]).unwrap());
        let keys = Arc::new(Tensor::from_f32(ctx, "keys", &[n, d], keys).unwrap());
        let rows_done = Arc::new(Tensor::zeros(ctx, "rows done", &[e], DType::U32).unwrap());
        let experts = (0..e)
            .map(|x| {
                let v = &values[x * n * d..(x + 1) * n * d];
                Box::new(LookupExpert {
                    expert: x as u32,
                    d,
                    keys: keys.clone(),
                    values: Tensor::from_f32(ctx, "values", &[n, d], v).unwrap(),
                    rows_done: rows_done.clone(),
                    pipeline: pipeline.clone(),
                }) as Box<dyn Expert>
            })
            .collect();
        (experts, rows_done)
    }

    /// Records `layer` over host u (N, D), runs it once and returns (output, step).
    fn run(ctx: &Context, layer: &MoeLayer, u: &[f32], scratch_rows: usize) -> (Vec<f32>, MoeStep) {
        let d = layer.dim();
        let n = u.len() / d;
        let ut = Tensor::from_f32(ctx, "u", &[n, d], u).unwrap();
        let ot = Tensor::from_f32(ctx, "out", &[n, d], &vec![POISON; n * d]).unwrap();
        let scratch = Scratch::new(ctx, scratch_rows);
        let mut g = Graph::new();
        let step = layer
            .record(ctx, &mut g, View::of(&ut), View::of(&ot), &scratch)
            .unwrap();
        ctx.run(&[&g]).unwrap();
        (ot.to_f32().unwrap(), step)
    }

    /// Compares telemetry with a fixture's tensors `{prefix}{name}` (`probs` names the
    /// router probabilities: `probs` in op fixtures, `router_probs` in model goldens).
    fn assert_telemetry(got: &RouterTelemetry, w: &Weights, prefix: &str, probs: &str, what: &str) {
        let f = |t: &str| w.f32_any(&format!("{prefix}{t}")).unwrap().0;
        let ints = |t: &str| -> Vec<u32> {
            w.ints(&format!("{prefix}{t}"))
                .unwrap()
                .0
                .iter()
                .map(|&x| x as u32)
                .collect()
        };
        let close = |g: &[f32], want: &[f32], name: &str| {
            assert_close(g, want, 1e-6, 1e-5, &format!("{what}: {name}"))
        };
        assert_eq!(got.topk_idx, ints("topk_idx"), "{what}: top-k choices");
        assert_eq!(got.expert_counts, ints("expert_counts"), "{what}: counts");
        close(&got.topk_weight, &f("topk_weight"), "topk_weight");
        close(&got.router_probs, &f(probs), "router probs");
        close(&got.difficulty, &f("difficulty"), "difficulty");
        close(&got.entropy, &f("entropy"), "entropy");
        close(&got.group_shares, &f("group_shares"), "group shares");
        close(&got.expert_loads, &f("expert_loads"), "expert loads");
        close(&got.losses, &f("losses"), "losses");
    }

    #[test]
    fn every_gate_fixture_runs_through_the_whole_layer() {
        // Lookup experts return the fixture's expert outputs, so gate, routing, indirect
        // dispatch, telemetry and combine are all checked against the reference.
        let ctx = gpu();
        for name in GATE_FIXTURES {
            let c = gate_case(name);
            let (e, d) = (c.spec.experts, c.d);
            let n = c.u.len() / d;
            let (values, _) = c.w.f32_any("in.expert_out").unwrap();
            let (experts, rows_done) = lookup_experts(ctx, &c.u, &values, e, d);
            let predictor = c.spec.router.has_predictor();
            let weights = GateWeights {
                router: &c.weight[..e * d],
                router_bias: Some(&c.bias[..e]),
                predictor: predictor.then(|| (&c.weight[e * d..], c.bias[e])),
            };
            let layer = MoeLayer::new(ctx, "fixture.", c.spec, d, &weights, experts).unwrap();
            let (out, step) = run(ctx, &layer, &c.u, n);
            let want = c.w.f32_any("out.y").unwrap().0;
            assert_close(&out, &want, 1e-6, 1e-5, &format!("{name}: y"));
            let tel = step.read_telemetry().unwrap();
            assert_telemetry(&tel, &c.w, "out.", "probs", name);
            assert_eq!(
                rows_done.to_u32().unwrap(),
                tel.expert_counts,
                "{name}: rows done"
            );
        }
    }

    #[test]
    fn the_swiglu_gate_fixture_matches_with_real_experts() {
        let ctx = gpu();
        let c = gate_case("gate_standard_e4_k2");
        let (e, d) = (c.spec.experts, c.d);
        let experts = mlp_expert::mlp_experts(ctx, &c.w.scope("param."), e, d, DType::F32).unwrap();
        let weights = GateWeights {
            router: &c.weight[..e * d],
            router_bias: Some(&c.bias[..e]),
            predictor: Some((&c.weight[e * d..], c.bias[e])),
        };
        let layer = MoeLayer::new(ctx, "fixture.", c.spec, d, &weights, experts).unwrap();
        let (out, step) = run(ctx, &layer, &c.u, c.u.len() / d);
        let want = c.w.f32_any("out.y_experts").unwrap().0;
        assert_close_rel_max(&out, &want, 1e-5, "y_experts");
        assert_telemetry(
            &step.read_telemetry().unwrap(),
            &c.w,
            "out.",
            "probs",
            "swiglu",
        );
    }

    /// Random gate weights whose bias keeps experts `unused` from ever being chosen.
    fn random_gate(
        rng: &mut Rng,
        spec: &GateSpec,
        d: usize,
        unused: &[usize],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, f32) {
        let e = spec.experts;
        let router = rng.normal_vec(e * d, 1.0 / (d as f32).sqrt());
        let mut bias = rng.normal_vec(e, 0.3);
        for &x in unused {
            bias[x] = -60.0;
        }
        (router, bias, rng.normal_vec(d, 0.5), 0.1)
    }

    #[test]
    fn experts_without_tokens_get_zero_workgroups_and_do_no_work() {
        let ctx = gpu();
        let mut rng = Rng::new(31);
        let router = Router::Conditioned {
            modulation: Modulation::Standard,
            gamma: 0.7,
            tau: 0.5,
        };
        let spec = GateSpec::new(8, 2, router).unwrap();
        let (e, d, unused) = (8, 12, [1usize, 6]);
        let (w, b, wd, bd) = random_gate(&mut rng, &spec, d, &unused);
        let weights = GateWeights {
            router: &w,
            router_bias: Some(&b),
            predictor: Some((&wd, bd)),
        };
        for n in [1, 50] {
            let u = rng.normal_vec(n * d, 1.0);
            let values = rng.normal_vec(e * n * d, 1.0);
            let (experts, rows_done) = lookup_experts(ctx, &u, &values, e, d);
            let layer = MoeLayer::new(ctx, "sparse.", spec, d, &weights, experts).unwrap();
            let ut = Tensor::from_f32(ctx, "u", &[n, d], &u).unwrap();
            let ot = Tensor::zeros(ctx, "out", &[n, d], DType::F32).unwrap();
            let scratch = Scratch::new(ctx, n);
            let mut g = Graph::new();
            let step = layer
                .record(ctx, &mut g, View::of(&ut), View::of(&ot), &scratch)
                .unwrap();
            // Poison every expert output row: only rows routed to an expert may change.
            let (_, regions_out) = step.expert_regions();
            regions_out
                .write(HostData::F32(&vec![POISON; e * n * d]))
                .unwrap();
            ctx.run(&[&g]).unwrap();

            let counts = step.read_telemetry().unwrap().expert_counts;
            assert_eq!(step.read_expert_rows().unwrap(), counts);
            assert_eq!(counts.iter().sum::<u32>() as usize, n * 2);
            for &x in &unused {
                assert_eq!(counts[x], 0, "N={n}: expert {x} must receive nothing");
            }
            // One dispatch per expert, one workgroup per routed row; none for the others.
            let grids = step.read_expert_grids().unwrap();
            for (x, grid) in grids.iter().enumerate() {
                let want =
                    crate::graph::dynamic_rows::reference(RowGrid::YZ { x: 1 }, counts[x] as usize);
                assert_eq!(grid, &vec![want], "N={n}: expert {x} grid");
                assert_eq!(
                    want.iter().product::<u32>(),
                    counts[x],
                    "one workgroup per row"
                );
            }
            assert_eq!(rows_done.to_u32().unwrap(), counts, "N={n}: rows processed");
            let regions = regions_out.to_f32().unwrap();
            for x in 0..e {
                let untouched = &regions[(x * n + counts[x] as usize) * d..(x + 1) * n * d];
                assert!(
                    untouched.iter().all(|&v| v == POISON),
                    "N={n}: expert {x} wrote unrouted rows"
                );
            }
            let (_, want) = reference(&spec, d, &weights, &u, |x, row| {
                let t = u.chunks(d).position(|r| r == row).unwrap();
                values[(x * n + t) * d..(x * n + t + 1) * d].to_vec()
            });
            assert_close(
                &ot.to_f32().unwrap(),
                &want,
                1e-6,
                1e-6,
                &format!("N={n}: out"),
            );
        }
    }

    /// SwiGLU experts with random weights, and their CPU reference.
    struct RandomMlps {
        weights: Vec<[Vec<f32>; 3]>,
        d: usize,
        hidden: usize,
    }

    impl RandomMlps {
        fn new(rng: &mut Rng, e: usize, d: usize, hidden: usize) -> Self {
            let s1 = 1.0 / (d as f32).sqrt();
            let s2 = 1.0 / (hidden as f32).sqrt();
            let weights = (0..e)
                .map(|_| {
                    [
                        rng.normal_vec(hidden * d, s1),
                        rng.normal_vec(d * hidden, s2),
                        rng.normal_vec(hidden * d, s1),
                    ]
                })
                .collect();
            RandomMlps { weights, d, hidden }
        }

        fn experts(&self, ctx: &Context, dtype: DType) -> Vec<Box<dyn Expert>> {
            self.weights
                .iter()
                .map(|[w1, w2, w3]| {
                    let e =
                        MlpExpert::from_host(ctx, "mlp.", self.d, self.hidden, w1, w2, w3, dtype)
                            .unwrap();
                    Box::new(e) as Box<dyn Expert>
                })
                .collect()
        }

        fn reference(&self, x: usize, row: &[f32], dtype: DType) -> Vec<f32> {
            let r = |w: &[f32]| {
                if dtype == DType::F16 {
                    round_f16(w)
                } else {
                    w.to_vec()
                }
            };
            let [w1, w2, w3] = &self.weights[x];
            mlp_expert::reference(&r(w1), &r(w2), &r(w3), self.d, row)
        }
    }

    #[test]
    fn swiglu_layer_matches_reference_for_decode_batches_and_all_experts() {
        let ctx = gpu();
        let mut rng = Rng::new(77);
        let cond = |modulation| Router::Conditioned {
            modulation,
            gamma: 1.5,
            tau: 0.5,
        };
        // (router, E, k, N, D, H, dtype, unused experts, out written in place over u)
        for (i, &(router, e, k, n, d, h, dtype, unused, in_place)) in [
            (
                cond(Modulation::Standard),
                8,
                2,
                1,
                24,
                48,
                DType::F32,
                &[3usize][..],
                false,
            ),
            (
                Router::Standard,
                4,
                1,
                24,
                30,
                60,
                DType::F32,
                &[][..],
                true,
            ),
            (
                cond(Modulation::Masked),
                64,
                64,
                5,
                10,
                7,
                DType::F32,
                &[][..],
                false,
            ),
            (
                cond(Modulation::Proportional),
                8,
                3,
                70,
                17,
                34,
                DType::F16,
                &[0, 5][..],
                false,
            ),
        ]
        .iter()
        .enumerate()
        {
            let what = format!("case {i}: {router:?} E={e} k={k} N={n} {dtype}");
            let spec = GateSpec::new(e, k, router).unwrap();
            let (w, b, wd, bd) = random_gate(&mut rng, &spec, d, unused);
            let weights = GateWeights {
                router: &w,
                router_bias: Some(&b),
                predictor: router.has_predictor().then_some((&wd[..], bd)),
            };
            let mlps = RandomMlps::new(&mut rng, e, d, h);
            let layer =
                MoeLayer::new(ctx, "l.", spec, d, &weights, mlps.experts(ctx, dtype)).unwrap();
            let u = rng.normal_vec(n * d, 1.0);
            let ut = Tensor::from_f32(ctx, "u", &[n, d], &u).unwrap();
            let ot = Tensor::zeros(ctx, "out", &[n, d], DType::F32).unwrap();
            let out = if in_place { &ut } else { &ot };
            let scratch = Scratch::new(ctx, n);
            let mut g = Graph::new();
            let step = layer
                .record(ctx, &mut g, View::of(&ut), View::of(out), &scratch)
                .unwrap();
            let (_, regions_out) = step.expert_regions();
            regions_out
                .write(HostData::F32(&vec![POISON; e * n * d]))
                .unwrap();
            ctx.run(&[&g]).unwrap();

            let (gref, want) = reference(&spec, d, &weights, &u, |x, row| {
                mlps.reference(x, row, dtype)
            });
            let tel = step.read_telemetry().unwrap();
            assert_eq!(tel.topk_idx, gref.topk_idx, "{what}: choices");
            assert_close_rel_max(&out.to_f32().unwrap(), &want, 1e-5, &what);
            // Unused experts have zero workgroups in every one of their dispatches; the rows
            // of the others past their count (rounded up to the matmul's row group) are
            // never written.
            let grids = step.read_expert_grids().unwrap();
            let group = match MatmulKernel::choose(ctx, n) {
                MatmulKernel::Gemv => 1,
                _ => 4,
            };
            let regions = regions_out.to_f32().unwrap();
            for x in 0..e {
                let count = tel.expert_counts[x] as usize;
                if count == 0 {
                    assert!(
                        grids[x].iter().all(|g| g.contains(&0)),
                        "{what}: expert {x} {:?}",
                        grids[x]
                    );
                }
                let end = (count.div_ceil(group) * group).min(n);
                let untouched = &regions[(x * n + end) * d..(x + 1) * n * d];
                assert!(
                    untouched.iter().all(|&v| v == POISON),
                    "{what}: expert {x} rows past its count"
                );
            }
            for &x in unused {
                assert_eq!(tel.expert_counts[x], 0, "{what}");
            }
        }
    }

    #[test]
    fn long_steps_are_dispatched_in_chunks() {
        // A 24 KiB binding limit holds the regions of 64 tokens of 4 experts x 24 floats, so
        // 150 tokens go through 3 chunks.
        let (e, k, n, d, h) = (4, 2, 150, 24, 20);
        let ctx = crate::testing::gpu_with_binding_limit((e * d * 4 * 64) as u64);
        let mut rng = Rng::new(5);
        let spec = GateSpec::new(e, k, Router::Standard).unwrap();
        let (w, b, _, _) = random_gate(&mut rng, &spec, d, &[]);
        let weights = GateWeights {
            router: &w,
            router_bias: Some(&b),
            predictor: None,
        };
        let mlps = RandomMlps::new(&mut rng, e, d, h);
        let layer = MoeLayer::new(
            &ctx,
            "l.",
            spec,
            d,
            &weights,
            mlps.experts(&ctx, DType::F32),
        )
        .unwrap();
        assert_eq!(layer.dispatch_chunk(&ctx, n).unwrap(), 64);
        let u = rng.normal_vec(n * d, 1.0);
        let (out, step) = run(&ctx, &layer, &u, 64);
        assert_eq!(step.layout().chunks(), 3);
        let (gref, want) = reference(&spec, d, &weights, &u, |x, row| {
            mlps.reference(x, row, DType::F32)
        });
        let tel = step.read_telemetry().unwrap();
        assert_eq!(tel.topk_idx, gref.topk_idx);
        assert_eq!(tel.expert_counts.iter().sum::<u32>() as usize, n * k);
        let rows = step.read_expert_rows().unwrap();
        for x in 0..e {
            let per_chunk: u32 = (0..3).map(|c| rows[c * e + x]).sum();
            assert_eq!(per_chunk, tel.expert_counts[x]);
        }
        assert_close_rel_max(&out, &want, 1e-5, "chunked");
    }

    #[test]
    fn the_mlp_model_layers_match_the_golden_prompt_and_decode() {
        let ctx = gpu();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/moxe_mlp_e8_k1_proportional_tied");
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let m = cfg.moxe().unwrap();
        let d = cfg.xlstm.embedding_dim;
        let w = Weights::open(&dir.join("model.safetensors")).unwrap();
        let golden = Weights::open(&dir.join("golden.safetensors")).unwrap();
        for l in 0..m.num_layers {
            let scope = w.scope(&format!("layers.{l}."));
            let experts =
                mlp_expert::mlp_experts(ctx, &scope, m.num_experts, d, DType::F32).unwrap();
            let layer = MoeLayer::load(ctx, &scope, m, d, experts).unwrap();
            let (u, _) = golden.f32_any(&format!("hidden.{l}.mixer")).unwrap();
            let (want, _) = golden.f32_any(&format!("hidden.{l}.out")).unwrap();
            let n = u.len() / d;
            let (out, step) = run(ctx, &layer, &u, n);
            let what = format!("layer {l}");
            assert_close_rel_max(&out, &want, 1e-5, &what);
            let tel = step.read_telemetry().unwrap();
            assert_telemetry(
                &tel,
                &golden,
                &format!("telemetry.{l}."),
                "router_probs",
                &what,
            );

            // Decode: one graph for one token, replayed with each token's row.
            let ut = Tensor::zeros(ctx, "u", &[1, d], DType::F32).unwrap();
            let ot = Tensor::zeros(ctx, "out", &[1, d], DType::F32).unwrap();
            let scratch = Scratch::new(ctx, 1);
            let mut g = Graph::new();
            let step = layer
                .record(ctx, &mut g, View::of(&ut), View::of(&ot), &scratch)
                .unwrap();
            for t in [0, 1, 17, n - 1] {
                ut.write(HostData::F32(&u[t * d..(t + 1) * d])).unwrap();
                ctx.run(&[&g]).unwrap();
                let row = &want[t * d..(t + 1) * d];
                assert_close_rel_max(
                    &ot.to_f32().unwrap(),
                    row,
                    1e-5,
                    &format!("{what} token {t}"),
                );
                let tel1 = step.read_telemetry().unwrap();
                assert_eq!(tel1.topk_idx, tel.topk_idx[t..t + 1], "{what} token {t}");
                assert_eq!(tel1.active_experts(), 1);
                let grids = step.read_expert_grids().unwrap();
                let idle = grids
                    .iter()
                    .filter(|g| g.iter().all(|g| g.contains(&0)))
                    .count();
                assert_eq!(idle, m.num_experts - 1, "{what} token {t}: idle experts");
            }
        }
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let ctx = gpu();
        let mlps = RandomMlps::new(&mut Rng::new(1), 2, 4, 4);
        let experts = || mlps.experts(ctx, DType::F32);
        let spec = GateSpec::new(2, 1, Router::Standard).unwrap();
        let w = [0.0f32; 8];
        let plain = GateWeights {
            router: &w,
            router_bias: None,
            predictor: None,
        };
        let error = |r: Result<MoeLayer>| r.err().unwrap().to_string();
        let mut one = experts();
        one.truncate(1);
        let err = error(MoeLayer::new(ctx, "l.", spec, 4, &plain, one));
        assert!(err.contains("experts of MoE layer 'l.'"), "{err}");
        let router = Router::Conditioned {
            modulation: Modulation::Masked,
            gamma: 1.0,
            tau: 0.5,
        };
        let cond = GateSpec::new(2, 1, router).unwrap();
        let err = error(MoeLayer::new(ctx, "l.", cond, 4, &plain, experts()));
        assert!(err.contains("difficulty predictor"), "{err}");
        let short = GateWeights {
            router: &w[..7],
            ..plain
        };
        let err = error(MoeLayer::new(ctx, "l.", spec, 4, &short, experts()));
        assert!(err.contains("router weight elements"), "{err}");

        let layer = MoeLayer::new(ctx, "l.", spec, 4, &plain, experts()).unwrap();
        let u = Tensor::zeros(ctx, "u", &[3, 4], DType::F32).unwrap();
        let wide = Tensor::zeros(ctx, "out", &[3, 5], DType::F32).unwrap();
        let out = Tensor::zeros(ctx, "out", &[3, 4], DType::F32).unwrap();
        let record = |o: &Tensor, rows: usize| {
            let scratch = Scratch::new(ctx, rows);
            layer
                .record(ctx, &mut Graph::new(), View::of(&u), View::of(o), &scratch)
                .err()
                .unwrap()
                .to_string()
        };
        let err = record(&wide, 3);
        assert!(err.contains("MoE input and output"), "{err}");
        let err = record(&out, 2);
        assert!(err.contains("scratch rows for the MoE experts"), "{err}");
    }
}
