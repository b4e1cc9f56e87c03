// Declarations of the matmul kernels (shaders/matmul.wgsl, shaders/gemv_subgroup.wgsl):
// their Params, overrides, bindings and the weight, input and output helpers. Appended to
// each of those files by the shader registry, after common/weights.wgsl (WDT, unpack_pair)
// and common/soft_cap.wgsl, and followed by the input loads (common/inputs.wgsl, or
// common/inputs_glu.wgsl with common/activation.wgsl for gated inputs). Layouts:
// shaders/matmul.wgsl.

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
    // c of a soft cap c * tanh(v / c) on each product (before beta * y is added); 0 = none.
    cap: f32,
    // Quantised W (WDT 3, 4): scale words per row in ws.
    s_stride: u32,
    // HEADS: rows per stacked projection, and the first input column of each projection.
    proj_rows: u32,
    proj_cols: vec4<u32>,
    // HEADS: the weight row of output row 0 (a stacked weight's later projections).
    w_row0: u32,
    // Gated inputs (common/inputs_glu.wgsl): the column of x where the gates start.
    glu_cols: u32,
}

override HEADS: bool = false;
// HEADS: the four rows of a row group may read different input columns (heads whose rows
// are not a multiple of 4); otherwise they share one load of their inputs.
override ROW_COLS: bool = false;
// Invocations per workgroup of gemv and gemm4: 8 (one SIMD subgroup) serves llvmpipe best.
override WG: u32 = 64u;
// x rows start on 16-byte boundaries (x_offset and x_stride multiples of 4): x is read as
// vec4 through x4 (the same buffer), two loads per block of 8 instead of eight.
override X4: bool = false;
// The parameters live in a storage buffer, not a uniform one: lavapipe (Mesa 22.3) inlines
// uniform values that bound loops into a fresh compile of the shader at every dispatch whose
// uniforms change (its "inline uniforms"), which made a 256-row GEMV take 10 ms instead of
// 20 us; storage loads are never inlined.
@group(0) @binding(0) var<storage, read> params: Params;
// The parameters, copied once per invocation by each entry point (`p = params;`): on CPU
// adapters every storage load is a loop over the SIMD lanes, so loading a field at each use
// in an inner loop would cost as much as loading a weight.
var<private> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
// The block scales of a quantised W (row r, block b in word r * s_stride + b, s_stride a
// multiple of 4 so that four blocks' scales are one vec4); any buffer else.
@group(0) @binding(6) var<storage, read> ws: array<vec4<u32>>;

// The weight row of output row `row`.
fn w_row(row: u32) -> u32 {
    if HEADS {
        return row + p.w_row0;
    }
    return row;
}

// Scale word of block b of row `row`.
fn scale_word(row: u32, b: u32) -> u32 {
    let i = row * p.s_stride + b;
    return ws[i / 4u][i % 4u];
}

// Eight consecutive weights of row `row` starting at element `k` (k a multiple of 8). Rows
// are zero-padded to w_stride, so a block may run past K. Quantised rows are w_stride
// elements of data (one vec4 of w holds 16 q8 or 32 q4 weights) and s_stride scale words.
fn load_w8(row: u32, k: u32) -> array<vec4<f32>, 2> {
    if WDT == 3u {
        let e = row * p.w_stride + k;
        let q = w_words(e / 16u);
        let s = scale_word(row, k / 32u);
        if (e / 8u) % 2u == 0u {
            return array<vec4<f32>, 2>(dequant_q8(q.x, s), dequant_q8(q.y, s));
        }
        return array<vec4<f32>, 2>(dequant_q8(q.z, s), dequant_q8(q.w, s));
    }
    if WDT == 4u {
        let e = row * p.w_stride + k;
        return dequant_q4(w_word(e / 32u, (e / 8u) % 4u), scale_word(row, k / 32u));
    }
    if WDT != 0u {
        let q = w_words((row * p.w_stride + k) / 8u);
        return array<vec4<f32>, 2>(
            vec4<f32>(unpack_pair(q.x), unpack_pair(q.y)),
            vec4<f32>(unpack_pair(q.z), unpack_pair(q.w)),
        );
    }
    let i = (row * p.w_stride + k) / 4u;
    return array<vec4<f32>, 2>(bitcast<vec4<f32>>(w_words(i)), bitcast<vec4<f32>>(w_words(i + 1u)));
}

// floor(a / b) for a < 2^22 (the host checks the row count): (a + 0.5) / b lies at least
// 0.5 / b from the integers around it, and the f32 quotient errs by under a / b * 2^-24,
// less than that, so it truncates to the right integer. CPU adapters divide floats in SIMD
// lanes; integer division runs lane by lane.
fn div_small(a: u32, b: u32) -> u32 {
    return u32((f32(a) + 0.5) / f32(b));
}

// First input column read by chunk row `row`: its projection's first column plus its
// head's offset within the projection.
fn x_col(row: u32) -> u32 {
    if HEADS {
        let r = p.row_base + row;
        let j = div_small(r, p.proj_rows);
        return p.proj_cols[j] + div_small(r - j * p.proj_rows, p.head_rows) * p.k;
    }
    return 0u;
}

// The eight elements of x at b, as stored.
fn raw_x8(b: u32) -> array<vec4<f32>, 2> {
    if X4 {
        return array<vec4<f32>, 2>(x4[b / 4u], x4[b / 4u + 1u]);
    }
    return array<vec4<f32>, 2>(
        vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]),
        vec4<f32>(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]),
    );
}

// The four elements of x at b (a multiple of 4 when X4), as stored.
fn raw_x4(b: u32) -> vec4<f32> {
    if X4 {
        return x4[b / 4u];
    }
    return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
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
    if p.cap > 0.0 {
        v = soft_cap(v, p.cap);
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

// The block at k (eight weights) of the four output rows r.
fn weights4(r: vec4<u32>, k: u32) -> array<array<vec4<f32>, 2>, 4> {
    return array<array<vec4<f32>, 2>, 4>(
        load_w8(w_row(r.x), k),
        load_w8(w_row(r.y), k),
        load_w8(w_row(r.z), k),
        load_w8(w_row(r.w), k),
    );
}

// The four rows' weight blocks wq dotted with the same eight inputs xs.
fn rows_dot(wq: array<array<vec4<f32>, 2>, 4>, xs: array<vec4<f32>, 2>) -> vec4<f32> {
    return vec4<f32>(dot8(wq[0], xs), dot8(wq[1], xs), dot8(wq[2], xs), dot8(wq[3], xs));
}

// W[r[j], k..k+8] . xs for the four rows r.
fn block4(r: vec4<u32>, k: u32, xs: array<vec4<f32>, 2>) -> vec4<f32> {
    return rows_dot(weights4(r, k), xs);
}
