// Layer / group normalisation over 2-D strided views of f32 buffers.
//
// Each row of `cols` elements is split into groups of `group` consecutive elements
// (group == cols: LayerNorm; group == head dim: MultiHeadLayerNorm, i.e. group norm with
// one group per head). Each group is normalised with its own mean and biased variance:
//   y[c] = (x[c] - mean) / sqrt(var + eps) * gamma[c] + beta[c]
// (RMSNorm when center == 0: mean taken as 0, so var is the mean square)
// (plus beta * y[c] when beta != 0, to fuse a residual add), where gamma = 1 + weight (the xlstm package stores offsets) when weight_offset != 0, else
// weight; gamma = 1 without weight; beta = bias or 0.
//
// x element (r, c) at x_offset + r * x_stride + c; y likewise. The side view, element
// (r, c) at side_offset + r * side_stride + c, by `side`: 0 unused; 1 (copy) receives x (a
// residual stream's start, e.g. an expert's output = input + ..., without a dispatch of
// its own); 2 (gate) holds gates o, and y[c] = norm(x)[c] * sigmoid(o[c]) (before beta * y
// is added): xLSTM-Large's output gate fused into its multi-head norm.
//
//   norm_coop:  one workgroup of 256 per (row, group), reducing in workgroup memory (GPUs;
//               64 made a 4096-wide row a chain of 64 dependent loads per pass, 39 us on
//               an H200).
//               grid (groups, rows split over y/z).
//   norm_lanes: one workgroup of 8 (one SIMD group on llvmpipe) per (row, group); each
//               invocation reads every eighth quad of the group (as one vec4 when X4) and
//               the eight partial sums meet by group_sum (shaders/common/group_sum_*.wgsl:
//               workgroup memory, or one subgroupAdd in the registry's
//               `layer_norm_subgroup`): the fast pattern on CPU adapters, where every load
//               costs a loop over the SIMD lanes.
//               grid (groups, rows split over y/z).
//
// X4 (override): x_offset, x_stride and group are multiples of 4, so x is read as vec4
// through x4 (the same buffer). Y4 (override, norm_lanes): so are y's and the side view's
// offsets and strides, and the outputs, weights, biases and side elements of a quad move as
// vec4 through y4, weight4, bias4 and side4 (on CPU adapters a quarter of the storage
// accesses).

struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    eps: f32,
    has_weight: u32,
    weight_offset: u32,
    has_bias: u32,
    beta: f32,
    center: u32,
    side: u32,
    side_offset: u32,
    side_stride: u32,
}

const SIDE_COPY: u32 = 1u;
const SIDE_GATE: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> side: array<f32>;
@group(0) @binding(7) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> side4: array<vec4<f32>>;

override X4: bool = false;
override Y4: bool = false;

// emit for the four outputs at i (a multiple of 4) of columns c .. c + 3, with side
// elements at s (Y4).
fn emit4(i: u32, c: u32, s: u32, normed: vec4<f32>) {
    var g = vec4<f32>(1.0);
    if p.has_weight != 0u {
        g = weight4[c / 4u];
        if p.weight_offset != 0u {
            g += 1.0;
        }
    }
    var v = normed * g;
    if p.has_bias != 0u {
        v += bias4[c / 4u];
    }
    if p.side == SIDE_GATE {
        let o = side4[s / 4u];
        v *= vec4<f32>(sigmoid(o.x), sigmoid(o.y), sigmoid(o.z), sigmoid(o.w));
    }
    if p.beta != 0.0 {
        v += p.beta * y4[i / 4u];
    }
    y4[i / 4u] = v;
}

// Output i of column c, with its side element at s.
fn emit(i: u32, c: u32, s: u32, normed: f32) {
    let gb = scale_shift(c);
    var v = normed * gb.x + gb.y;
    if p.side == SIDE_GATE {
        v *= sigmoid(side[s]);
    }
    if p.beta != 0.0 {
        v += p.beta * y[i];
    }
    y[i] = v;
}

fn scale_shift(c: u32) -> vec2<f32> {
    var g = 1.0;
    if p.has_weight != 0u {
        g = weight[c];
        if p.weight_offset != 0u {
            g += 1.0;
        }
    }
    var b = 0.0;
    if p.has_bias != 0u {
        b = bias[c];
    }
    return vec2<f32>(g, b);
}

// Invocations per workgroup of norm_coop.
const COOP: u32 = 256u;

var<workgroup> red: array<f32, COOP>;

// Sum of `v` over the workgroup; every invocation gets the result.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = COOP / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(COOP)
fn norm_coop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y + wid.z * 65535u;
    // Uniform per workgroup, so returning here keeps barriers uniform.
    if row >= p.rows {
        return;
    }
    let c0 = wid.x * p.group;
    let xb = p.x_offset + row * p.x_stride + c0;
    let yb = p.y_offset + row * p.y_stride + c0;
    let n = f32(p.group);
    var mean = 0.0;
    if p.center != 0u {
        var sum = 0.0;
        for (var c = lid; c < p.group; c += COOP) {
            sum += x[xb + c];
        }
        mean = workgroup_sum(lid, sum) / n;
    }
    var sq = 0.0;
    for (var c = lid; c < p.group; c += COOP) {
        let d = x[xb + c] - mean;
        sq += d * d;
    }
    let inv = inverseSqrt(workgroup_sum(lid, sq) / n + p.eps);
    let sb = p.side_offset + row * p.side_stride + c0;
    for (var c = lid; c < p.group; c += COOP) {
        let v = x[xb + c];
        emit(yb + c, c0 + c, sb + c, (v - mean) * inv);
        if p.side == SIDE_COPY {
            side[sb + c] = v;
        }
    }
}

// x[b .. b + 4], zero past `len` elements (b is 16-byte aligned when X4).
fn x_quad(b: u32, len: u32) -> vec4<f32> {
    if X4 {
        return x4[b / 4u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < min(len, 4u); j++) {
        v[j] = x[b + j];
    }
    return v;
}

@compute @workgroup_size(8)
fn norm_lanes(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y + wid.z * 65535u;
    // Uniform per workgroup, so returning here keeps barriers uniform.
    if row >= p.rows {
        return;
    }
    let c0 = wid.x * p.group;
    let xb = p.x_offset + row * p.x_stride + c0;
    let yb = p.y_offset + row * p.y_stride + c0;
    let n = f32(p.group);
    var mean = 0.0;
    if p.center != 0u {
        var sum = 0.0;
        for (var e = 4u * lane; e < p.group; e += 32u) {
            sum += dot(x_quad(xb + e, p.group - e), vec4<f32>(1.0));
        }
        mean = group_sum(lane, 8u, sum) / n;
    }
    var sq = 0.0;
    for (var e = 4u * lane; e < p.group; e += 32u) {
        let len = p.group - e;
        let live = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len);
        let d = select(vec4<f32>(0.0), x_quad(xb + e, len) - mean, live);
        sq += dot(d, d);
    }
    let inv = inverseSqrt(group_sum(lane, 8u, sq) / n + p.eps);
    let sb = p.side_offset + row * p.side_stride + c0;
    for (var e = 4u * lane; e < p.group; e += 32u) {
        let len = p.group - e;
        let xq = x_quad(xb + e, len);
        let v = (xq - mean) * inv;
        if Y4 {
            emit4(yb + e, c0 + e, sb + e, v);
            if p.side == SIDE_COPY {
                side4[(sb + e) / 4u] = xq;
            }
            continue;
        }
        for (var j = 0u; j < min(len, 4u); j++) {
            emit(yb + e + j, c0 + e + j, sb + e + j, v[j]);
            if p.side == SIDE_COPY {
                side[sb + e + j] = xq[j];
            }
        }
    }
}
