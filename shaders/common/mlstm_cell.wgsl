// Shared by the mLSTM cell kernels (mlstm_step, mlstm_step_wide, mlstm_step_simd,
// mlstm_step_tiles, mlstm_chunk, mlstm_chunk_wide): the registry appends this file (after
// common/soft_cap.wgsl) to each of them. Their parameters (src/ops/mlstm_cell/mod.rs
// `Params`), the bindings they all declare alike (each declares binding 5, the matrix
// memory C, in its own layout, and any binding 8), where each input lives, and the gates.
//
// Dimensions: NH heads; DK = qk_dim (q, k, n and the rows of C), DV = v_dim (v, h and the
// columns of C). The NeurIPS blocks have DK = DV; xLSTM-Large has DK = DV / 2.
// qkv:   [q | k | v] of each row (row = b * N + t): q of head hd at columns hd * DK .., k at
//        NH * DK + hd * DK .., v at 2 NH * DK + hd * DV ..; element (row, c) at
//        qkv_offset + row * qkv_stride + c.
// gates: [i | f] pre-activations (NH columns each), element (row, c) at
//        gate_offset + row * gate_stride + c; soft-capped by gate_cap when it is > 0.
// h:     (row, hd * DV + j) at h_offset + row * h_stride + hd * DV + j.
// c:     (slots, NH, DK, DV), C[i][j] at ((slot * NH + hd) * DK + i) * c_stride + j (rows
//        padded to c_stride >= DV).
// n:     (slots, NH, DK);  m: (slots, NH).
// slots: u32 (B), the state slot of each sequence; slots >= p.slots are skipped
//        (state_index).

struct Params {
    heads: u32,
    v_dim: u32,
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
    qk_dim: u32,
    gate_cap: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> gates: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;
@group(0) @binding(6) var<storage, read_write> n: array<f32>;
@group(0) @binding(7) var<storage, read_write> m: array<f32>;

// What state_index returns for a sequence past the batch or in a skipped slot.
const SKIPPED: u32 = 0xffffffffu;

// The state index slot * NH + hd of head hd of sequence b (its slot from `slots`), or
// SKIPPED. Uniform per workgroup in every kernel (b and hd come from the workgroup id), so
// returning on SKIPPED keeps the barriers uniform.
fn state_index(b: u32, hd: u32) -> u32 {
    if b >= p.seqs {
        return SKIPPED;
    }
    let slot = slots[b];
    if slot >= p.slots {
        return SKIPPED;
    }
    return slot * p.heads + hd;
}

// log(sigmoid(x)) without overflow for either sign.
fn log_sigmoid(x: f32) -> f32 {
    return min(x, 0.0) - log(1.0 + exp(-abs(x)));
}

// Index of q[row, hd * DK + i] in qkv.
fn q_at(row: u32, hd: u32, i: u32) -> u32 {
    return p.qkv_offset + row * p.qkv_stride + hd * p.qk_dim + i;
}

// Index of k[row, hd * DK + i] in qkv.
fn k_at(row: u32, hd: u32, i: u32) -> u32 {
    return q_at(row, hd, i) + p.heads * p.qk_dim;
}

// Index of v[row, hd * DV + j] in qkv.
fn v_at(row: u32, hd: u32, j: u32) -> u32 {
    return p.qkv_offset + row * p.qkv_stride + 2u * p.heads * p.qk_dim + hd * p.v_dim + j;
}

// Index of h[row, hd * DV + j].
fn h_at(row: u32, hd: u32, j: u32) -> u32 {
    return p.h_offset + row * p.h_stride + hd * p.v_dim + j;
}

fn capped(x: f32) -> f32 {
    if p.gate_cap > 0.0 {
        return soft_cap(x, p.gate_cap);
    }
    return x;
}

// The input gate pre-activation i of head hd at `row`.
fn gate_i(row: u32, hd: u32) -> f32 {
    return capped(gates[p.gate_offset + row * p.gate_stride + hd]);
}

// log(sigmoid(f)) of head hd at `row`.
fn gate_log_f(row: u32, hd: u32) -> f32 {
    return log_sigmoid(capped(gates[p.gate_offset + row * p.gate_stride + p.heads + hd]));
}

// One recurrent step's stabiliser m' = max(logsig(f) + m, i) and stabilised gates
// f' = exp(logsig(f) + m - m'), i' = exp(i - m').
struct GateStep {
    m_new: f32,
    fa: f32,
    ia: f32,
}

// The step of head hd at `row` from the previous stabiliser `mv`.
fn gate_step(row: u32, hd: u32, mv: f32) -> GateStep {
    let ip = gate_i(row, hd);
    let lf = gate_log_f(row, hd);
    let m_new = max(lf + mv, ip);
    return GateStep(m_new, exp(lf + mv - m_new), exp(ip - m_new));
}
