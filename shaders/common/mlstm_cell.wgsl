// Shared by the mLSTM cell kernels (mlstm_step, mlstm_step_wide, mlstm_step_simd,
// mlstm_chunk, mlstm_chunk_wide): the registry appends this file to each of them. Their
// parameters (src/ops/mlstm_cell/mod.rs `Params`), the bindings they all declare alike
// (each declares binding 5, the matrix memory C, in its own layout, and any binding 8), and
// the stable log-sigmoid.

struct Params {
    heads: u32,
    head_dim: u32,
    tokens: u32,
    seqs: u32,
    slots: u32,
    scale: f32,
    eps: f32,
    token_base: u32,
    seg_tokens: u32,
    qkv_offset: u32,
    qkv_stride: u32,
    gate_offset: u32,
    gate_stride: u32,
    h_offset: u32,
    h_stride: u32,
    c_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> gates: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;
@group(0) @binding(6) var<storage, read_write> n: array<f32>;
@group(0) @binding(7) var<storage, read_write> m: array<f32>;

// log(sigmoid(x)) without overflow for either sign.
fn log_sigmoid(x: f32) -> f32 {
    return min(x, 0.0) - log(1.0 + exp(-abs(x)));
}
