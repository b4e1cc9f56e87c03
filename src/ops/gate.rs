//! The router of a MoxE layer, fused per token (MODEL.md section 3): the entropy-aware gate
//! (difficulty d, modulation sigma, conditioned logits zc) or the standard router, softmax,
//! top-k with ties to the lower index, renormalisation, and the per-token terms of the
//! router telemetry. Kernel: `shaders/gate.wgsl`.
//!
//! The router logits come from a matmul recorded before: `logits = u [W_r; w_d]^T +
//! [b_r; b_d]`, so column `e < E` is z_e (bias included) and, for the entropy-aware gate,
//! column E is the difficulty pre-activation (see [`GateSpec::logit_cols`]).
//!
//! Shapes (N tokens, E experts, K = top-k): logits a (N, E [+1]) view; outputs `probs`
//! (N, E) f32, `topk_idx` (N, K) u32, `topk_weight` and `topk_prob` (N, K) f32, `stats`
//! (N, [`STAT_COLS`]) f32 laid out as the `STAT_*` column constants say.
//!
//! Modulation names follow MODEL.md as written ("proportional" = gamma relu(d - tau),
//! "masked" = gamma d 1(d > tau)); the authors' JAX code swaps the two by an indexing bug.

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::arch::moxe::config::{Modulation, MAX_EXPERTS};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// Columns of one row of per-token router statistics.
pub const STAT_COLS: usize = 8;
/// Stats column: difficulty d (0 for the standard router).
pub const STAT_DIFFICULTY: usize = 0;
/// Stats column: modulation sigma (0 for the standard router).
pub const STAT_SIGMA: usize = 1;
/// Stats column: normalised entropy H~ of softmax(z).
pub const STAT_ENTROPY: usize = 2;
/// Stats column: logsumexp of the conditioned logits zc.
pub const STAT_LSE: usize = 3;
/// Stats column: sum of p over the mLSTM group (experts 0 .. E/2).
pub const STAT_P_MLSTM: usize = 4;
/// Stats column: sum of p over the sLSTM group (experts E/2 .. E).
pub const STAT_P_SLSTM: usize = 5;

/// Which router a layer uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Router {
    /// p = softmax(z); no difficulty predictor (d = sigma = 0).
    Standard,
    /// The entropy-aware gate ("conditioned_addition").
    Conditioned {
        modulation: Modulation,
        /// `gamma`.
        gamma: f32,
        /// `difficulty_threshold`.
        tau: f32,
    },
}

impl Router {
    /// Whether the router has a difficulty predictor (an extra logit column).
    pub fn has_predictor(self) -> bool {
        matches!(self, Router::Conditioned { .. })
    }

    fn mode(self) -> u32 {
        match self {
            Router::Standard => 0,
            Router::Conditioned { modulation, .. } => match modulation {
                Modulation::Standard => 1,
                Modulation::Proportional => 2,
                Modulation::Masked => 3,
            },
        }
    }

    /// sigma for difficulty `d` (CPU reference of the modulation).
    pub fn sigma(self, d: f64) -> f64 {
        match self {
            Router::Standard => 0.0,
            Router::Conditioned {
                modulation,
                gamma,
                tau,
            } => {
                let (gamma, tau) = (gamma as f64, tau as f64);
                match modulation {
                    Modulation::Standard => gamma * d,
                    Modulation::Proportional => gamma * (d - tau).max(0.0),
                    Modulation::Masked if d > tau => gamma * d,
                    Modulation::Masked => 0.0,
                }
            }
        }
    }
}

/// Shape and kind of a gate: E experts, top-k K, router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSpec {
    pub experts: usize,
    pub top_k: usize,
    pub router: Router,
}

impl GateSpec {
    /// A checked spec: 2 <= E <= [`MAX_EXPERTS`], 1 <= K <= E.
    pub fn new(experts: usize, top_k: usize, router: Router) -> Result<Self> {
        if !(2..=MAX_EXPERTS).contains(&experts) {
            return Err(Error::InvalidArgument(format!(
                "a gate needs between 2 and {MAX_EXPERTS} experts, got {experts}"
            )));
        }
        if top_k == 0 || top_k > experts {
            return Err(Error::InvalidArgument(format!(
                "top-k must be between 1 and the number of experts ({experts}), got {top_k}"
            )));
        }
        Ok(GateSpec {
            experts,
            top_k,
            router,
        })
    }

    /// Columns of the logits the gate reads: E, plus the difficulty pre-activation for the
    /// entropy-aware gate.
    pub fn logit_cols(&self) -> usize {
        self.experts + self.router.has_predictor() as usize
    }
}

/// The tensors the gate writes (N tokens).
#[derive(Debug, Clone, Copy)]
pub struct GateOutputs<'a> {
    /// (N, E) f32: p.
    pub probs: &'a Tensor,
    /// (N, K) u32: selected experts, by decreasing p.
    pub topk_idx: &'a Tensor,
    /// (N, K) f32: renormalised weights.
    pub topk_weight: &'a Tensor,
    /// (N, K) f32: raw p of the selected experts.
    pub topk_prob: &'a Tensor,
    /// (N, [`STAT_COLS`]) f32: per-token statistics.
    pub stats: &'a Tensor,
}

impl<'a> GateOutputs<'a> {
    fn check(&self, spec: &GateSpec, n: usize) -> Result<()> {
        let (e, k) = (spec.experts, spec.top_k);
        self.probs.expect("gate probs", &[n, e], DType::F32)?;
        self.topk_idx
            .expect("gate top-k indices", &[n, k], DType::U32)?;
        self.topk_weight
            .expect("gate top-k weights", &[n, k], DType::F32)?;
        self.topk_prob
            .expect("gate top-k probs", &[n, k], DType::F32)?;
        self.stats
            .expect("gate stats", &[n, STAT_COLS], DType::F32)?;
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    logit_stride: u32,
    logit_offset: u32,
    mode: u32,
    gamma: f32,
    tau: f32,
}

/// Records the gate over the `logits.rows` tokens of `logits` (N, [`GateSpec::logit_cols`]).
pub fn gate(
    ctx: &Context,
    graph: &mut Graph,
    spec: &GateSpec,
    logits: View<'_>,
    out: &GateOutputs<'_>,
) -> Result<()> {
    logits.check("gate logits")?;
    if logits.cols != spec.logit_cols() {
        return Err(Error::mismatch(
            format!("gate logits columns ('{}')", logits.tensor.label()),
            spec.logit_cols(),
            logits.cols,
        ));
    }
    let n = logits.rows;
    out.check(spec, n)?;
    if n == 0 {
        return Ok(());
    }
    let (gamma, tau) = match spec.router {
        Router::Standard => (0.0, 0.0),
        Router::Conditioned { gamma, tau, .. } => (gamma, tau),
    };
    let params = Params {
        n: u32_param("gate tokens", n)?,
        experts: spec.experts as u32,
        top_k: spec.top_k as u32,
        logit_stride: u32_param("gate logits stride", logits.stride)?,
        logit_offset: u32_param("gate logits offset", logits.offset)?,
        mode: spec.router.mode(),
        gamma,
        tau,
    };
    let pipeline = ctx.pipeline("gate", "main", &[])?;
    let uniform = ctx.uniform("gate params", &params)?;
    graph.dispatch(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            logits.binding()?,
            out.probs.binding()?,
            out.topk_idx.binding()?,
            out.topk_weight.binding()?,
            out.topk_prob.binding()?,
            out.stats.binding()?,
        ],
        Workgroups::linear(n.div_ceil(64)),
    )
}

/// CPU reference of the gate for N tokens (computed in f64, returned as f32).
#[derive(Debug, Clone, PartialEq)]
pub struct GateReference {
    /// (N) d.
    pub difficulty: Vec<f32>,
    /// (N) sigma.
    pub sigma: Vec<f32>,
    /// (N, E) conditioned logits.
    pub zc: Vec<f32>,
    /// (N, E) p = softmax(zc).
    pub probs: Vec<f32>,
    /// (N, K) selected experts.
    pub topk_idx: Vec<u32>,
    /// (N, K) raw p of the selected experts.
    pub topk_prob: Vec<f32>,
    /// (N, K) renormalised weights.
    pub topk_weight: Vec<f32>,
    /// (N) normalised entropy of softmax(z).
    pub entropy: Vec<f32>,
    /// (N) logsumexp(zc).
    pub lse: Vec<f32>,
    /// (N) sums of p over the mLSTM group.
    pub p_mlstm: Vec<f32>,
    /// (N) sums of p over the sLSTM group.
    pub p_slstm: Vec<f32>,
}

fn softmax(x: &[f64]) -> (Vec<f64>, f64) {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    (e.iter().map(|v| v / s).collect(), m + s.ln())
}

/// Indices of the `k` largest values, by decreasing value; ties keep the lower index first.
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    // A stable sort by decreasing value keeps tied indices in increasing order.
    order.sort_by(|&a, &b| {
        values[b as usize]
            .partial_cmp(&values[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order.truncate(k);
    order
}

/// CPU reference: `logits` is (N, [`GateSpec::logit_cols`]) row-major.
pub fn reference(spec: &GateSpec, logits: &[f32]) -> GateReference {
    let (e, k, cols) = (spec.experts, spec.top_k, spec.logit_cols());
    let n = logits.len() / cols;
    let half = e / 2;
    let mut r = GateReference {
        difficulty: vec![],
        sigma: vec![],
        zc: vec![],
        probs: vec![],
        topk_idx: vec![],
        topk_prob: vec![],
        topk_weight: vec![],
        entropy: vec![],
        lse: vec![],
        p_mlstm: vec![],
        p_slstm: vec![],
    };
    for t in 0..n {
        let row = &logits[t * cols..(t + 1) * cols];
        let z: Vec<f64> = row[..e].iter().map(|&v| v as f64).collect();
        let d = if spec.router.has_predictor() {
            1.0 / (1.0 + (-(row[e] as f64)).exp())
        } else {
            0.0
        };
        let sigma = spec.router.sigma(d);
        let zc: Vec<f64> = z
            .iter()
            .enumerate()
            .map(|(i, v)| if i < half { v + sigma } else { v - sigma })
            .collect();
        let (p, lse) = softmax(&zc);
        let (q, _) = softmax(&z);
        let ent = -q.iter().map(|&q| q * q.max(1e-6).ln()).sum::<f64>() / (e as f64).ln();
        let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
        let idx = top_k(&p32, k);
        let raw: Vec<f64> = idx.iter().map(|&i| p[i as usize]).collect();
        let raw_sum: f64 = raw.iter().sum();
        r.difficulty.push(d as f32);
        r.sigma.push(sigma as f32);
        r.zc.extend(zc.iter().map(|&v| v as f32));
        r.probs.extend(&p32);
        r.topk_idx.extend(&idx);
        r.topk_prob.extend(raw.iter().map(|&v| v as f32));
        r.topk_weight
            .extend(raw.iter().map(|&v| (v / raw_sum) as f32));
        r.entropy.push(ent as f32);
        r.lse.push(lse as f32);
        r.p_mlstm.push(p[..half].iter().sum::<f64>() as f32);
        r.p_slstm.push(p[half..].iter().sum::<f64>() as f32);
    }
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::Weights;
    use crate::ops::matmul::matmul;
    use crate::testing::{assert_close, gpu, Rng};
    use crate::HostData;

    /// GPU tensors for the gate outputs of `n` tokens.
    pub(crate) struct Outs {
        pub probs: Tensor,
        pub idx: Tensor,
        pub weight: Tensor,
        pub prob: Tensor,
        pub stats: Tensor,
    }

    impl Outs {
        pub fn new(ctx: &Context, spec: &GateSpec, n: usize) -> Self {
            let (e, k) = (spec.experts, spec.top_k);
            Outs {
                probs: Tensor::zeros(ctx, "probs", &[n, e], DType::F32).unwrap(),
                idx: Tensor::zeros(ctx, "idx", &[n, k], DType::U32).unwrap(),
                weight: Tensor::zeros(ctx, "weight", &[n, k], DType::F32).unwrap(),
                prob: Tensor::zeros(ctx, "prob", &[n, k], DType::F32).unwrap(),
                stats: Tensor::zeros(ctx, "stats", &[n, STAT_COLS], DType::F32).unwrap(),
            }
        }

        pub fn outputs(&self) -> GateOutputs<'_> {
            GateOutputs {
                probs: &self.probs,
                topk_idx: &self.idx,
                topk_weight: &self.weight,
                topk_prob: &self.prob,
                stats: &self.stats,
            }
        }

        pub fn stat(&self, col: usize) -> Vec<f32> {
            let s = self.stats.to_f32().unwrap();
            s.chunks(STAT_COLS).map(|r| r[col]).collect()
        }
    }

    /// Runs the gate on host logits and checks every output against the reference.
    fn check(spec: &GateSpec, logits: &[f32], what: &str) {
        let ctx = gpu();
        let cols = spec.logit_cols();
        let n = logits.len() / cols;
        let lt = Tensor::from_f32(ctx, "logits", &[n, cols], logits).unwrap();
        let outs = Outs::new(ctx, spec, n);
        let mut g = Graph::new();
        gate(ctx, &mut g, spec, View::of(&lt), &outs.outputs()).unwrap();
        ctx.run(&[&g]).unwrap();
        let want = reference(spec, logits);
        assert_eq!(outs.idx.to_u32().unwrap(), want.topk_idx, "{what}: top-k");
        let close = |got: Vec<f32>, want: &[f32], name: &str| {
            assert_close(&got, want, 1e-6, 1e-5, &format!("{what}: {name}"))
        };
        close(outs.probs.to_f32().unwrap(), &want.probs, "probs");
        close(outs.weight.to_f32().unwrap(), &want.topk_weight, "weights");
        close(outs.prob.to_f32().unwrap(), &want.topk_prob, "raw probs");
        close(outs.stat(STAT_DIFFICULTY), &want.difficulty, "d");
        close(outs.stat(STAT_SIGMA), &want.sigma, "sigma");
        close(outs.stat(STAT_ENTROPY), &want.entropy, "entropy");
        close(outs.stat(STAT_LSE), &want.lse, "lse");
        close(outs.stat(STAT_P_MLSTM), &want.p_mlstm, "P_m");
        close(outs.stat(STAT_P_SLSTM), &want.p_slstm, "P_s");
    }

    fn routers() -> Vec<Router> {
        let mut v = vec![Router::Standard];
        for modulation in [
            Modulation::Standard,
            Modulation::Proportional,
            Modulation::Masked,
        ] {
            v.push(Router::Conditioned {
                modulation,
                gamma: 1.5,
                tau: 0.5,
            });
        }
        v
    }

    #[test]
    fn matches_reference_for_every_router_and_shape() {
        let mut rng = Rng::new(5);
        for router in routers() {
            for (e, k, n) in [(2, 1, 1), (4, 2, 70), (8, 8, 13), (64, 3, 9), (64, 64, 2)] {
                let spec = GateSpec::new(e, k, router).unwrap();
                let logits = rng.normal_vec(n * spec.logit_cols(), 2.0);
                check(&spec, &logits, &format!("{router:?} E={e} k={k} N={n}"));
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // Equal logits within a group give bitwise-equal probabilities.
        let spec = GateSpec::new(8, 3, Router::Standard).unwrap();
        let logits = [
            0.5, 2.0, 2.0, 0.1, 2.0, -1.0, 0.0, 0.0, //
            1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
        ];
        check(&spec, &logits, "ties");
        let want = reference(&spec, &logits);
        assert_eq!(want.topk_idx, vec![1, 2, 4, 0, 1, 2]);
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        assert!(GateSpec::new(1, 1, Router::Standard).is_err());
        assert!(GateSpec::new(65, 1, Router::Standard).is_err());
        let err = GateSpec::new(4, 5, Router::Standard).unwrap_err();
        assert!(err.to_string().contains("top-k"), "{err}");
        let ctx = gpu();
        let spec = GateSpec::new(4, 2, Router::Standard).unwrap();
        let lt = Tensor::zeros(ctx, "logits", &[3, 5], DType::F32).unwrap();
        let outs = Outs::new(ctx, &spec, 3);
        let err = gate(
            ctx,
            &mut Graph::new(),
            &spec,
            View::of(&lt),
            &outs.outputs(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gate logits columns"), "{err}");
        let outs = Outs::new(ctx, &spec, 2);
        let view = View::of(&lt).select_cols(0..4);
        let err = gate(ctx, &mut Graph::new(), &spec, view, &outs.outputs())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gate probs"), "{err}");
    }

    pub(crate) fn fixture(name: &str) -> Weights {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Weights::open(&path).unwrap()
    }

    /// A gate fixture case: spec, u (N, D), router weight (L, D) and bias (L) with the
    /// predictor as the last row when the router has one.
    pub(crate) struct GateCase {
        pub spec: GateSpec,
        pub d: usize,
        pub u: Vec<f32>,
        pub weight: Vec<f32>,
        pub bias: Vec<f32>,
        pub w: Weights,
    }

    pub(crate) fn gate_case(name: &str) -> GateCase {
        let w = fixture(&format!("ops/{name}.safetensors"));
        let cfg: serde_json::Value = serde_json::from_str(&w.metadata()["config"]).unwrap();
        let e = cfg["num_experts"].as_u64().unwrap() as usize;
        let k = cfg["top_k_experts"].as_u64().unwrap() as usize;
        let d = cfg["dim"].as_u64().unwrap() as usize;
        let router = match cfg["router_type"].as_str().unwrap() {
            "standard" => Router::Standard,
            _ => Router::Conditioned {
                modulation: match cfg["modulation_bias"].as_str().unwrap() {
                    "proportional" => Modulation::Proportional,
                    "masked" => Modulation::Masked,
                    _ => Modulation::Standard,
                },
                gamma: cfg["gamma"].as_f64().unwrap() as f32,
                tau: cfg["difficulty_threshold"].as_f64().unwrap() as f32,
            },
        };
        let spec = GateSpec::new(e, k, router).unwrap();
        let (u, _) = w.f32_any("in.u").unwrap();
        let mut weight = w.f32("param.router.weight", &[e, d]).unwrap();
        let mut bias = if cfg["gate_bias"].as_bool().unwrap() {
            w.f32("param.router.bias", &[e]).unwrap()
        } else {
            vec![0.0; e]
        };
        if router.has_predictor() {
            weight.extend(w.f32("param.entropy_predictor.weight", &[1, d]).unwrap());
            bias.extend(w.f32("param.entropy_predictor.bias", &[1]).unwrap());
        }
        GateCase {
            spec,
            d,
            u,
            weight,
            bias,
            w,
        }
    }

    pub(crate) const GATE_FIXTURES: [&str; 10] = [
        "gate_standard_e4_k2",
        "gate_standard_e8_k1",
        "gate_proportional_e4_k1",
        "gate_proportional_e8_k2",
        "gate_masked_e4_k2",
        "gate_masked_e8_k1",
        "gate_ties_e4_k1",
        "gate_ties_e8_k2",
        "router_standard_e4_k1",
        "router_standard_e8_k2",
    ];

    #[test]
    fn router_matmul_and_gate_match_every_fixture() {
        let ctx = gpu();
        for name in GATE_FIXTURES {
            let c = gate_case(name);
            let (cols, n) = (c.spec.logit_cols(), c.u.len() / c.d);
            let (e, k) = (c.spec.experts, c.spec.top_k);
            let wt = Tensor::weight(
                ctx,
                "router",
                &[cols, c.d],
                DType::F32,
                HostData::F32(&c.weight),
            )
            .unwrap();
            let bt = Tensor::from_f32(ctx, "router bias", &[cols], &c.bias).unwrap();
            let ut = Tensor::from_f32(ctx, "u", &[n, c.d], &c.u).unwrap();
            let lt = Tensor::zeros(ctx, "logits", &[n, cols], DType::F32).unwrap();
            let outs = Outs::new(ctx, &c.spec, n);
            let mut g = Graph::new();
            matmul(
                ctx,
                &mut g,
                &wt,
                Some(&bt),
                View::of(&ut),
                View::of(&lt),
                0.0,
            )
            .unwrap();
            gate(ctx, &mut g, &c.spec, View::of(&lt), &outs.outputs()).unwrap();
            ctx.run(&[&g]).unwrap();

            let f = |t: &str| c.w.f32_any(&format!("out.{t}")).unwrap().0;
            let close = |got: &[f32], want: &[f32], what: &str| {
                assert_close(got, want, 1e-6, 1e-5, &format!("{name}: {what}"))
            };
            let logits = lt.to_f32().unwrap();
            let z: Vec<f32> = logits.chunks(cols).flat_map(|r| r[..e].to_vec()).collect();
            close(&z, &f("z"), "z");
            let want_idx: Vec<u32> =
                c.w.ints("out.topk_idx")
                    .unwrap()
                    .0
                    .iter()
                    .map(|&i| i as u32)
                    .collect();
            assert_eq!(
                outs.idx.to_u32().unwrap(),
                want_idx,
                "{name}: top-k choices"
            );
            close(&outs.probs.to_f32().unwrap(), &f("probs"), "probs");
            close(&outs.prob.to_f32().unwrap(), &f("topk_prob"), "topk_prob");
            close(
                &outs.weight.to_f32().unwrap(),
                &f("topk_weight"),
                "topk_weight",
            );
            close(&outs.stat(STAT_DIFFICULTY), &f("difficulty"), "difficulty");
            close(&outs.stat(STAT_SIGMA), &f("sigma"), "sigma");
            close(&outs.stat(STAT_ENTROPY), &f("entropy"), "entropy");
            // zc = log p + logsumexp(zc): the GPU's conditioned logits, recovered exactly
            // enough to compare, and the reference's formula on the GPU logits.
            let lse = outs.stat(STAT_LSE);
            let probs = outs.probs.to_f32().unwrap();
            let zc_gpu: Vec<f32> = probs
                .iter()
                .enumerate()
                .map(|(i, p)| p.ln() + lse[i / e])
                .collect();
            assert_close(&zc_gpu, &f("zc"), 2e-5, 1e-5, &format!("{name}: zc"));
            close(&reference(&c.spec, &logits).zc, &f("zc"), "reference zc");
            assert_eq!(want_idx.len(), n * k);
        }
    }
}
