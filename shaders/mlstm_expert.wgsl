// mLSTM cell of an expert: every row (token) is its own length-1 sequence with zero state,
// in the package's parallel form (MODEL.md section 5):
//   h~ = (q . kk) v / (max(|q . kk|, exp(-i)) + eps),  kk = k * scale (scale = 1 / sqrt(DH))
// per head; the forget gate has no effect.
//
// qkv:   [q | k | v], element (row, c) at qkv_offset + row * qkv_stride + c; head hd of q at
//        columns hd * DH .., of k at Di + hd * DH .., of v at 2 Di + hd * DH ...
// gates: i of head hd at gate_offset + row * gate_stride + hd.
// h:     (row, hd * DH + j) at h_offset + row * h_stride + hd * DH + j.
//
// One invocation per (row, head), streaming the head's q, k and v: each workgroup of 64
// covers `per` rows (pair = wid.x * 64 + lid: row wid.y * per + pair / NH, head pair % NH).
// Grid (ceil(per * NH / 64), ceil(rows / per)); inside a dynamic-rows section the GPU sets y.

struct Params {
    heads: u32,
    head_dim: u32,
    rows: u32,
    per: u32,
    scale: f32,
    eps: f32,
    qkv_offset: u32,
    qkv_stride: u32,
    gate_offset: u32,
    gate_stride: u32,
    h_offset: u32,
    h_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> gates: array<f32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;
// The same buffers as qkv and h, four elements at a time (V4: the head dim, offsets and
// strides multiples of 4): on CPU adapters, where every storage access is a loop over the
// SIMD lanes, a quarter of the accesses. The products are added in the same order.
@group(0) @binding(4) var<storage, read> qkv4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> h4: array<vec4<f32>>;

override V4: bool = false;

@compute @workgroup_size(64)
fn expert(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let pair = wid.x * 64u + lid;
    let row = wid.y * p.per + pair / p.heads;
    let hd = pair % p.heads;
    if pair >= p.per * p.heads || row >= p.rows {
        return;
    }
    let dh = p.head_dim;
    let di = p.heads * dh;
    let qb = p.qkv_offset + row * p.qkv_stride + hd * dh;
    var qk = 0.0;
    if V4 {
        for (var i = 0u; i < dh; i += 4u) {
            let q = qkv4[(qb + i) / 4u];
            let k = qkv4[(qb + di + i) / 4u];
            qk += q.x * k.x;
            qk += q.y * k.y;
            qk += q.z * k.z;
            qk += q.w * k.w;
        }
    } else {
        for (var i = 0u; i < dh; i++) {
            qk += qkv[qb + i] * qkv[qb + di + i];
        }
    }
    qk *= p.scale;
    let ip = gates[p.gate_offset + row * p.gate_stride + hd];
    let coef = qk / (max(abs(qk), exp(-ip)) + p.eps);
    let hb = p.h_offset + row * p.h_stride + hd * dh;
    if V4 {
        for (var j = 0u; j < dh; j += 4u) {
            h4[(hb + j) / 4u] = coef * qkv4[(qb + 2u * di + j) / 4u];
        }
        return;
    }
    for (var j = 0u; j < dh; j++) {
        h[hb + j] = coef * qkv[qb + 2u * di + j];
    }
}
