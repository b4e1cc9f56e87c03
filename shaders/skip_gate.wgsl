// The mLSTM block's output gate with its learnable skip (MODEL.md section 5):
//   y = (h + w * xc) * silu(z)
// and, in norm_skip_gate, the same with h first normalised in groups of `group` columns
// (the cell output's MultiHeadLayerNorm: mean and biased variance per group, then
// * gamma, gamma = norm_w or 1 + norm_w with weight_offset): one workgroup of WG per
// (row, group), grid (cols / group, rows split over y and z), whose sums meet by group_sum
// (shaders/common/group_sum_*.wgsl: workgroup memory, or one subgroupAdd in the registry's
// `skip_gate_subgroup`).
// over (rows, cols) views of f32 buffers: element (r, c) of view v at v_offset + r * v_stride
// + c; w is (cols). Grid: (ceil(cols / 64), rows split over y and z: row = wid.y + wid.z *
// 65535).

struct Params {
    rows: u32,
    cols: u32,
    h_offset: u32,
    h_stride: u32,
    xc_offset: u32,
    xc_stride: u32,
    z_offset: u32,
    z_stride: u32,
    y_offset: u32,
    y_stride: u32,
    group: u32,
    eps: f32,
    has_weight: u32,
    weight_offset: u32,
    center: u32,
}

// Invocations per workgroup of norm_skip_gate: one SIMD group on CPU adapters, 64 on GPUs.
override WG: u32 = 64u;

// Storage, not uniform, and copied to `p` once per invocation: see shaders/common/matmul.wgsl
// (lavapipe recompiles shaders whose loop bounds are uniforms, and loads storage lane by lane).
@group(0) @binding(0) var<storage, read> params: Params;
var<private> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> xc: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> norm_w: array<f32>;
// The same buffers as h, xc, z, w, y and norm_w, four elements at a time (Q4).
@group(0) @binding(7) var<storage, read> h4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> xc4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> z4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> norm_w4: array<vec4<f32>>;

// norm_skip_gate's rows and groups start on multiples of 4 (offsets, strides and group), so
// each quad of a group moves as one vec4 (on CPU adapters a quarter of the storage accesses);
// otherwise element by element.
override Q4: bool = false;

// x * sigmoid(x) without overflow for either sign.
fn silu(x: f32) -> f32 {
    let e = exp(-abs(x));
    return x * select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

@compute @workgroup_size(64)
fn skip_gate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let c = gid.x;
    let r = wid.y + wid.z * 65535u;
    if c >= p.cols || r >= p.rows {
        return;
    }
    let hv = h[p.h_offset + r * p.h_stride + c];
    y[p.y_offset + r * p.y_stride + c] = gate(r, c, hv);
}

// The skip and gate of element (r, c) whose (normalised) h is hv.
fn gate(r: u32, c: u32, hv: f32) -> f32 {
    let xv = xc[p.xc_offset + r * p.xc_stride + c];
    let zv = z[p.z_offset + r * p.z_stride + c];
    return (hv + w[c] * xv) * silu(zv);
}

// Elements i .. i + 3 of h, xc, z (row elements) or w, norm_w (columns), of which the first
// `len` exist (zeros after); all four exist when Q4.
fn h_quad(i: u32, len: u32) -> vec4<f32> {
    if Q4 {
        return h4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = h[i + j];
    }
    return v;
}
fn xc_quad(i: u32, len: u32) -> vec4<f32> {
    if Q4 {
        return xc4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = xc[i + j];
    }
    return v;
}
fn z_quad(i: u32, len: u32) -> vec4<f32> {
    if Q4 {
        return z4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = z[i + j];
    }
    return v;
}
fn w_quad(i: u32, len: u32) -> vec4<f32> {
    if Q4 {
        return w4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = w[i + j];
    }
    return v;
}
fn norm_w_quad(i: u32, len: u32) -> vec4<f32> {
    if Q4 {
        return norm_w4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = norm_w[i + j];
    }
    return v;
}
fn store_y(i: u32, v: vec4<f32>, len: u32) {
    if Q4 {
        y4[i / 4u] = v;
        return;
    }
    for (var j = 0u; j < min(len, 4u); j++) {
        y[i + j] = v[j];
    }
}

fn silu4(x: vec4<f32>) -> vec4<f32> {
    let e = exp(-abs(x));
    return x * select(e / (1.0 + e), 1.0 / (1.0 + e), x >= vec4<f32>(0.0));
}

// Each invocation takes the quads at 4 lid, 4 (lid + WG), ... of its (row, group).
@compute @workgroup_size(WG)
fn norm_skip_gate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let r = wid.y + wid.z * 65535u;
    // Uniform per workgroup, so returning here keeps the barriers uniform.
    if r >= p.rows {
        return;
    }
    let c0 = wid.x * p.group;
    let hb = p.h_offset + r * p.h_stride + c0;
    let n = f32(p.group);
    var mean = 0.0;
    if p.center != 0u {
        var sum = 0.0;
        for (var e = 4u * lid; e < p.group; e += 4u * WG) {
            sum += dot(h_quad(hb + e, p.group - e), vec4<f32>(1.0));
        }
        mean = group_sum(lid, WG, sum) / n;
    }
    var sq = 0.0;
    for (var e = 4u * lid; e < p.group; e += 4u * WG) {
        let len = p.group - e;
        let live = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        let d = select(vec4<f32>(0.0), h_quad(hb + e, len) - mean, live);
        sq += dot(d, d);
    }
    let inv = inverseSqrt(group_sum(lid, WG, sq) / n + p.eps);
    for (var e = 4u * lid; e < p.group; e += 4u * WG) {
        let len = p.group - e;
        let c = c0 + e;
        var g = vec4<f32>(1.0);
        if p.has_weight != 0u {
            g = norm_w_quad(c, len) + select(0.0, 1.0, p.weight_offset != 0u);
        }
        let hv = (h_quad(hb + e, len) - mean) * inv * g;
        let xv = xc_quad(p.xc_offset + r * p.xc_stride + c, len);
        let zv = z_quad(p.z_offset + r * p.z_stride + c, len);
        store_y(p.y_offset + r * p.y_stride + c, (hv + w_quad(c, len) * xv) * silu4(zv), len);
    }
}
