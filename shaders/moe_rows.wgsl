// Moves token rows between a step's activations and the per-expert regions of a MoE layer
// (see route.wgsl: token t's j-th choice lives in region row slots[t * K + j]).
// Rows (tokens) first .. first + tokens of one dispatch chunk; grid (ceil(cols / 64),
// tokens) with tokens split over y and z (row = wid.y + wid.z * 65535).
//
//   gather:  dst[slot(t, j)] = src[t] for every choice j: each token's row is copied into
//            the regions of the experts it was routed to;
//   combine: dst[t] = sum_j weights[t, j] * src[slot(t, j)], j ascending: the weighted sum
//            of the expert outputs (no residual);
//   relay:   dst[slot(t, j)] = src[src_slots[t, j]] for every choice j: row moves between two
//            region layouts (a latent layer's group rows into its experts' regions).
// src / dst rows are at *_offset + row * *_stride (f32); regions have stride = cols.
// With VEC4 (cols, the strides and the offsets multiples of 4) each invocation moves four
// columns through the vec4 bindings: on CPU adapters, where every storage access is a loop
// over the SIMD lanes, a quarter of the accesses (and of the slot loads). Grid x is then
// ceil(cols / 256).

struct Params {
    tokens: u32,
    cols: u32,
    top_k: u32,
    first: u32,
    src_stride: u32,
    src_offset: u32,
    dst_stride: u32,
    dst_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> src_slots: array<u32>;
// The same buffers as src and dst, four columns at a time (VEC4).
@group(0) @binding(6) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dst4: array<vec4<f32>>;

override VEC4: bool = false;

// Columns c .. c + 3 of src at element index i (VEC4), or column c alone (in .x).
fn load_src(i: u32) -> vec4<f32> {
    if VEC4 {
        return src4[i / 4u];
    }
    return vec4<f32>(src[i], 0.0, 0.0, 0.0);
}

fn store_dst(i: u32, v: vec4<f32>) {
    if VEC4 {
        dst4[i / 4u] = v;
    } else {
        dst[i] = v.x;
    }
}

// (token, column) of this invocation, or token == first + tokens when out of range.
fn position(gid: vec3<u32>, wid: vec3<u32>) -> vec2<u32> {
    let row = wid.y + wid.z * 65535u;
    let c = select(gid.x, 4u * gid.x, VEC4);
    if c >= p.cols || row >= p.tokens {
        return vec2<u32>(p.first + p.tokens, 0u);
    }
    return vec2<u32>(p.first + row, c);
}

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tc = position(gid, wid);
    if tc.x >= p.first + p.tokens {
        return;
    }
    let v = load_src(p.src_offset + tc.x * p.src_stride + tc.y);
    for (var j = 0u; j < p.top_k; j++) {
        let slot = slots[tc.x * p.top_k + j];
        store_dst(p.dst_offset + slot * p.dst_stride + tc.y, v);
    }
}

@compute @workgroup_size(64)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tc = position(gid, wid);
    if tc.x >= p.first + p.tokens {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < p.top_k; j++) {
        let i = tc.x * p.top_k + j;
        acc += weights[i] * load_src(p.src_offset + slots[i] * p.src_stride + tc.y);
    }
    store_dst(p.dst_offset + tc.x * p.dst_stride + tc.y, acc);
}

@compute @workgroup_size(64)
fn relay(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tc = position(gid, wid);
    if tc.x >= p.first + p.tokens {
        return;
    }
    for (var j = 0u; j < p.top_k; j++) {
        let i = tc.x * p.top_k + j;
        let v = load_src(p.src_offset + src_slots[i] * p.src_stride + tc.y);
        store_dst(p.dst_offset + slots[i] * p.dst_stride + tc.y, v);
    }
}
