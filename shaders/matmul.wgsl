// y[t, o] = beta * y[t, o] + bias[o] + sum_k x[t, head(o) * K + k] * W[o, k]
//
// W: (M, K) rows padded to w_stride (a multiple of 8) elements, f32 or f16 pairs packed in
//    u32; bound as array<vec4<u32>> and reinterpreted per the F16 override.
// x: element x[t, c] at x[x_offset + t * x_stride + c] (f32).
// head(o) = o / head_rows when head_rows > 0 (block-diagonal "headwise" weights: each block
//    of head_rows output rows reads its own K inputs), else 0 (a dense matrix).
// y: element y[t, o] at y[y_offset + t * y_stride + row_base + o] (f32).
// The dispatch covers one row chunk of W: rows row_base .. row_base + M of the full matrix.
//
// Entry points:
//   gemv:  one invocation per (row, token), streaming its row of W; grid (ceil(M / 64), T).
//   gemm4: one invocation per (row, 4 tokens); grid (ceil(M / 64), ceil(T / 4)).
//          Both give each invocation one contiguous stream: the fast pattern on CPU adapters.
//   coop4: one workgroup per (row, 4 tokens); its 64 invocations read the row together
//          (coalesced, the fast pattern on GPUs) and reduce in workgroup memory;
//          grid (groups_x, ceil(M / groups_x), ceil(T / 4)). matmul_subgroup.wgsl has the
//          same kernel reducing with subgroup operations.

struct Params {
    k: u32,
    m: u32,
    t: u32,
    w_stride: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    row_base: u32,
    beta: f32,
    has_bias: u32,
    groups_x: u32,
    head_rows: u32,
}

override F16: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Eight consecutive weights of row `row` starting at element `k` (k a multiple of 8).
fn load_w8(row: u32, k: u32) -> array<vec4<f32>, 2> {
    if F16 {
        let q = w[(row * p.w_stride + k) / 8u];
        return array<vec4<f32>, 2>(
            vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
            vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
        );
    }
    let i = (row * p.w_stride + k) / 4u;
    return array<vec4<f32>, 2>(bitcast<vec4<f32>>(w[i]), bitcast<vec4<f32>>(w[i + 1u]));
}

// First input column read by chunk row `row`.
fn x_col(row: u32) -> u32 {
    if p.head_rows == 0u {
        return 0u;
    }
    return ((p.row_base + row) / p.head_rows) * p.k;
}

// Eight consecutive inputs of token t starting at column c + k; zero past K.
fn load_x8(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    let base = p.x_offset + t * p.x_stride + c + k;
    if k + 8u <= p.k {
        return array<vec4<f32>, 2>(
            vec4<f32>(x[base], x[base + 1u], x[base + 2u], x[base + 3u]),
            vec4<f32>(x[base + 4u], x[base + 5u], x[base + 6u], x[base + 7u]),
        );
    }
    var v = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < 8u; j++) {
        if k + j < p.k {
            v[j] = x[base + j];
        }
    }
    return array<vec4<f32>, 2>(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}

fn dot8(a: array<vec4<f32>, 2>, b: array<vec4<f32>, 2>) -> f32 {
    return dot(a[0], b[0]) + dot(a[1], b[1]);
}

fn store(t: u32, row: u32, value: f32) {
    let i = p.y_offset + t * p.y_stride + p.row_base + row;
    var v = value;
    if p.has_bias != 0u {
        v += bias[p.row_base + row];
    }
    if p.beta != 0.0 {
        v += p.beta * y[i];
    }
    y[i] = v;
}

@compute @workgroup_size(64)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = gid.x;
    let t = wid.y;
    if row >= p.m || t >= p.t {
        return;
    }
    let c = x_col(row);
    var acc = 0.0;
    for (var k = 0u; k < p.k; k += 8u) {
        acc += dot8(load_w8(row, k), load_x8(t, c, k));
    }
    store(t, row, acc);
}

@compute @workgroup_size(64)
fn gemm4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = gid.x;
    let t0 = wid.y * 4u;
    if row >= p.m || t0 >= p.t {
        return;
    }
    // Tokens past T re-read the last token's row; their results are never stored.
    let t1 = min(t0 + 1u, p.t - 1u);
    let t2 = min(t0 + 2u, p.t - 1u);
    let t3 = min(t0 + 3u, p.t - 1u);
    let c = x_col(row);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    for (var k = 0u; k < p.k; k += 8u) {
        let wv = load_w8(row, k);
        a0 += dot8(wv, load_x8(t0, c, k));
        a1 += dot8(wv, load_x8(t1, c, k));
        a2 += dot8(wv, load_x8(t2, c, k));
        a3 += dot8(wv, load_x8(t3, c, k));
    }
    store(t0, row, a0);
    if t0 + 1u < p.t {
        store(t0 + 1u, row, a1);
    }
    if t0 + 2u < p.t {
        store(t0 + 2u, row, a2);
    }
    if t0 + 3u < p.t {
        store(t0 + 3u, row, a3);
    }
}

var<workgroup> partial: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn coop4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x + wid.y * p.groups_x;
    let t0 = wid.z * 4u;
    // No early return before the barriers: out-of-range workgroups compute zeros.
    let live = row < p.m;
    let r = min(row, p.m - 1u);
    let t1 = min(t0 + 1u, p.t - 1u);
    let t2 = min(t0 + 2u, p.t - 1u);
    let t3 = min(t0 + 3u, p.t - 1u);
    let c = x_col(r);
    var acc = vec4<f32>(0.0);
    if live {
        for (var k = lid * 8u; k < p.k; k += 512u) {
            let wv = load_w8(r, k);
            acc += vec4<f32>(
                dot8(wv, load_x8(t0, c, k)),
                dot8(wv, load_x8(t1, c, k)),
                dot8(wv, load_x8(t2, c, k)),
                dot8(wv, load_x8(t3, c, k)),
            );
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u && live {
        let total = partial[0];
        for (var j = 0u; j < 4u; j++) {
            if t0 + j < p.t {
                store(t0 + j, r, total[j]);
            }
        }
    }
}
