//! Tests of the MoE layer against the reference fixtures, CPU references, and proofs that
//! dispatch is sparse.

use std::sync::Arc;

use super::*;
use crate::arch::moxe::config::Modulation;
use crate::arch::moxe::mlp_expert::{self, MlpExpert};
use crate::arch::moxe::RouterTelemetry;
use crate::arch::ModelConfig;
use crate::checkpoint::Weights;
use crate::graph::RowGrid;
use crate::ops::gate::tests::{gate_case, GATE_FIXTURES};
use crate::ops::gate::Router;
use crate::ops::matmul::MatmulKernel;
use crate::pipeline::Pipeline;
use crate::shaders::ShaderModule;
use crate::testing::{assert_close, assert_close_rel_max, gpu, product, round_f16, Rng};
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
                let e = MlpExpert::from_host(ctx, "mlp.", self.d, self.hidden, w1, w2, w3, dtype)
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
        let layer = MoeLayer::new(ctx, "l.", spec, d, &weights, mlps.experts(ctx, dtype)).unwrap();
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
        let group = MatmulKernel::choose(ctx, n).tokens_per_workgroup(true);
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
    let d = cfg.embedding_dim;
    let w = Weights::open(&dir.join("model.safetensors")).unwrap();
    let golden = Weights::open(&dir.join("golden.safetensors")).unwrap();
    for l in 0..m.num_layers {
        let scope = w.scope(&format!("layers.{l}."));
        let experts = mlp_expert::mlp_experts(ctx, &scope, m.num_experts, d, DType::F32).unwrap();
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

/// An expert that records `dispatches` row dispatches (copies of its input).
struct ChattyExpert {
    dispatches: usize,
}

impl Expert for ChattyExpert {
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        _scratch: &Scratch,
    ) -> Result<()> {
        for _ in 0..self.dispatches {
            crate::ops::elementwise::unary(
                ctx,
                graph,
                crate::ops::elementwise::Activation::Identity,
                input,
                output,
            )?;
        }
        Ok(())
    }
}

#[test]
fn experts_past_the_dispatch_table_are_a_typed_error() {
    let ctx = gpu();
    let spec = GateSpec::new(2, 1, Router::Standard).unwrap();
    let w = [0.1f32, 0.2, 0.3, 0.4];
    let weights = GateWeights {
        router: &w,
        router_bias: None,
        predictor: None,
    };
    let experts = |dispatches| -> Vec<Box<dyn Expert>> {
        (0..2)
            .map(|_| Box::new(ChattyExpert { dispatches }) as Box<dyn Expert>)
            .collect()
    };
    let u = [1.0f32, -1.0];
    let fits = MoeLayer::new(
        ctx,
        "l.",
        spec,
        2,
        &weights,
        experts(EXPERT_DISPATCH_BUDGET),
    )
    .unwrap();
    let (out, _) = run(ctx, &fits, &u, 1);
    assert_eq!(out, u, "identity experts with weights summing to 1");
    let layer = MoeLayer::new(
        ctx,
        "l.",
        spec,
        2,
        &weights,
        experts(3 * EXPERT_DISPATCH_BUDGET),
    )
    .unwrap();
    let ut = Tensor::from_f32(ctx, "u", &[1, 2], &u).unwrap();
    let ot = Tensor::zeros(ctx, "out", &[1, 2], DType::F32).unwrap();
    let err = layer
        .record(
            ctx,
            &mut Graph::new(),
            View::of(&ut),
            View::of(&ot),
            &Scratch::new(ctx, 1),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("row dispatches than the table"), "{err}");
}

#[test]
fn latent_mlp_layer_is_the_dense_layer_of_the_products_in_chunks_and_decode() {
    use crate::arch::moxe::latent::LatentMlpExpert;
    // (E, K, G, N, D); the first case's 24 KiB binding limit makes 3 dispatch chunks.
    for (case, &(e, k, g, n, d)) in [(4, 2, 2, 150, 24), (8, 3, 4, 2, 16), (4, 4, 1, 5, 8)]
        .iter()
        .enumerate()
    {
        let limited;
        let ctx = match case {
            0 => {
                limited = crate::testing::gpu_with_binding_limit((e * d * 4 * 64) as u64);
                &limited
            }
            _ => gpu(),
        };
        let mut rng = Rng::new(70 + case as u64);
        let spec = GateSpec::new(e, k, Router::Standard).unwrap();
        let (w, b, _, _) = random_gate(&mut rng, &spec, d, &[]);
        let weights = GateWeights {
            router: &w,
            router_bias: Some(&b),
            predictor: None,
        };
        let h = 2 * d;
        let ranks: Vec<(usize, usize)> = (0..g).map(|x| (3 + x, d / 2 - x)).collect();
        let bases: Vec<[Vec<f32>; 2]> = ranks
            .iter()
            .map(|&(r1, r3)| [rng.normal_vec(r1 * d, 0.4), rng.normal_vec(r3 * d, 0.4)])
            .collect();
        let size = e / g;
        let mut experts: Vec<Box<dyn Expert>> = Vec::new();
        let mut dense = Vec::new();
        for x in 0..e {
            let (r1, r3) = ranks[x / size];
            let a1 = rng.normal_vec(h * r1, 0.4);
            let a3 = rng.normal_vec(h * r3, 0.4);
            let w2 = rng.normal_vec(d * h, 0.2);
            let expert =
                LatentMlpExpert::from_host(ctx, "e.", d, h, (r1, r3), [&a1, &a3, &w2], DType::F32)
                    .unwrap();
            experts.push(Box::new(expert));
            let [b1, b3] = &bases[x / size];
            dense.push([product(&a1, b1, r1, d), w2, product(&a3, b3, r3, d)]);
        }
        let stacked: Vec<Tensor> = bases
            .iter()
            .map(|[b1, b3]| {
                let v: Vec<f32> = b1.iter().chain(b3).copied().collect();
                Tensor::weight(ctx, "B", &[v.len() / d, d], DType::F32, HostData::F32(&v)).unwrap()
            })
            .collect();
        let layer = MoeLayer::new(ctx, "l.", spec, d, &weights, experts)
            .unwrap()
            .with_group_stage(GroupStage::new(stacked, d).unwrap())
            .unwrap();
        let chunk = layer.dispatch_chunk(ctx, n).unwrap();
        let u = rng.normal_vec(n * d, 1.0);
        let (out, step) = run(ctx, &layer, &u, chunk);
        let (gref, want) = reference(&spec, d, &weights, &u, |x, row| {
            let [w1, w2, w3] = &dense[x];
            mlp_expert::reference(w1, w2, w3, d, row)
        });
        let what = format!("E={e} K={k} G={g} N={n} chunk={chunk}");
        let tel = step.read_telemetry().unwrap();
        assert_eq!(tel.topk_idx, gref.topk_idx, "{what}");
        let stage = step.group_stage().unwrap();
        let (_, counts) = crate::ops::group_route::reference(step.layout(), g, &tel.topk_idx);
        assert_eq!(stage.read_rows().unwrap(), counts, "{what}: group rows");
        assert_close_rel_max(&out, &want, 1e-4, &what);
        if case == 0 {
            assert_eq!(step.layout().chunks(), 3, "{what}");
        }
    }
}
