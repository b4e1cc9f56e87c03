// y[t, o] = beta * y[t, o] + bias[o] + sum_k x[t, head(o) * K + k] * W[o, k]
//
// W: (M, K) rows padded to w_stride (a multiple of 8) elements, f32 or f16 pairs packed in
//    u32; bound as array<vec4<u32>> and reinterpreted per the F16 override.
// x: element x[t, c] at x[x_offset + t * x_stride + c] (f32).
// head(o) = o / head_rows when the HEADS override is set (block-diagonal "headwise"
//    weights: each block of head_rows output rows reads its own K inputs), else 0 (a dense
//    matrix). An override, so that dense kernels index x uniformly across invocations.
// y: element y[t, o] at y[y_offset + t * y_stride + row_base + o] (f32).
// The dispatch covers one row chunk of W: rows row_base .. row_base + M of the full matrix.
//
// Entry points:
//   gemv:  one invocation per (4 rows, token), streaming its 4 rows of W: the fast pattern
//          on CPU adapters; grid (ceil(M / (4 WG)), T).
//   gemm4: one invocation per (4 rows, 4 tokens); grid (ceil(M / (4 WG)), ceil(T / 4)).
//   coop4: one workgroup per (row, 4 tokens); its 64 invocations read the row together
//          (coalesced, the fast pattern on GPUs) and reduce in workgroup memory;
//          grid (groups_x, ceil(M / groups_x), ceil(T / 4)).

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
override HEADS: bool = false;
// Invocations per workgroup of gemv and gemm4: 8 (one SIMD subgroup) serves llvmpipe best.
override WG: u32 = 64u;
// x rows start on 16-byte boundaries (x_offset and x_stride multiples of 4): x is read as
// vec4 through x4 (the same buffer), two loads per block of 8 instead of eight.
override X4: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;

// Eight consecutive weights of row `row` starting at element `k` (k a multiple of 8). Rows
// are zero-padded to w_stride, so a block may run past K.
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
    if HEADS {
        return ((p.row_base + row) / p.head_rows) * p.k;
    }
    return 0u;
}

// Eight consecutive inputs of token t starting at column c + k, with k + 8 <= K.
fn load_x8(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    let b = p.x_offset + t * p.x_stride + c + k;
    if X4 {
        return array<vec4<f32>, 2>(x4[b / 4u], x4[b / 4u + 1u]);
    }
    return array<vec4<f32>, 2>(
        vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]),
        vec4<f32>(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]),
    );
}

// The same for the last, partial block: zero past K.
fn load_x8_tail(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    var v = array<f32, 8>();
    for (var j = 0u; k + j < p.k; j++) {
        v[j] = x[p.x_offset + t * p.x_stride + c + k + j];
    }
    return array<vec4<f32>, 2>(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}

// Where the unguarded blocks end.
fn k_full() -> u32 {
    return p.k - p.k % 8u;
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

// Rows 4i .. 4i + 3 of the chunk, clamped to the last row (results of clamped rows are
// never stored).
fn rows4(i: u32) -> vec4<u32> {
    let r = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);
    return min(r, vec4<u32>(p.m - 1u));
}

fn store_rows(t: u32, r: vec4<u32>, acc: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if r[0] + j < p.m {
            store(t, r[0] + j, acc[j]);
        }
    }
}

// Inputs of token t for row `row`'s block at k (the tail block zero-filled past K).
fn x8(t: u32, row: u32, k: u32, tail: bool) -> array<vec4<f32>, 2> {
    if tail {
        return load_x8_tail(t, x_col(row), k);
    }
    return load_x8(t, x_col(row), k);
}

// acc[j] += W[r[j], k..k+8] . x[t, ...]; dense rows share one load of x.
fn fma4(acc: ptr<function, vec4<f32>>, r: vec4<u32>, t: u32, k: u32, tail: bool) {
    if HEADS {
        *acc += vec4<f32>(
            dot8(load_w8(r.x, k), x8(t, r.x, k, tail)),
            dot8(load_w8(r.y, k), x8(t, r.y, k, tail)),
            dot8(load_w8(r.z, k), x8(t, r.z, k, tail)),
            dot8(load_w8(r.w, k), x8(t, r.w, k, tail)),
        );
    } else {
        let xv = x8(t, r.x, k, tail);
        *acc += vec4<f32>(
            dot8(load_w8(r.x, k), xv),
            dot8(load_w8(r.y, k), xv),
            dot8(load_w8(r.z, k), xv),
            dot8(load_w8(r.w, k), xv),
        );
    }
}

@compute @workgroup_size(WG)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if gid.x * 4u >= p.m || t >= p.t {
        return;
    }
    let r = rows4(gid.x);
    var acc = vec4<f32>(0.0);
    let kf = k_full();
    for (var k = 0u; k < kf; k += 8u) {
        fma4(&acc, r, t, k, false);
    }
    if kf < p.k {
        fma4(&acc, r, t, kf, true);
    }
    store_rows(t, r, acc);
}

@compute @workgroup_size(WG)
fn gemm4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t0 = wid.y * 4u;
    if gid.x * 4u >= p.m || t0 >= p.t {
        return;
    }
    let r = rows4(gid.x);
    // Tokens past T re-read the last token; their results are never stored.
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.t - 1u));
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let kf = k_full();
    for (var k = 0u; k < kf; k += 8u) {
        fma4(&a0, r, t.x, k, false);
        fma4(&a1, r, t.y, k, false);
        fma4(&a2, r, t.z, k, false);
        fma4(&a3, r, t.w, k, false);
    }
    if kf < p.k {
        fma4(&a0, r, t.x, kf, true);
        fma4(&a1, r, t.y, kf, true);
        fma4(&a2, r, t.z, kf, true);
        fma4(&a3, r, t.w, kf, true);
    }
    store_rows(t0, r, a0);
    if t0 + 1u < p.t {
        store_rows(t0 + 1u, r, a1);
    }
    if t0 + 2u < p.t {
        store_rows(t0 + 2u, r, a2);
    }
    if t0 + 3u < p.t {
        store_rows(t0 + 3u, r, a3);
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
        let kf = k_full();
        for (var k = lid * 8u; k < p.k; k += 512u) {
            let wv = load_w8(r, k);
            if k < kf {
                acc += vec4<f32>(
                    dot8(wv, load_x8(t0, c, k)),
                    dot8(wv, load_x8(t1, c, k)),
                    dot8(wv, load_x8(t2, c, k)),
                    dot8(wv, load_x8(t3, c, k)),
                );
            } else {
                acc += vec4<f32>(
                    dot8(wv, load_x8_tail(t0, c, k)),
                    dot8(wv, load_x8_tail(t1, c, k)),
                    dot8(wv, load_x8_tail(t2, c, k)),
                    dot8(wv, load_x8_tail(t3, c, k)),
                );
            }
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
