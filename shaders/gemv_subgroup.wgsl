// y[t, o] = beta * y[t, o] + bias[o] + sum_k x[t, k] * W[o, k] for a dense W (layouts:
// shaders/matmul.wgsl), one token per workgroup row: gemv with the loads of x shared within
// a subgroup. The host dispatches it on CPU adapters whose subgroups all have the same
// size S >= 8, with workgroups of WG = S invocations (one subgroup each).
//
// Invocation i owns rows 4i .. 4i + 3 as in gemv. Per span of 64 inputs, lane l < 8 loads
// the 8 inputs at 8 l (lanes past 8 repeat lane l % 8) and subgroupBroadcast hands block j
// from lane j to all: nearly every load an invocation issues is a weight. On llvmpipe,
// where each non-uniform load is a loop over the SIMD lanes and a broadcast from a constant
// lane two instructions, loads bound a GEMV, and this reads f16 weights ~1.7x faster than
// gemv. grid (ceil(M / (4 WG)), T).
//
// Quantised weights (WDT 3 = q8, 4 = q4) go through `quant_rows`: spans of 128 inputs, four
// blocks of 32, lane l < 8 loading the 16 inputs at 16 l. Per row and span it loads one vec4
// of four block scales and two (q8) or one (q4) vec4 of data per block, so q4 needs about a
// third of the loads f16 does; the four rows' data words of a span (q8: half a span) are
// loaded together before any product (`quant_words`). Each block's integer weights are
// dotted with the inputs before one multiply by the scale; q4's minimum adds
// `min * sum(inputs of the block)`, which all four rows share.

// `main_short` and `gemm_short` are `main` and `gemm` for dense rows of 64 or 128 weights,
// loading their inputs once per workgroup rather than once per row group; `main_few` and
// `gemm_few` for at most 8 rows split K over the lanes instead; `gemm_pairs*` are the GEMMs
// with two rows and eight tokens per invocation.
//
// Params, overrides, bindings and helpers: shaders/common/matmul.wgsl (appended), the input
// loads from shaders/common/inputs.wgsl (or inputs_glu.wgsl, gated, in the registry's
// `*_glu` modules), and the weight words through w_words / w_word:
// shaders/common/words32.wgsl in the registry's `gemv_subgroup`, words64.wgsl (64-bit loads,
// SHADER_INT64) in its `gemv_subgroup64`.

// Block j of the span (held by lane j), for a lane index known only at run time.
fn shuffle8(v: array<vec4<f32>, 2>, j: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(subgroupShuffle(v[0], j), subgroupShuffle(v[1], j));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t = wid.y;
    // Uniform per workgroup. Invocations past M go on with clamped rows and store nothing:
    // the broadcasts need every lane's inputs.
    if t >= p.t {
        return;
    }
    // Each workgroup walks row groups wid.x, wid.x + nwg.x, ... (the host sizes the grid so
    // that a workgroup's work outweighs its start-up cost on CPU adapters).
    for (var base = wid.x * WG; base * 4u < p.m; base += nwg.x * WG) {
        rows_of(t, base + lid, lane);
    }
}

// `main` for dense rows of 64 or 128 weights (K / 64 spans): each lane loads its inputs
// once, before the row groups, instead of once per row group (for K = 128 a fifth of an
// invocation's loads). An entry point of its own, so that `main`'s pipelines never compile
// its code; two spans at most, as each one more made every pipeline of it compile ~0.1 s
// longer on lavapipe (192 and 256 were tried).
@compute @workgroup_size(WG)
fn main_short(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t = wid.y;
    if t >= p.t {
        return;
    }
    // Short rows: the lane's inputs, loaded once for all the row groups.
    let spans = p.k / 64u;
    let mine = 8u * (lane % 8u);
    let xs0 = load_x8(t, 0u, mine);
    var xs1 = array<vec4<f32>, 2>();
    if spans > 1u {
        xs1 = load_x8(t, 0u, 64u + mine);
    }
    for (var base = wid.x * WG; base * 4u < p.m; base += nwg.x * WG) {
        let q = base + lid;
        let r = rows4(q);
        var acc = span_dot(vec4<f32>(0.0), r, 0u, xs0);
        if spans > 1u {
            acc = span_dot(acc, r, 64u, xs1);
        }
        if q * 4u < p.m {
            store_rows(t, r, acc);
        }
    }
}

// `main` for at most 8 rows (the mLSTM blocks' input and forget gates): the lanes split K
// instead of the rows, lane l taking the blocks of 8 inputs at 8 l, 8 (l + WG), ... of all
// the rows, and their sums meet by subgroupAdd (a row group of 32 lanes' rows computed for
// 8 rows did four times the loads).
@compute @workgroup_size(WG)
fn main_few(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t = wid.y;
    if t >= p.t {
        return;
    }
    // Rows 0-3 and 4-7, clamped to the last row.
    let lo = rows4(0u);
    let hi = rows4(1u);
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var k = 8u * lane; k < p.k; k += 8u * WG) {
        let xs = few_x8(t, k);
        a += block4(lo, k, xs);
        if p.m > 4u {
            b += block4(hi, k, xs);
        }
    }
    a = subgroupAdd(a);
    b = subgroupAdd(b);
    if lane == 0u {
        store_rows(t, lo, a);
        if p.m > 4u {
            store_rows(t, hi, b);
        }
    }
}

// `gemm` for at most 8 rows: `main_few` for four tokens at a time, each block of weights
// loaded once for the four (and summed in `main_few`'s order, so that one token gives the
// same bits through either).
@compute @workgroup_size(WG)
fn gemm_few(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t0 = wid.y * 4u;
    if t0 >= p.t {
        return;
    }
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.t - 1u));
    let lo = rows4(0u);
    let hi = rows4(1u);
    var a = array<vec4<f32>, 4>();
    var b = array<vec4<f32>, 4>();
    for (var k = 8u * lane; k < p.k; k += 8u * WG) {
        let x = array<array<vec4<f32>, 2>, 4>(few_x8(t.x, k), few_x8(t.y, k), few_x8(t.z, k), few_x8(t.w, k));
        let wl = weights4(lo, k);
        for (var i = 0u; i < 4u; i++) {
            a[i] += rows_dot(wl, x[i]);
        }
        if p.m > 4u {
            let wh = weights4(hi, k);
            for (var i = 0u; i < 4u; i++) {
                b[i] += rows_dot(wh, x[i]);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        a[i] = subgroupAdd(a[i]);
        b[i] = subgroupAdd(b[i]);
    }
    if lane == 0u {
        store_tokens(t0, lo, a);
        if p.m > 4u {
            store_tokens(t0, hi, b);
        }
    }
}

// The 8 inputs of token t at k (a multiple of 8 below K), zero past K.
fn few_x8(t: u32, k: u32) -> array<vec4<f32>, 2> {
    if k + 8u <= p.k {
        return load_x8(t, 0u, k);
    }
    return load_x8_tail(t, 0u, k);
}

// acc + the span of 64 inputs at k (every lane's 8 inputs at 8 (lane % 8) in xs) dotted
// with the four rows r, added block by block in the order of `gemm`'s tokens_span (so that
// one token gives the same bits through either): subgroupBroadcast takes a constant lane,
// so the span's eight blocks are written out.
fn span_dot(acc: vec4<f32>, r: vec4<u32>, k: u32, xs: array<vec4<f32>, 2>) -> vec4<f32> {
    var s = acc + block4(r, k, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 0u), subgroupBroadcast(xs[1], 0u)));
    s += block4(r, k + 8u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 1u), subgroupBroadcast(xs[1], 1u)));
    s += block4(r, k + 16u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 2u), subgroupBroadcast(xs[1], 2u)));
    s += block4(r, k + 24u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 3u), subgroupBroadcast(xs[1], 3u)));
    s += block4(r, k + 32u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 4u), subgroupBroadcast(xs[1], 4u)));
    s += block4(r, k + 40u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 5u), subgroupBroadcast(xs[1], 5u)));
    s += block4(r, k + 48u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 6u), subgroupBroadcast(xs[1], 6u)));
    return s + block4(r, k + 56u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 7u), subgroupBroadcast(xs[1], 7u)));
}

// Rows 4 q .. 4 q + 3 of token t (every lane of the subgroup calls it together).
fn rows_of(t: u32, q: u32, lane: u32) {
    let r = rows4(q);
    if WDT >= 3u {
        let acc = quant_rows(t, r, lane);
        if q * 4u < p.m {
            store_rows(t, r, acc);
        }
        return;
    }
    let mine = 8u * (lane % 8u);
    var acc = vec4<f32>(0.0);
    var k = 0u;
    for (; k + 64u <= p.k; k += 64u) {
        acc = span_dot(acc, r, k, load_x8(t, 0u, k + mine));
    }
    // The last, partial span: blocks past K are zero inputs, and blocks past the span's
    // last are skipped (rows are zero-padded to a multiple of 8 only).
    if k < p.k {
        let kl = k + mine;
        var xs = array<vec4<f32>, 2>();
        if kl + 8u <= p.k {
            xs = load_x8(t, 0u, kl);
        } else if kl < p.k {
            xs = load_x8_tail(t, 0u, kl);
        }
        let blocks = (p.k - k + 7u) / 8u;
        for (var j = 0u; j < blocks; j++) {
            acc += block4(r, k + 8u * j, shuffle8(xs, j));
        }
    }
    if q * 4u < p.m {
        store_rows(t, r, acc);
    }
}

// gemm: rows 4 q .. 4 q + 3 for tokens t0 .. t0 + 3 per invocation (grid (ceil(M / (4 WG)),
// ceil(T / 4))), for prompts. Per span of 64 inputs lane l < 8 loads the 8 inputs at 8 l of
// each of the four tokens, held as two pairs of tokens in the 16-input form of quant_rows,
// so that its lane0 .. lane7 broadcasts (and shuffle16 in the tail) hand block j to all
// lanes; each block of a row's weights is loaded once and dotted with all four tokens'
// inputs. So a span costs an invocation 8 input and 32 weight loads (f16) for 1024
// products, where gemm4 issues 12 loads per 128. Any WDT: quantised rows through
// quant_span, each block of 32 weights loaded once. Written out for four tokens: loops over the tokens (or eight tokens) compiled
// ~2 s slower on llvmpipe and ran no faster.
@compute @workgroup_size(WG)
fn gemm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t0 = wid.y * 4u;
    // Uniform per workgroup; invocations past M go on with clamped rows (see `main`).
    if t0 >= p.t {
        return;
    }
    // Tokens past T re-read the last token; their results are never stored.
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.t - 1u));
    let mine = 8u * (lane % 8u);
    let q = wid.x * WG + lid;
    let r = rows4(q);
    var acc = array<vec4<f32>, 4>();
    var k = 0u;
    for (; k + 64u <= p.k; k += 64u) {
        let kl = k + mine;
        let a = pair(load_x8(t.x, 0u, kl), load_x8(t.y, 0u, kl));
        let b = pair(load_x8(t.z, 0u, kl), load_x8(t.w, 0u, kl));
        if WDT >= 3u {
            acc = quant_span(acc, r, k, a, b);
        } else {
            acc = tokens_span(acc, r, k, a, b);
        }
    }
    // The last, partial span, as in `main`.
    if k < p.k {
        let kl = k + mine;
        var a = array<vec4<f32>, 4>();
        var b = array<vec4<f32>, 4>();
        if kl + 8u <= p.k {
            a = pair(load_x8(t.x, 0u, kl), load_x8(t.y, 0u, kl));
            b = pair(load_x8(t.z, 0u, kl), load_x8(t.w, 0u, kl));
        } else if kl < p.k {
            a = pair(load_x8_tail(t.x, 0u, kl), load_x8_tail(t.y, 0u, kl));
            b = pair(load_x8_tail(t.z, 0u, kl), load_x8_tail(t.w, 0u, kl));
        }
        let blocks = (p.k - k + 7u) / 8u;
        for (var j = 0u; j < blocks; j++) {
            acc = tokens_block(acc, r, k + 8u * j, shuffle16(a, j), shuffle16(b, j));
        }
    }
    if q * 4u < p.m {
        store_tokens(t0, r, acc);
    }
}

// `gemm` for dense rows of 64 or 128 weights: the four tokens' inputs loaded once, then
// row groups wid.x, wid.x + nwg.x, ... (the host sizes the grid as for `main`):
// a third of an invocation's loads at K = 128.
@compute @workgroup_size(WG)
fn gemm_short(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    held_rows(lid, wid, nwg, lane, 2u);
}

// `gemm_short` for rows of 192 or 256 weights (three or four spans), an entry point of its
// own: holding four spans of inputs in `gemm_short` made its K = 128 products ~25% slower
// on lavapipe, while the gated 256-wide down-projections gained ~20% (2026-12-04).
@compute @workgroup_size(WG)
fn gemm_medium(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    held_rows(lid, wid, nwg, lane, 4u);
}

// The body of `gemm_short` and `gemm_medium`: the four tokens' inputs of the K / 64 spans
// (at most `most`, a constant per entry point) loaded once, then the row groups. Spans are
// added in order from zero, as `gemm` adds them.
fn held_rows(lid: u32, wid: vec3<u32>, nwg: vec3<u32>, lane: u32, most: u32) {
    p = params;
    let t0 = wid.y * 4u;
    if t0 >= p.t {
        return;
    }
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.t - 1u));
    let mine = 8u * (lane % 8u);
    let spans = min(p.k / 64u, most);
    let a0 = pair(load_x8(t.x, 0u, mine), load_x8(t.y, 0u, mine));
    let b0 = pair(load_x8(t.z, 0u, mine), load_x8(t.w, 0u, mine));
    var a1 = array<vec4<f32>, 4>();
    var b1 = array<vec4<f32>, 4>();
    var a2 = array<vec4<f32>, 4>();
    var b2 = array<vec4<f32>, 4>();
    var a3 = array<vec4<f32>, 4>();
    var b3 = array<vec4<f32>, 4>();
    if spans > 1u {
        a1 = pair(load_x8(t.x, 0u, 64u + mine), load_x8(t.y, 0u, 64u + mine));
        b1 = pair(load_x8(t.z, 0u, 64u + mine), load_x8(t.w, 0u, 64u + mine));
    }
    if most > 2u && spans > 2u {
        a2 = pair(load_x8(t.x, 0u, 128u + mine), load_x8(t.y, 0u, 128u + mine));
        b2 = pair(load_x8(t.z, 0u, 128u + mine), load_x8(t.w, 0u, 128u + mine));
    }
    if most > 3u && spans > 3u {
        a3 = pair(load_x8(t.x, 0u, 192u + mine), load_x8(t.y, 0u, 192u + mine));
        b3 = pair(load_x8(t.z, 0u, 192u + mine), load_x8(t.w, 0u, 192u + mine));
    }
    for (var base = wid.x * WG; base * 4u < p.m; base += nwg.x * WG) {
        let q = base + lid;
        let r = rows4(q);
        var acc = tokens_span(array<vec4<f32>, 4>(), r, 0u, a0, b0);
        if spans > 1u {
            acc = tokens_span(acc, r, 64u, a1, b1);
        }
        if most > 2u && spans > 2u {
            acc = tokens_span(acc, r, 128u, a2, b2);
        }
        if most > 3u && spans > 3u {
            acc = tokens_span(acc, r, 192u, a3, b3);
        }
        if q * 4u < p.m {
            store_tokens(t0, r, acc);
        }
    }
}

// The pair kernels: `gemm`, `gemm_short` and `gemm_medium` with two rows and eight tokens
// per invocation instead of four and four, for f32/f16/bf16 weights and more than four
// tokens (the host's choice; quantised rows keep `gemm`). On llvmpipe a weight load is a
// loop over the SIMD lanes that costs several times the block's products, so each block
// loaded once for eight tokens halves the weight loads per product, for twice the
// broadcasts (two instructions each). Per span of 1024 products an invocation of `gemm`
// issues 8 input and 32 weight loads, of `gemm_pairs` 16 and 16; the held forms load their
// inputs once per workgroup, so theirs halve outright. The sixteen
// accumulators are as many as the four-token kernels' (four rows of eight tokens would
// spill them). Rows are summed block by block in `gemm`'s order, so a token's outputs
// have the same bits through either. 2026-12-04 on this VM: the bundled model's 128-token
// prefill 40 -> 33 ms, the 4096x4096 bf16 GEMM 76 -> 67 ms.
@compute @workgroup_size(WG)
fn gemm_pairs(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    p = params;
    let t0 = wid.y * 8u;
    // Uniform per workgroup; invocations past M go on with clamped rows (see `main`).
    if t0 >= p.t {
        return;
    }
    let t = token_octet(t0);
    let mine = 8u * (lane % 8u);
    let q = wid.x * WG + lid;
    let r = rows2(q);
    var acc = array<vec2<f32>, 8>();
    var k = 0u;
    for (; k + 64u <= p.k; k += 64u) {
        acc = octet_span(acc, r, k, load_octet(t, k + mine));
    }
    // The last, partial span, as in `main`.
    if k < p.k {
        let kl = k + mine;
        var x = Octet();
        if kl + 8u <= p.k {
            x = load_octet(t, kl);
        } else if kl < p.k {
            x = load_octet_tail(t, kl);
        }
        let blocks = (p.k - k + 7u) / 8u;
        for (var j = 0u; j < blocks; j++) {
            acc = octet_block(acc, r, k + 8u * j, shuffle16(x.a, j), shuffle16(x.b, j), shuffle16(x.c, j), shuffle16(x.d, j));
        }
    }
    store_octet(t0, q, r, acc);
}

// `gemm_short` and `gemm_medium` as pair kernels: the eight tokens' inputs of the K / 64
// spans loaded once, then row pairs wid.x, wid.x + nwg.x, ...
@compute @workgroup_size(WG)
fn gemm_pairs_short(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    held_pairs(lid, wid, nwg, lane, 2u);
}

@compute @workgroup_size(WG)
fn gemm_pairs_medium(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    held_pairs(lid, wid, nwg, lane, 4u);
}

// `held_rows` for row pairs and eight tokens.
fn held_pairs(lid: u32, wid: vec3<u32>, nwg: vec3<u32>, lane: u32, most: u32) {
    p = params;
    let t0 = wid.y * 8u;
    if t0 >= p.t {
        return;
    }
    let t = token_octet(t0);
    let mine = 8u * (lane % 8u);
    let spans = min(p.k / 64u, most);
    let x0 = load_octet(t, mine);
    var x1 = Octet();
    var x2 = Octet();
    var x3 = Octet();
    if spans > 1u {
        x1 = load_octet(t, 64u + mine);
    }
    if most > 2u && spans > 2u {
        x2 = load_octet(t, 128u + mine);
    }
    if most > 3u && spans > 3u {
        x3 = load_octet(t, 192u + mine);
    }
    for (var base = wid.x * WG; base * 2u < p.m; base += nwg.x * WG) {
        let q = base + lid;
        let r = rows2(q);
        var acc = octet_span(array<vec2<f32>, 8>(), r, 0u, x0);
        if spans > 1u {
            acc = octet_span(acc, r, 64u, x1);
        }
        if most > 2u && spans > 2u {
            acc = octet_span(acc, r, 128u, x2);
        }
        if most > 3u && spans > 3u {
            acc = octet_span(acc, r, 192u, x3);
        }
        store_octet(t0, q, r, acc);
    }
}

// A lane's 8 inputs of eight tokens, in the 16-input pair form: tokens 0 and 1 in a, 2 and
// 3 in b, 4 and 5 in c, 6 and 7 in d.
struct Octet {
    a: array<vec4<f32>, 4>,
    b: array<vec4<f32>, 4>,
    c: array<vec4<f32>, 4>,
    d: array<vec4<f32>, 4>,
}

// Tokens t0 .. t0 + 7; those past T re-read the last token (their results are never
// stored).
fn token_octet(t0: u32) -> array<vec4<u32>, 2> {
    let i = vec4<u32>(0u, 1u, 2u, 3u);
    return array<vec4<u32>, 2>(min(vec4<u32>(t0) + i, vec4<u32>(p.t - 1u)), min(vec4<u32>(t0 + 4u) + i, vec4<u32>(p.t - 1u)));
}

// The eight tokens' inputs at column k (k + 8 <= K).
fn load_octet(t: array<vec4<u32>, 2>, k: u32) -> Octet {
    return Octet(
        pair(load_x8(t[0].x, 0u, k), load_x8(t[0].y, 0u, k)),
        pair(load_x8(t[0].z, 0u, k), load_x8(t[0].w, 0u, k)),
        pair(load_x8(t[1].x, 0u, k), load_x8(t[1].y, 0u, k)),
        pair(load_x8(t[1].z, 0u, k), load_x8(t[1].w, 0u, k)),
    );
}

// The same for the last, partial block: zero past K.
fn load_octet_tail(t: array<vec4<u32>, 2>, k: u32) -> Octet {
    return Octet(
        pair(load_x8_tail(t[0].x, 0u, k), load_x8_tail(t[0].y, 0u, k)),
        pair(load_x8_tail(t[0].z, 0u, k), load_x8_tail(t[0].w, 0u, k)),
        pair(load_x8_tail(t[1].x, 0u, k), load_x8_tail(t[1].y, 0u, k)),
        pair(load_x8_tail(t[1].z, 0u, k), load_x8_tail(t[1].w, 0u, k)),
    );
}

// Rows 2 q and 2 q + 1, clamped to the last row.
fn rows2(q: u32) -> vec2<u32> {
    return min(vec2<u32>(2u * q) + vec2<u32>(0u, 1u), vec2<u32>(p.m - 1u));
}

// acc[i] += the block at k of the two rows r dotted with token i's inputs (a, b, c, d as in
// Octet): each row's weights loaded once for the eight tokens.
fn octet_block(acc: array<vec2<f32>, 8>, r: vec2<u32>, k: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>, c: array<vec4<f32>, 4>, d: array<vec4<f32>, 4>) -> array<vec2<f32>, 8> {
    let w0 = load_w8(w_row(r.x), k);
    let w1 = load_w8(w_row(r.y), k);
    return array<vec2<f32>, 8>(
        acc[0] + two_rows(w0, w1, a[0], a[1]),
        acc[1] + two_rows(w0, w1, a[2], a[3]),
        acc[2] + two_rows(w0, w1, b[0], b[1]),
        acc[3] + two_rows(w0, w1, b[2], b[3]),
        acc[4] + two_rows(w0, w1, c[0], c[1]),
        acc[5] + two_rows(w0, w1, c[2], c[3]),
        acc[6] + two_rows(w0, w1, d[0], d[1]),
        acc[7] + two_rows(w0, w1, d[2], d[3]),
    );
}

// Two rows' blocks w0, w1 dotted with the same eight inputs lo (0-3), hi (4-7).
fn two_rows(w0: array<vec4<f32>, 2>, w1: array<vec4<f32>, 2>, lo: vec4<f32>, hi: vec4<f32>) -> vec2<f32> {
    let xs = array<vec4<f32>, 2>(lo, hi);
    return vec2<f32>(dot8(w0, xs), dot8(w1, xs));
}

// acc[i] += the span of 64 inputs at k of the two rows r dotted with token i's inputs
// (each lane's 8 inputs at 8 (lane % 8) in x), block by block.
fn octet_span(acc: array<vec2<f32>, 8>, r: vec2<u32>, k: u32, x: Octet) -> array<vec2<f32>, 8> {
    var s = octet_block(acc, r, k, lane0(x.a), lane0(x.b), lane0(x.c), lane0(x.d));
    s = octet_block(s, r, k + 8u, lane1(x.a), lane1(x.b), lane1(x.c), lane1(x.d));
    s = octet_block(s, r, k + 16u, lane2(x.a), lane2(x.b), lane2(x.c), lane2(x.d));
    s = octet_block(s, r, k + 24u, lane3(x.a), lane3(x.b), lane3(x.c), lane3(x.d));
    s = octet_block(s, r, k + 32u, lane4(x.a), lane4(x.b), lane4(x.c), lane4(x.d));
    s = octet_block(s, r, k + 40u, lane5(x.a), lane5(x.b), lane5(x.c), lane5(x.d));
    s = octet_block(s, r, k + 48u, lane6(x.a), lane6(x.b), lane6(x.c), lane6(x.d));
    return octet_block(s, r, k + 56u, lane7(x.a), lane7(x.b), lane7(x.c), lane7(x.d));
}

// Stores row pair q (rows r, those below M) of tokens t0 .. t0 + 7 (those below T).
fn store_octet(t0: u32, q: u32, r: vec2<u32>, acc: array<vec2<f32>, 8>) {
    for (var i = 0u; i < 8u; i++) {
        if t0 + i < p.t {
            if 2u * q < p.m {
                store(t0 + i, r.x, acc[i].x);
            }
            if 2u * q + 1u < p.m {
                store(t0 + i, r.y, acc[i].y);
            }
        }
    }
}

// acc[i] += the span of 64 inputs at k of the four rows r dotted with token i's inputs
// (each lane's 8 inputs at 8 (lane % 8): tokens 0 and 1 in a, 2 and 3 in b).
fn tokens_span(acc: array<vec4<f32>, 4>, r: vec4<u32>, k: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    var s = tokens_block(acc, r, k, lane0(a), lane0(b));
    s = tokens_block(s, r, k + 8u, lane1(a), lane1(b));
    s = tokens_block(s, r, k + 16u, lane2(a), lane2(b));
    s = tokens_block(s, r, k + 24u, lane3(a), lane3(b));
    s = tokens_block(s, r, k + 32u, lane4(a), lane4(b));
    s = tokens_block(s, r, k + 40u, lane5(a), lane5(b));
    s = tokens_block(s, r, k + 48u, lane6(a), lane6(b));
    return tokens_block(s, r, k + 56u, lane7(a), lane7(b));
}

// `tokens_span` for quantised rows: each row's two blocks of 32 weights are loaded once
// (one or two 16-byte words and a scale word per block, where loading them 8 weights at a
// time took three times the loads), then dequantised 8 at a time exactly as load_w8 does
// and added in tokens_span's order, so the products are bit for bit those of tokens_span.
fn quant_span(acc: array<vec4<f32>, 4>, r: vec4<u32>, k: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    let lo = held_block(r, k);
    var s = held_tokens(acc, lo, 0u, lane0(a), lane0(b));
    s = held_tokens(s, lo, 1u, lane1(a), lane1(b));
    s = held_tokens(s, lo, 2u, lane2(a), lane2(b));
    s = held_tokens(s, lo, 3u, lane3(a), lane3(b));
    let hi = held_block(r, k + 32u);
    s = held_tokens(s, hi, 0u, lane4(a), lane4(b));
    s = held_tokens(s, hi, 1u, lane5(a), lane5(b));
    s = held_tokens(s, hi, 2u, lane6(a), lane6(b));
    return held_tokens(s, hi, 3u, lane7(a), lane7(b));
}

// One quantised block of 32 weights of four rows as stored: data words (q8: row i in d[2 i]
// and d[2 i + 1]; q4: row i in d[i]) and the rows' scale words.
struct HeldBlock {
    d: array<vec4<u32>, 8>,
    s: vec4<u32>,
}

// The block at k (a multiple of 32) of the four rows r.
fn held_block(r: vec4<u32>, k: u32) -> HeldBlock {
    var h: HeldBlock;
    for (var i = 0u; i < 4u; i++) {
        let row = w_row(r[i]);
        let e = row * p.w_stride + k;
        if WDT == 3u {
            h.d[2u * i] = w_words(e / 16u);
            h.d[2u * i + 1u] = w_words(e / 16u + 1u);
        } else {
            h.d[i] = w_words(e / 32u);
        }
        h.s[i] = scale_word(row, k / 32u);
    }
    return h;
}

// Weights 8 j .. 8 j + 7 of row i of a held block, dequantised as load_w8 does.
fn held_w8(h: HeldBlock, i: u32, j: u32) -> array<vec4<f32>, 2> {
    if WDT == 3u {
        let v = h.d[2u * i + j / 2u];
        if j % 2u == 0u {
            return array<vec4<f32>, 2>(dequant_q8(v.x, h.s[i]), dequant_q8(v.y, h.s[i]));
        }
        return array<vec4<f32>, 2>(dequant_q8(v.z, h.s[i]), dequant_q8(v.w, h.s[i]));
    }
    return dequant_q4(h.d[i][j], h.s[i]);
}

// `tokens_block` for weights 8 j .. 8 j + 7 of a held block.
fn held_tokens(acc: array<vec4<f32>, 4>, h: HeldBlock, j: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    let wq = array<array<vec4<f32>, 2>, 4>(held_w8(h, 0u, j), held_w8(h, 1u, j), held_w8(h, 2u, j), held_w8(h, 3u, j));
    return array<vec4<f32>, 4>(
        acc[0] + rows_dot(wq, array<vec4<f32>, 2>(a[0], a[1])),
        acc[1] + rows_dot(wq, array<vec4<f32>, 2>(a[2], a[3])),
        acc[2] + rows_dot(wq, array<vec4<f32>, 2>(b[0], b[1])),
        acc[3] + rows_dot(wq, array<vec4<f32>, 2>(b[2], b[3])),
    );
}

// Stores the four rows r of tokens t0 .. t0 + 3 (those below T).
fn store_tokens(t0: u32, r: vec4<u32>, acc: array<vec4<f32>, 4>) {
    store_rows(t0, r, acc[0]);
    if t0 + 1u < p.t {
        store_rows(t0 + 1u, r, acc[1]);
    }
    if t0 + 2u < p.t {
        store_rows(t0 + 2u, r, acc[2]);
    }
    if t0 + 3u < p.t {
        store_rows(t0 + 3u, r, acc[3]);
    }
}

// Two tokens' 8 inputs side by side (the 16-input form the lane broadcasts take).
fn pair(x0: array<vec4<f32>, 2>, x1: array<vec4<f32>, 2>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(x0[0], x0[1], x1[0], x1[1]);
}

// acc[i] += the block at k of the four rows r dotted with token i's inputs (tokens 0 and 1
// in a, 2 and 3 in b): each row's weights loaded once for the four tokens.
fn tokens_block(acc: array<vec4<f32>, 4>, r: vec4<u32>, k: u32, a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    let wq = weights4(r, k);
    return array<vec4<f32>, 4>(
        acc[0] + rows_dot(wq, array<vec4<f32>, 2>(a[0], a[1])),
        acc[1] + rows_dot(wq, array<vec4<f32>, 2>(a[2], a[3])),
        acc[2] + rows_dot(wq, array<vec4<f32>, 2>(b[0], b[1])),
        acc[3] + rows_dot(wq, array<vec4<f32>, 2>(b[2], b[3])),
    );
}

// The 32 inputs of one block as eight vec4, and their sum.
struct Block {
    x: array<vec4<f32>, 8>,
    sum: f32,
}

// 2^(-8 i) for byte i of a q4 word (see nibbles_fma); powers of two, so exact.
const NIBBLE_SCALE = vec4<f32>(1.0, 0.00390625, 0.0000152587890625, 0.000000059604644775390625);

// The inputs lo (16) then hi (16) as a block; scaled by NIBBLE_SCALE for q4.
fn block_of(lo: array<vec4<f32>, 4>, hi: array<vec4<f32>, 4>) -> Block {
    var x = array<vec4<f32>, 8>(lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]);
    let s = x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7];
    if WDT == 4u {
        for (var i = 0u; i < 8u; i++) {
            x[i] *= NIBBLE_SCALE;
        }
    }
    return Block(x, dot(s, vec4<f32>(1.0)));
}

// The 16 inputs of token t at column k (lanes' share of a span); zero past K.
fn load_x16(t: u32, k: u32) -> array<vec4<f32>, 4> {
    var a = array<vec4<f32>, 2>();
    var b = array<vec4<f32>, 2>();
    if k + 16u <= p.k {
        a = load_x8(t, 0u, k);
        b = load_x8(t, 0u, k + 8u);
    } else {
        if k < p.k {
            a = load_x8_tail(t, 0u, k);
        }
        if k + 8u < p.k {
            b = load_x8_tail(t, 0u, k + 8u);
        }
    }
    return array<vec4<f32>, 4>(a[0], a[1], b[0], b[1]);
}

// The four int8 weights of `word` (element i in byte i).
fn q8x4(word: u32) -> vec4<f32> {
    let bytes = vec4<u32>(word << 24u, word << 16u, word << 8u, word);
    return vec4<f32>(bitcast<vec4<i32>>(bytes) >> vec4<u32>(24u));
}

// acc + the eight 4-bit weights of `word` (element i < 4 in the low nibble of byte i, 4 + i
// in its high nibble) times inputs lo (elements 0-3) and hi (4-7) that `block_of` scaled by
// NIBBLE_SCALE, lane by lane in fused multiply-adds: each nibble is masked in place, so byte
// i's nibble converts to q * 2^(8 i), exactly, without a shift of its own. They convert as
// i32 (all below 2^28): CPU adapters have a one-instruction signed conversion, and an
// unsigned one takes several.
fn nibbles_fma(word: u32, lo: vec4<f32>, hi: vec4<f32>, acc: vec4<f32>) -> vec4<f32> {
    let m = vec4<u32>(0xfu, 0xf00u, 0xf0000u, 0xf000000u);
    let a = bitcast<vec4<i32>>(vec4<u32>(word) & m);
    let b = bitcast<vec4<i32>>(vec4<u32>(word >> 4u) & m);
    return fma(vec4<f32>(b), hi, fma(vec4<f32>(a), lo, acc));
}

// q4: one block's data word d (32 weights) and scale word s dotted with the block's inputs.
fn q4_dot(d: vec4<u32>, s: u32, xb: Block) -> f32 {
    var v = nibbles_fma(d.x, xb.x[0], xb.x[1], vec4<f32>(0.0));
    v = nibbles_fma(d.y, xb.x[2], xb.x[3], v);
    v = nibbles_fma(d.z, xb.x[4], xb.x[5], v);
    v = nibbles_fma(d.w, xb.x[6], xb.x[7], v);
    let q = (v.x + v.y) + (v.z + v.w);
    return q * bitcast<f32>(s << 16u) + bitcast<f32>(s & 0xffff0000u) * xb.sum;
}

// q8: one block's data words a, b (32 weights) and scale word s dotted with the block's
// inputs.
fn q8_dot(a: vec4<u32>, b: vec4<u32>, s: u32, xb: Block) -> f32 {
    let q = dot(q8x4(a.x), xb.x[0]) + dot(q8x4(a.y), xb.x[1]) + dot(q8x4(a.z), xb.x[2])
        + dot(q8x4(a.w), xb.x[3]) + dot(q8x4(b.x), xb.x[4]) + dot(q8x4(b.y), xb.x[5])
        + dot(q8x4(b.z), xb.x[6]) + dot(q8x4(b.w), xb.x[7]);
    return q * bitcast<f32>(s);
}

// The data words of 128 (q4) or 64 (q8) weights at k of the four rows r: word j of row i in
// d[4 i + j], the words of one j for the four rows one after the other. Loaded together,
// before any is used: a row's first word usually misses the cache, and interleaving its
// loads with the products of the rows before it (as loading each block where it was used
// did) left one miss outstanding at a time; lavapipe decoded q4 at the 7B shape ~8% faster.
fn quant_words(r: vec4<u32>, k: u32) -> array<vec4<u32>, 16> {
    var d: array<vec4<u32>, 16>;
    let e = (r * p.w_stride + k) / select(16u, 32u, WDT == 4u);
    for (var j = 0u; j < 4u; j++) {
        for (var i = 0u; i < 4u; i++) {
            d[4u * i + j] = w_words(e[i] + j);
        }
    }
    return d;
}

// Block j of held words d (quant_words) for the four rows, with their scale words s: q4
// blocks 0-3, q8 blocks 0-1.
fn held_block4(d: array<vec4<u32>, 16>, j: u32, s: vec4<u32>, xb: Block) -> vec4<f32> {
    if WDT == 3u {
        return vec4<f32>(
            q8_dot(d[2u * j], d[2u * j + 1u], s.x, xb),
            q8_dot(d[4u + 2u * j], d[5u + 2u * j], s.y, xb),
            q8_dot(d[8u + 2u * j], d[9u + 2u * j], s.z, xb),
            q8_dot(d[12u + 2u * j], d[13u + 2u * j], s.w, xb),
        );
    }
    return vec4<f32>(q4_dot(d[j], s.x, xb), q4_dot(d[4u + j], s.y, xb), q4_dot(d[8u + j], s.z, xb), q4_dot(d[12u + j], s.w, xb));
}

// Row `row`'s block starting at element k (a multiple of 32) dotted with the block's inputs;
// `s` is the block's scale word.
fn quant_dot(row: u32, k: u32, s: u32, xb: Block) -> f32 {
    let e = row * p.w_stride + k;
    if WDT == 3u {
        return q8_dot(w_words(e / 16u), w_words(e / 16u + 1u), s, xb);
    }
    return q4_dot(w_words(e / 32u), s, xb);
}

// The block at k for the four rows r, with their scale words s.
fn quant_block4(r: vec4<u32>, k: u32, s: vec4<u32>, xb: Block) -> vec4<f32> {
    return vec4<f32>(
        quant_dot(r.x, k, s.x, xb),
        quant_dot(r.y, k, s.y, xb),
        quant_dot(r.z, k, s.z, xb),
        quant_dot(r.w, k, s.w, xb),
    );
}

// Lane j's 16 inputs, for a lane index known only at run time.
fn shuffle16(v: array<vec4<f32>, 4>, j: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        subgroupShuffle(v[0], j), subgroupShuffle(v[1], j), subgroupShuffle(v[2], j), subgroupShuffle(v[3], j),
    );
}

// Lane j's 16 inputs (j a constant: subgroupBroadcast takes one).
fn lane0(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 0u), subgroupBroadcast(v[1], 0u), subgroupBroadcast(v[2], 0u), subgroupBroadcast(v[3], 0u));
}
fn lane1(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 1u), subgroupBroadcast(v[1], 1u), subgroupBroadcast(v[2], 1u), subgroupBroadcast(v[3], 1u));
}
fn lane2(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 2u), subgroupBroadcast(v[1], 2u), subgroupBroadcast(v[2], 2u), subgroupBroadcast(v[3], 2u));
}
fn lane3(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 3u), subgroupBroadcast(v[1], 3u), subgroupBroadcast(v[2], 3u), subgroupBroadcast(v[3], 3u));
}
fn lane4(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 4u), subgroupBroadcast(v[1], 4u), subgroupBroadcast(v[2], 4u), subgroupBroadcast(v[3], 4u));
}
fn lane5(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 5u), subgroupBroadcast(v[1], 5u), subgroupBroadcast(v[2], 5u), subgroupBroadcast(v[3], 5u));
}
fn lane6(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 6u), subgroupBroadcast(v[1], 6u), subgroupBroadcast(v[2], 6u), subgroupBroadcast(v[3], 6u));
}
fn lane7(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v[0], 7u), subgroupBroadcast(v[1], 7u), subgroupBroadcast(v[2], 7u), subgroupBroadcast(v[3], 7u));
}

// Scale words of block b (a constant) for the four rows, from their vec4s of a span.
fn pick(s: array<vec4<u32>, 4>, b: u32) -> vec4<u32> {
    return vec4<u32>(s[0][b], s[1][b], s[2][b], s[3][b]);
}

// sum_k x[t, k] W[r, k] for the four rows r of a quantised W (every lane must call it).
fn quant_rows(t: u32, r: vec4<u32>, lane: u32) -> vec4<f32> {
    let mine = 16u * (lane % 8u);
    var acc = vec4<f32>(0.0);
    var k = 0u;
    for (; k + 128u <= p.k; k += 128u) {
        var d = quant_words(r, k);
        let xs = load_x16(t, k + mine);
        let b = k / 32u;
        let s = array<vec4<u32>, 4>(
            ws[(r.x * p.s_stride + b) / 4u],
            ws[(r.y * p.s_stride + b) / 4u],
            ws[(r.z * p.s_stride + b) / 4u],
            ws[(r.w * p.s_stride + b) / 4u],
        );
        // q4: one quant_words holds the span; q8: the first two blocks, then the last two.
        let j = select(0u, 2u, WDT == 4u);
        acc += held_block4(d, 0u, pick(s, 0u), block_of(lane0(xs), lane1(xs)));
        acc += held_block4(d, 1u, pick(s, 1u), block_of(lane2(xs), lane3(xs)));
        if WDT == 3u {
            d = quant_words(r, k + 64u);
        }
        acc += held_block4(d, j, pick(s, 2u), block_of(lane4(xs), lane5(xs)));
        acc += held_block4(d, j + 1u, pick(s, 3u), block_of(lane6(xs), lane7(xs)));
    }
    // The last, partial span: its blocks are within the rows' padding to 32.
    if k < p.k {
        let xs = load_x16(t, k + mine);
        let blocks = (p.k - k + 31u) / 32u;
        for (var j = 0u; j < blocks; j++) {
            let kb = k + 32u * j;
            let s = vec4<u32>(
                scale_word(r.x, kb / 32u),
                scale_word(r.y, kb / 32u),
                scale_word(r.z, kb / 32u),
                scale_word(r.w, kb / 32u),
            );
            acc += quant_block4(r, kb, s, block_of(shuffle16(xs, 2u * j), shuffle16(xs, 2u * j + 1u)));
        }
    }
    return acc;
}

