//! Latent (MoLAE) experts (docs/LATENT_FORMAT.md): expert input matrices stored factored as
//! `W_e = A_e B_g`, with B_g (r, D) shared by the experts of group g and A_e (out, r) each
//! expert's own.
//!
//! Two places compute `B_g x`:
//! - **mlp experts** read the layer input u itself, so the MoE layer's group stage
//!   ([`super::moe::GroupStage`]) computes `[B_{g,w1}; B_{g,w3}] u` once per token
//!   per group hit, and each selected [`LatentMlpExpert`] reads its token's latent row (rows, R)
//!   and applies only its A's;
//! - **xlstm experts** read an expert-specific input (their own LayerNorm of u, or the sLSTM
//!   output), so the factored [`Projection`](crate::arch::projection::Projection) runs `A_e (B_g x_e)` inside the expert: one B
//!   product per (token, selected expert), with B's weights shared.

use std::collections::BTreeMap;

use super::mlp_expert::record_swiglu;
use super::moe::GroupStage;
use crate::arch::Expert;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::matmul::matmul;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, HostData, Tensor};

/// The tensor-name key of the shared projection of layer `layer`, group `group` and factored
/// kind `kind` (e.g. `xlstm.proj_up`): `layers.{l}.experts.latent.{g}.{kind}`; the tensor is
/// `{key}.B` and the manifest's rank key is `key` itself.
pub fn shared_key(layer: usize, group: usize, kind: &str) -> String {
    format!("layers.{layer}.experts.latent.{group}.{kind}")
}

/// The group of expert `e` among `experts` in `groups` contiguous groups.
pub fn group_of(e: usize, experts: usize, groups: usize) -> usize {
    e / (experts / groups)
}

/// A SwiGLU expert with factored w1 and w3 (`y = w2(silu(A_1 h_1) * (A_3 h_3))`), reading the
/// latent row `[h_1 | h_3 | ...] = [B_{g,w1} u | B_{g,w3} u | ...]` its group stage computed.
///
/// Shapes: A_1 (H, r1), A_3 (H, r3), w2 (D, H); tensor names `layers.{l}.experts.{e}.w1.A`,
/// `.w3.A`, `.w2.weight`. Input (rows, >= r1 + r3) latent rows, output (rows, D).
pub struct LatentMlpExpert {
    a1: Tensor,
    a3: Tensor,
    w2: Tensor,
    hidden: usize,
}

impl LatentMlpExpert {
    /// Loads `w1.A` (H, r1), `w3.A` (H, r3) and `w2.weight` (D, H) under `scope` (e.g.
    /// `"layers.0.experts.3."`), H = 2 D, matrices stored as `dtype`.
    pub fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        d: usize,
        ranks: (usize, usize),
        dtype: DType,
    ) -> Result<Self> {
        let hidden = 2 * d;
        Ok(LatentMlpExpert {
            a1: scope.matrix(ctx, "w1.A", &[hidden, ranks.0], dtype)?,
            a3: scope.matrix(ctx, "w3.A", &[hidden, ranks.1], dtype)?,
            w2: scope.matrix(ctx, "w2.weight", &[d, hidden], dtype)?,
            hidden,
        })
    }

    /// An expert from host weights `[A_1 (H, r1), A_3 (H, r3), w2 (D, H)]`, row-major.
    pub fn from_host(
        ctx: &Context,
        label: &str,
        d: usize,
        hidden: usize,
        (r1, r3): (usize, usize),
        [a1, a3, w2]: [&[f32]; 3],
        dtype: DType,
    ) -> Result<Self> {
        if d == 0 || hidden == 0 || r1 == 0 || r3 == 0 {
            return Err(Error::InvalidArgument(format!(
                "latent MLP expert '{label}' needs positive dims, got D = {d}, H = {hidden}, \
                 ranks ({r1}, {r3})"
            )));
        }
        let weight = |name: &str, w: &[f32], shape: [usize; 2]| {
            if w.len() != shape[0] * shape[1] {
                return Err(Error::mismatch(
                    format!("latent MLP expert '{label}' {name} elements"),
                    shape[0] * shape[1],
                    w.len(),
                ));
            }
            Tensor::weight(
                ctx,
                &format!("{label}{name}"),
                &shape,
                dtype,
                HostData::F32(w),
            )
        };
        Ok(LatentMlpExpert {
            a1: weight("w1.A", a1, [hidden, r1])?,
            a3: weight("w3.A", a3, [hidden, r3])?,
            w2: weight("w2.weight", w2, [d, hidden])?,
            hidden,
        })
    }

    /// (r1, r3): the latent columns the expert reads.
    pub fn ranks(&self) -> (usize, usize) {
        (self.a1.cols(), self.a3.cols())
    }
}

impl Expert for LatentMlpExpert {
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
    ) -> Result<()> {
        let (r1, r3) = self.ranks();
        if input.cols < r1 + r3 {
            return Err(Error::mismatch(
                "latent MLP expert input columns",
                format!("at least r1 + r3 = {}", r1 + r3),
                input.cols,
            ));
        }
        let h = self.hidden;
        record_swiglu(
            ctx,
            graph,
            scratch,
            "the latent MLP expert",
            &self.w2,
            output,
            input.rows,
            |graph, up| {
                let h1 = input.select_cols(0..r1);
                let h3 = input.select_cols(r1..r1 + r3);
                matmul(ctx, graph, &self.a1, None, h1, up.select_cols(0..h), 0.0)?;
                matmul(
                    ctx,
                    graph,
                    &self.a3,
                    None,
                    h3,
                    up.select_cols(h..2 * h),
                    0.0,
                )
            },
        )
    }
}

/// The group stage of one latent layer of mlp experts: per group g the stacked
/// `[B_{g,w1}; B_{g,w3}]` (r1 + r3, D), read from `layers.{l}.experts.latent.{g}.w{1,3}.B`
/// with the ranks of `ranks` (by [`shared_key`]); and each group's (r1, r3).
pub fn load_mlp_stage(
    ctx: &Context,
    root: &Scope<'_>,
    layer: usize,
    groups: usize,
    d: usize,
    ranks: &BTreeMap<String, usize>,
    dtype: DType,
) -> Result<(GroupStage, Vec<(usize, usize)>)> {
    let mut bases = Vec::with_capacity(groups);
    let mut group_ranks = Vec::with_capacity(groups);
    for g in 0..groups {
        let (k1, k3) = (shared_key(layer, g, "w1"), shared_key(layer, g, "w3"));
        let (r1, r3) = (rank_of(ranks, &k1)?, rank_of(ranks, &k3)?);
        bases.push(root.stacked_matrix(
            ctx,
            &format!("layers.{layer}.experts.latent.{g}.w1|w3.B"),
            &[(&format!("{k1}.B"), r1), (&format!("{k3}.B"), r3)],
            d,
            dtype,
        )?);
        group_ranks.push((r1, r3));
    }
    Ok((GroupStage::new(bases, d)?, group_ranks))
}

/// The rank the manifest found for a shared-projection key.
pub fn rank_of(ranks: &BTreeMap<String, usize>, key: &str) -> Result<usize> {
    ranks.get(key).copied().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "no latent rank for '{key}' (the checkpoint was not checked against a latent config)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::moxe::mlp_expert;
    use crate::arch::projection::Projection;
    use crate::testing::{assert_close, gpu, product, round_f16, Rng};
    use std::sync::Arc;

    #[test]
    fn latent_mlp_expert_is_the_dense_expert_of_the_product() {
        let ctx = gpu();
        let mut rng = Rng::new(11);
        for (d, r1, r3, rows) in [(8, 3, 5, 1), (16, 11, 4, 7), (12, 24, 24, 3)] {
            let h = 2 * d;
            let b1 = rng.normal_vec(r1 * d, 0.5);
            let b3 = rng.normal_vec(r3 * d, 0.5);
            let a1 = rng.normal_vec(h * r1, 0.5);
            let a3 = rng.normal_vec(h * r3, 0.5);
            let w2 = rng.normal_vec(d * h, 0.3);
            let x = rng.normal_vec(rows * d, 1.0);
            // The latent rows the group stage would give: [B1 x | B3 x | padding].
            let width = r1 + r3 + 2;
            let l1 = crate::ops::matmul::reference(&b1, d, &x, None);
            let l3 = crate::ops::matmul::reference(&b3, d, &x, None);
            let latent: Vec<f32> = (0..rows)
                .flat_map(|t| {
                    let mut row = l1[t * r1..(t + 1) * r1].to_vec();
                    row.extend(&l3[t * r3..(t + 1) * r3]);
                    row.extend([7.0, -7.0]);
                    row
                })
                .collect();
            for dtype in [DType::F32, DType::F16] {
                let e =
                    LatentMlpExpert::from_host(ctx, "e.", d, h, (r1, r3), [&a1, &a3, &w2], dtype)
                        .unwrap();
                assert_eq!(e.ranks(), (r1, r3));
                let round = |w: &[f32]| match dtype {
                    DType::F16 => round_f16(w),
                    _ => w.to_vec(),
                };
                let (w1, w3) = (
                    product(&round(&a1), &b1, r1, d),
                    product(&round(&a3), &b3, r3, d),
                );
                let want = mlp_expert::reference(&w1, &round(&w2), &w3, d, &x);
                let xt = Tensor::from_f32(ctx, "latent", &[rows, width], &latent).unwrap();
                let yt = Tensor::zeros(ctx, "y", &[rows, d], DType::F32).unwrap();
                let scratch = Scratch::new(ctx, rows);
                let mut g = Graph::new();
                e.record(ctx, &mut g, View::of(&xt), View::of(&yt), &scratch)
                    .unwrap();
                ctx.run(&[&g]).unwrap();
                let what = format!("D={d} r=({r1},{r3}) rows={rows} {dtype}");
                assert_close(&yt.to_f32().unwrap(), &want, 1e-4, 1e-4, &what);
            }
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let ctx = gpu();
        let err = LatentMlpExpert::from_host(
            ctx,
            "e.",
            4,
            8,
            (2, 3),
            [&[0.0; 16], &[0.0; 23], &[0.0; 32]],
            DType::F32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("w3.A elements"), "{err}");
        let e = LatentMlpExpert::from_host(
            ctx,
            "e.",
            4,
            8,
            (2, 3),
            [&[0.0; 16], &[0.0; 24], &[0.0; 32]],
            DType::F32,
        )
        .unwrap();
        let x = Tensor::zeros(ctx, "x", &[2, 4], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[2, 4], DType::F32).unwrap();
        let err = e
            .record(
                ctx,
                &mut Graph::new(),
                View::of(&x).select_cols(0..4),
                View::of(&y),
                &Scratch::new(ctx, 2),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("input columns"), "{err}");
        let b = Arc::new(Tensor::zeros(ctx, "B", &[3, 5], DType::F32).unwrap());
        let w = crate::checkpoint::Weights::from_bytes(
            "none".into(),
            safetensors::serialize(
                Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
                None,
            )
            .unwrap(),
        )
        .unwrap();
        let err = Projection::load(ctx, &w.scope(""), "p", 4, 4, false, DType::F32, Some(&b))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("columns"), "{err}");
    }
}
