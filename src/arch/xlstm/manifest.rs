//! The tensors of the NeurIPS blocks (MODEL.md section 7), as blocks of a stack or as MoxE
//! experts (whose input projections may be factored through a latent group's shared B).

use super::config::{MlstmConfig, SlstmConfig, SlstmLayout};
use crate::checkpoint::{Dim, Manifest};

/// An sLSTM block under prefix `p` (e.g. `xlstm_block_stack.blocks.1.`).
pub(crate) fn slstm(m: &mut Manifest, p: &str, c: &SlstmConfig) {
    slstm_common(m, p, c);
    if let Some(ffn) = &c.ffn {
        m.add_matrix(
            format!("{p}ffn.proj_up.weight"),
            &[2 * ffn.hidden(c.embedding_dim), c.embedding_dim],
        );
    }
}

/// An sLSTM expert: its FFN's proj_up dense, or factored with latent key prefix `latent`.
pub(crate) fn slstm_expert(m: &mut Manifest, ep: &str, c: &SlstmConfig, latent: Option<&String>) {
    slstm_common(m, ep, c);
    if let Some(ffn) = &c.ffn {
        let out = 2 * ffn.hidden(c.embedding_dim);
        factored(m, ep, "ffn.proj_up", out, c.embedding_dim, latent);
    }
}

fn slstm_common(m: &mut Manifest, p: &str, c: &SlstmConfig) {
    let (d, nh, dh) = (c.embedding_dim, c.num_heads, c.head_dim());
    m.add(format!("{p}xlstm_norm.weight"), &[d]);
    if c.conv_kernel > 0 {
        m.add(
            format!("{p}xlstm.conv1d.conv.weight"),
            &[d, 1, c.conv_kernel],
        );
        m.add(format!("{p}xlstm.conv1d.conv.bias"), &[d]);
    }
    for g in ["f", "i", "z", "o"] {
        m.add_matrix(format!("{p}xlstm.{g}gate.weight"), &[nh, dh, dh]);
    }
    let r = match c.layout {
        SlstmLayout::Vanilla => [nh, 4 * dh, dh],
        SlstmLayout::Cuda => [nh, dh, 4 * dh],
    };
    m.add(format!("{p}xlstm.slstm_cell._recurrent_kernel_"), &r);
    m.add(format!("{p}xlstm.slstm_cell._bias_"), &[4 * d]);
    m.add(format!("{p}xlstm.group_norm.weight"), &[d]);
    if let Some(ffn) = &c.ffn {
        m.add(format!("{p}ffn_norm.weight"), &[d]);
        m.add_matrix(format!("{p}ffn.proj_down.weight"), &[d, ffn.hidden(d)]);
    }
}

/// An mLSTM block under prefix `p`.
pub(crate) fn mlstm(m: &mut Manifest, p: &str, c: &MlstmConfig) {
    mlstm_common(m, p, c);
    m.add_matrix(
        format!("{p}xlstm.proj_up.weight"),
        &[2 * c.inner_dim(), c.embedding_dim],
    );
}

/// An mLSTM expert: proj_up dense, or factored with latent key prefix `latent`.
pub(crate) fn mlstm_expert(m: &mut Manifest, ep: &str, c: &MlstmConfig, latent: Option<&String>) {
    mlstm_common(m, ep, c);
    factored(
        m,
        ep,
        "xlstm.proj_up",
        2 * c.inner_dim(),
        c.embedding_dim,
        latent,
    );
}

fn mlstm_common(m: &mut Manifest, p: &str, c: &MlstmConfig) {
    let (d, di, nh, bs) = (c.embedding_dim, c.inner_dim(), c.num_heads, c.qkv_blocksize);
    m.add(format!("{p}xlstm_norm.weight"), &[d]);
    if c.bias {
        m.add(format!("{p}xlstm.proj_up.bias"), &[2 * di]);
    }
    m.add(
        format!("{p}xlstm.conv1d.conv.weight"),
        &[di, 1, c.conv_kernel],
    );
    m.add(format!("{p}xlstm.conv1d.conv.bias"), &[di]);
    for q in ["q", "k", "v"] {
        m.add_matrix(format!("{p}xlstm.{q}_proj.weight"), &[di / bs, bs, bs]);
        if c.bias {
            m.add(format!("{p}xlstm.{q}_proj.bias"), &[di]);
        }
    }
    for g in ["igate", "fgate"] {
        m.add_matrix(format!("{p}xlstm.mlstm_cell.{g}.weight"), &[nh, 3 * di]);
        m.add(format!("{p}xlstm.mlstm_cell.{g}.bias"), &[nh]);
    }
    m.add(format!("{p}xlstm.mlstm_cell.outnorm.weight"), &[di]);
    m.add(format!("{p}xlstm.learnable_skip"), &[di]);
    m.add_matrix(format!("{p}xlstm.proj_down.weight"), &[d, di]);
    if c.bias {
        m.add(format!("{p}xlstm.proj_down.bias"), &[d]);
    }
}

/// A factored matrix `kind` of expert prefix `ep` with `out` rows: dense `.weight`, or the
/// latent `.A` (out, r_g) with rank key `{latent}{kind}`.
pub(crate) fn factored(
    m: &mut Manifest,
    ep: &str,
    kind: &str,
    out: usize,
    d: usize,
    latent: Option<&String>,
) {
    match latent {
        None => m.add_matrix(format!("{ep}{kind}.weight"), &[out, d]),
        Some(lp) => m.add_matrix_dims(
            format!("{ep}{kind}.A"),
            vec![Dim::Fixed(out), Dim::Rank(format!("{lp}{kind}"))],
        ),
    }
}
