// y[t, o] = beta * y[t, o] + bias[o] + sum_k x[t, col(o) + k] * W[o, k]
//
// W: (M, K) rows padded to w_stride (a multiple of 8) elements, f32 or f16 / bf16 pairs
//    packed in u32; bound as array<vec4<u32>> and reinterpreted per the WDT override
//    (shaders/common/weights.wgsl).
// With cap > 0 each product (plus bias) is soft-capped, cap * tanh(v / cap), before beta * y
// is added (xLSTM-Large's logits).
// x: element x[t, c] at x[x_offset + t * x_stride + c] (f32).
// col(o) = 0 for a dense matrix; with the HEADS override (block-diagonal "headwise"
//    weights: each block of head_rows output rows reads its own K inputs, and proj_rows
//    rows form one of up to four stacked projections, each reading from its own column)
//    col(o) = proj_cols[o / proj_rows] + ((o % proj_rows) / head_rows) * K, and output row
//    o reads weight row w_row0 + o (a stack's later projections alone). An override, so
//    that dense kernels index x uniformly across invocations.
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
//   rows8: one workgroup of 256 invocations per (8 rows, token), 32 invocations per row
//          reading it together one 16-byte word at a time (8, 16 or 32 weights), two words
//          in flight each, and one barrier to reduce: decode on GPUs;
//          grid (groups_x, ceil(M / 8 / groups_x), T).
//   gemm16: dense W only: one workgroup of 256 per (32 rows, 16 tokens); each step stages a
//          32 x 32 block of W (dequantised) and the 16 tokens' 32 inputs in workgroup
//          memory, and each invocation accumulates one row for two tokens, so every weight
//          is read once per 16 tokens (coop4: per 4): prefill on GPUs;
//          grid (groups_x, ceil(M / 32 / groups_x), ceil(T / 16)).
// shaders/gemv_subgroup.wgsl holds gemv's and gemm4's subgroup forms (dense W, inputs shared
// by broadcasts), in its own file because it needs the SUBGROUP feature. Weight words are
// read through w_words / w_word (shaders/common/words32.wgsl).

// Params, overrides, bindings and helpers: shaders/common/matmul.wgsl (appended).

// Inputs of token t at column c + k (the tail block zero-filled past K).
fn x8(t: u32, c: u32, k: u32, tail: bool) -> array<vec4<f32>, 2> {
    if tail {
        return load_x8_tail(t, c, k);
    }
    return load_x8(t, c, k);
}

// The first input columns of the four rows r (computed once per row group, not per block):
// one column for all four unless ROW_COLS.
fn cols4(r: vec4<u32>) -> vec4<u32> {
    if HEADS && ROW_COLS {
        return vec4<u32>(x_col(r.x), x_col(r.y), x_col(r.z), x_col(r.w));
    }
    if HEADS {
        return vec4<u32>(x_col(r.x));
    }
    return vec4<u32>(0u);
}

// The four rows' weight blocks wq (at k) dotted with token t's inputs at columns c + k: one
// load of the inputs for the four rows unless ROW_COLS.
fn dot_rows(wq: array<array<vec4<f32>, 2>, 4>, c: vec4<u32>, t: u32, k: u32, tail: bool) -> vec4<f32> {
    if ROW_COLS {
        return vec4<f32>(
            dot8(wq[0], x8(t, c.x, k, tail)),
            dot8(wq[1], x8(t, c.y, k, tail)),
            dot8(wq[2], x8(t, c.z, k, tail)),
            dot8(wq[3], x8(t, c.w, k, tail)),
        );
    }
    return rows_dot(wq, x8(t, c.x, k, tail));
}

@compute @workgroup_size(WG)
fn gemv(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    p = params;
    let t = wid.y;
    if t >= p.t {
        return;
    }
    // Row groups gid.x, gid.x + nwg.x WG, ... (see gemv_subgroup.wgsl).
    for (var q = gid.x; q * 4u < p.m; q += nwg.x * WG) {
        let r = rows4(q);
        let c = cols4(r);
        var acc = vec4<f32>(0.0);
        let kf = k_full();
        for (var k = 0u; k < kf; k += 8u) {
            acc += dot_rows(weights4(r, k), c, t, k, false);
        }
        if kf < p.k {
            acc += dot_rows(weights4(r, kf), c, t, kf, true);
        }
        store_rows(t, r, acc);
    }
}

@compute @workgroup_size(WG)
fn gemm4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let t0 = wid.y * 4u;
    if gid.x * 4u >= p.m || t0 >= p.t {
        return;
    }
    let r = rows4(gid.x);
    let c = cols4(r);
    // Tokens past T re-read the last token; their results are never stored.
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.t - 1u));
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    let kf = k_full();
    // Each block of the rows' weights is loaded once for the four tokens.
    for (var k = 0u; k < kf; k += 8u) {
        let wq = weights4(r, k);
        a0 += dot_rows(wq, c, t.x, k, false);
        a1 += dot_rows(wq, c, t.y, k, false);
        a2 += dot_rows(wq, c, t.z, k, false);
        a3 += dot_rows(wq, c, t.w, k, false);
    }
    if kf < p.k {
        let wq = weights4(r, kf);
        a0 += dot_rows(wq, c, t.x, kf, true);
        a1 += dot_rows(wq, c, t.y, kf, true);
        a2 += dot_rows(wq, c, t.z, kf, true);
        a3 += dot_rows(wq, c, t.w, kf, true);
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
    p = params;
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
            let wv = load_w8(w_row(r), k);
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

var<workgroup> row_partial: array<f32, 256>;

// Weights one rows8 invocation takes per step: one 16-byte word of data (8 f16 or bf16, 16
// q8, 32 q4 weights; f32 reads two words for 8), so the quantised formats keep as many bytes
// in flight as the float ones.
fn rows8_block() -> u32 {
    if WDT == 3u {
        return 16u;
    }
    if WDT == 4u {
        return 32u;
    }
    return 8u;
}

// Eight inputs of token t at column c + k, zero past K (k may be at or past K).
fn x8_at(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    if k + 8u <= p.k {
        return load_x8(t, c, k);
    }
    if k < p.k {
        return load_x8_tail(t, c, k);
    }
    return array<vec4<f32>, 2>();
}

// Token t's product with the rows8_block() weights of weight row `wr` from element k (k a
// multiple of the block; quantised blocks lie within one 32-weight scale block).
fn block_dot(wr: u32, k: u32, t: u32, c: u32) -> f32 {
    if WDT == 3u {
        let q = w_words((wr * p.w_stride + k) / 16u);
        let s = scale_word(wr, k / 32u);
        let lo = array<vec4<f32>, 2>(dequant_q8(q.x, s), dequant_q8(q.y, s));
        let hi = array<vec4<f32>, 2>(dequant_q8(q.z, s), dequant_q8(q.w, s));
        return dot8(lo, x8_at(t, c, k)) + dot8(hi, x8_at(t, c, k + 8u));
    }
    if WDT == 4u {
        let q = w_words((wr * p.w_stride + k) / 32u);
        let s = scale_word(wr, k / 32u);
        return dot8(dequant_q4(q.x, s), x8_at(t, c, k)) + dot8(dequant_q4(q.y, s), x8_at(t, c, k + 8u))
            + dot8(dequant_q4(q.z, s), x8_at(t, c, k + 16u)) + dot8(dequant_q4(q.w, s), x8_at(t, c, k + 24u));
    }
    return dot8(load_w8(wr, k), x8_at(t, c, k));
}

@compute @workgroup_size(256)
fn rows8(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let lane = lid % 32u;
    let row = (wid.x + wid.y * p.groups_x) * 8u + lid / 32u;
    let t = wid.z;
    // No early return before the barrier: out-of-range rows compute zeros.
    let live = row < p.m;
    let r = min(row, p.m - 1u);
    let c = x_col(r);
    let wr = w_row(r);
    let step = 32u * rows8_block();
    var acc = 0.0;
    if live {
        var k = lane * rows8_block();
        // Two blocks per iteration, independent, so both loads are in flight together.
        for (; k + step < p.k; k += 2u * step) {
            acc += block_dot(wr, k, t, c) + block_dot(wr, k + step, t, c);
        }
        if k < p.k {
            acc += block_dot(wr, k, t, c);
        }
    }
    row_partial[lid] = acc;
    workgroupBarrier();
    if lane == 0u && live {
        var total = 0.0;
        for (var i = 0u; i < 32u; i++) {
            total += row_partial[lid + i];
        }
        store(t, r, total);
    }
}

// gemm16's tiles: W rows x 32 inputs and tokens x 32 inputs, rows of 33 so that the 32
// invocations of a row group read 32 different banks.
var<workgroup> w_tile: array<array<f32, 33>, 32>;
var<workgroup> x_tile: array<array<f32, 33>, 16>;

@compute @workgroup_size(256)
fn gemm16(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let row0 = (wid.x + wid.y * p.groups_x) * 32u;
    let t0 = wid.z * 16u;
    // This invocation's outputs: row row0 + orow for tokens t0 + ot and t0 + ot + 8.
    let orow = lid % 32u;
    let ot = lid / 32u;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        if lid < 128u {
            // Invocations 0-127 stage eight weights each: row lid / 4, inputs (lid % 4) * 8 ..
            // (rows are zero-padded to w_stride, a multiple of 8, so a block never leaves its
            // row; the inputs past K are zero, whatever the padding holds).
            let r = row0 + lid / 4u;
            let kk = (lid % 4u) * 8u;
            var wv = array<vec4<f32>, 2>();
            if r < p.m && k0 + kk < p.k {
                wv = load_w8(r, k0 + kk);
            }
            for (var e = 0u; e < 4u; e++) {
                w_tile[lid / 4u][kk + e] = wv[0][e];
                w_tile[lid / 4u][kk + 4u + e] = wv[1][e];
            }
        } else if lid < 192u {
            // Invocations 128-191 stage eight inputs each (dense W: from column 0): token
            // i / 4, inputs (i % 4) * 8 ..
            let i = lid - 128u;
            let kk = (i % 4u) * 8u;
            var xv = array<vec4<f32>, 2>();
            if t0 + i / 4u < p.t {
                xv = x8_at(t0 + i / 4u, 0u, k0 + kk);
            }
            for (var e = 0u; e < 4u; e++) {
                x_tile[i / 4u][kk + e] = xv[0][e];
                x_tile[i / 4u][kk + 4u + e] = xv[1][e];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let wv = w_tile[orow][kk];
            acc0 += wv * x_tile[ot][kk];
            acc1 += wv * x_tile[ot + 8u][kk];
        }
        // The tiles are restaged next step.
        workgroupBarrier();
    }
    let r = row0 + orow;
    if r < p.m {
        if t0 + ot < p.t {
            store(t0 + ot, r, acc0);
        }
        if t0 + ot + 8u < p.t {
            store(t0 + ot + 8u, r, acc1);
        }
    }
}
