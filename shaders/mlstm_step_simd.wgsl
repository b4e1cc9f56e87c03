// mLSTM cell, recurrent form, for CPU adapters (same math and layouts as mlstm_step.wgsl;
// read that file first): ONE workgroup of 8 invocations (one SIMD group on llvmpipe) per
// (head, sequence), no barriers. Invocation `lane` owns the 8-column blocks lane, lane + 8,
// .. of C (two aligned vec4 per row: c_stride is a multiple of 8) and walks the rows four
// at a time with q and k read as vec4; it also owns the 8-row blocks lane, lane + 8, .. of
// n, updates them and sums their share of q . n, and the shares meet by subgroupAdd. The
// host runs these kernels only where one subgroup holds the whole workgroup (a fixed
// subgroup size of at least 8): then no invocation reads what another writes, and a
// barrier, which llvmpipe implements by switching coroutines, is not needed (dropping the
// two barriers per token made the decode step ~25% faster on lavapipe). On llvmpipe, where
// every load or store costs a loop over the SIMD lanes, `step` is several times faster than
// the other recurrent kernels for decode. `step_held` (below) keeps C (in workgroup memory)
// and n (private) over a segment's tokens instead: prefill of small heads. Both sum q . n
// alike (each invocation's quads of its rows of n in order, then subgroupAdd), so one token
// gives the same bits through either.
//
// VEC4 (override): qkv_offset, qkv_stride and DK are multiples of 4, so q and k are read as
// vec4 (through qkv4, the same buffer); otherwise element by element.
//
// Loop iterations of one invocation, counting one more for each loop's exit: at most
// 7 + DH / 4 + ceil(DH / 64) * (20 + DH / 4) per token, plus 1, DH = max(DK, DV).

override VEC4: bool = false;

// Params, bindings 0-4, 6, 7 and log_sigmoid: shaders/common/mlstm_cell.wgsl (appended); C
// (binding 5) through c_load / c_store: shaders/common/state32.wgsl in the registry's
// `mlstm_step_simd`, state64.wgsl (64-bit accesses, SHADER_INT64) in `mlstm_step_simd64`.
@group(0) @binding(8) var<storage, read> qkv4: array<vec4<f32>>;

// qkv[b .. b + 4].
fn qkv_quad(b: u32) -> vec4<f32> {
    if VEC4 {
        return qkv4[b / 4u];
    }
    return vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]);
}

// qkv[b + e] for e < len, zero past it.
fn qkv_tail(b: u32, e: u32, len: u32) -> f32 {
    if e < len {
        return qkv[b + e];
    }
    return 0.0;
}

// One token of a pass over an 8-column block of C (`step` and `step_held`): its stabilised
// gates, q . n' turned into the denominator, and the block's i' v.
struct BlockToken {
    row: u32,
    // q and k of the head at qkv[qb ..] and qkv[kb ..].
    qb: u32,
    kb: u32,
    fa: f32,
    // i' v of the block's eight columns (zero past DV).
    v0: vec4<f32>,
    v1: vec4<f32>,
    den: f32,
    m_new: f32,
}

// i' v of the eight columns j0 .. j0 + 8 of token `row` (of which the first len exist).
fn block_v(row: u32, hd: u32, j0: u32, len: u32, ia: f32) -> array<vec4<f32>, 2> {
    let vb = v_at(row, hd, j0);
    return array<vec4<f32>, 2>(
        ia * vec4<f32>(qkv_tail(vb, 0u, len), qkv_tail(vb, 1u, len), qkv_tail(vb, 2u, len), qkv_tail(vb, 3u, len)),
        ia * vec4<f32>(qkv_tail(vb, 4u, len), qkv_tail(vb, 5u, len), qkv_tail(vb, 6u, len), qkv_tail(vb, 7u, len)),
    );
}

// Rows 4 i .. 4 i + 3 of a block of C (cq: columns 0-3 then 4-7 of each row) after token
// `tok`, with their share of q^T C added into a (columns 0-3, 4-7).
fn quad_update(cq: array<vec4<f32>, 8>, tok: BlockToken, i: u32, a: ptr<function, array<vec4<f32>, 2>>) -> array<vec4<f32>, 8> {
    let q = qkv_quad(tok.qb + 4u * i);
    let k = p.scale * qkv_quad(tok.kb + 4u * i);
    let c = array<vec4<f32>, 8>(
        tok.fa * cq[0] + k.x * tok.v0,
        tok.fa * cq[1] + k.x * tok.v1,
        tok.fa * cq[2] + k.y * tok.v0,
        tok.fa * cq[3] + k.y * tok.v1,
        tok.fa * cq[4] + k.z * tok.v0,
        tok.fa * cq[5] + k.z * tok.v1,
        tok.fa * cq[6] + k.w * tok.v0,
        tok.fa * cq[7] + k.w * tok.v1,
    );
    (*a)[0] += q.x * c[0] + q.y * c[2] + q.z * c[4] + q.w * c[6];
    (*a)[1] += q.x * c[1] + q.y * c[3] + q.z * c[5] + q.w * c[7];
    return c;
}

// h of token `tok` for the columns j0 .. j0 + min(len, 8), from q^T C in a.
fn block_h(tok: BlockToken, hd: u32, j0: u32, len: u32, a: array<vec4<f32>, 2>) {
    let hb = h_at(tok.row, hd, j0);
    for (var e = 0u; e < 4u; e++) {
        if e < len {
            h[hb + e] = a[0][e] / tok.den;
        }
        if e + 4u < len {
            h[hb + 4u + e] = a[1][e] / tok.den;
        }
    }
}

@compute @workgroup_size(8)
fn step(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let dv = p.v_dim;
    let nbase = sh * dk;
    let cs4 = p.c_stride / 4u;
    let blocks = (dv + 7u) / 8u;
    let d4 = dk - dk % 4u;
    var mv = m[sh];
    let end = p.token_base + p.seg_tokens;
    for (var t = p.token_base; t < end; t++) {
        let row = b * p.tokens + t;
        let qb = q_at(row, hd, 0u);
        let kb = k_at(row, hd, 0u);
        let g = gate_step(row, hd, mv);
        let fa = g.fa;
        let ik = g.ia * p.scale;

        // q . n' (n' = fa n + ia k scale), each invocation updating its own rows of n.
        var qn = 0.0;
        for (var r0 = 8u * lane; r0 < dk; r0 += 64u) {
            let rows = min(8u, dk - r0);
            var e = 0u;
            for (; e + 4u <= rows; e += 4u) {
                let i = nbase + r0 + e;
                let nv = fa * vec4<f32>(n[i], n[i + 1u], n[i + 2u], n[i + 3u]) + ik * qkv_quad(kb + r0 + e);
                n[i] = nv.x;
                n[i + 1u] = nv.y;
                n[i + 2u] = nv.z;
                n[i + 3u] = nv.w;
                qn += dot(qkv_quad(qb + r0 + e), nv);
            }
            for (; e < rows; e++) {
                let i = nbase + r0 + e;
                let nv = fa * n[i] + ik * qkv[kb + r0 + e];
                n[i] = nv;
                qn += qkv[qb + r0 + e] * nv;
            }
        }
        let den = max(abs(subgroupAdd(qn)), exp(-g.m_new)) + p.eps;

        for (var blk = lane; blk < blocks; blk += 8u) {
            let j0 = 8u * blk;
            let len = dv - j0;
            let v = block_v(row, hd, j0, len, g.ia);
            let tok = BlockToken(row, qb, kb, g.fa, v[0], v[1], den, g.m_new);
            var a = array<vec4<f32>, 2>();
            var ci = nbase * cs4 + 2u * blk;
            var r = 0u;
            // Four rows per iteration (q and k of the rows as one vec4 each), then the rest.
            for (; r < d4; r += 4u) {
                let cq = array<vec4<f32>, 8>(
                    c_load(ci), c_load(ci + 1u), c_load(ci + cs4), c_load(ci + cs4 + 1u),
                    c_load(ci + 2u * cs4), c_load(ci + 2u * cs4 + 1u), c_load(ci + 3u * cs4), c_load(ci + 3u * cs4 + 1u),
                );
                let nc = quad_update(cq, tok, r / 4u, &a);
                c_store(ci, nc[0]);
                c_store(ci + 1u, nc[1]);
                c_store(ci + cs4, nc[2]);
                c_store(ci + cs4 + 1u, nc[3]);
                c_store(ci + 2u * cs4, nc[4]);
                c_store(ci + 2u * cs4 + 1u, nc[5]);
                c_store(ci + 3u * cs4, nc[6]);
                c_store(ci + 3u * cs4 + 1u, nc[7]);
                ci += 4u * cs4;
            }
            for (; r < dk; r++) {
                let q = qkv[qb + r];
                let k = p.scale * qkv[kb + r];
                let c0 = g.fa * c_load(ci) + k * tok.v0;
                let c1 = g.fa * c_load(ci + 1u) + k * tok.v1;
                c_store(ci, c0);
                c_store(ci + 1u, c1);
                a[0] += q * c0;
                a[1] += q * c1;
                ci += cs4;
            }
            block_h(tok, hd, j0, len, a);
        }
        mv = g.m_new;
    }
    if lane == 0u {
        m[sh] = mv;
    }
}

// Rows of C (DK) that `step_held` holds per invocation, and where: invocation l's 8-column
// block, row r, at held[2 HELD_ROWS l + 2 r] (columns 0-3) and the next vec4 (4-7); 16 KiB,
// WebGPU's guaranteed workgroup memory. Only invocation l touches its region, so no
// barriers. A private array in its place (the first version) took llvmpipe ~4.8 s to
// compile, this ~0.2 s, and ran no faster (lavapipe, 2026-12-04: 10.6-11.0 against
// 10.1-10.2 ms for 512 tokens of 4 heads x 64).
const HELD_ROWS = 64u;
var<workgroup> held: array<vec4<f32>, 16u * HELD_ROWS>;

// Token `row` of head hd for `step_held`, from the stabiliser mv: this invocation's rows of
// n updated in nl (its nq quads, rows r0 ..) and q . n' summed as `step` sums it; j0 and
// len are its first column and how many of its eight exist. Every invocation calls it
// together (subgroupAdd).
fn held_token(row: u32, hd: u32, mv: f32, nl: ptr<function, array<vec4<f32>, 2>>, nq: u32, r0: u32, j0: u32, len: u32) -> BlockToken {
    let qb = q_at(row, hd, 0u);
    let kb = k_at(row, hd, 0u);
    let g = gate_step(row, hd, mv);
    let ik = g.ia * p.scale;
    var qn = 0.0;
    for (var j = 0u; j < nq; j++) {
        let nv = g.fa * (*nl)[j] + ik * qkv_quad(kb + r0 + 4u * j);
        (*nl)[j] = nv;
        qn += dot(qkv_quad(qb + r0 + 4u * j), nv);
    }
    let den = max(abs(subgroupAdd(qn)), exp(-g.m_new)) + p.eps;
    let v = block_v(row, hd, j0, len, g.ia);
    return BlockToken(row, qb, kb, g.fa, v[0], v[1], den, g.m_new);
}

// The quad of rows at `held` index r (eight vec4), and its store.
fn held_load(r: u32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(held[r], held[r + 1u], held[r + 2u], held[r + 3u], held[r + 4u], held[r + 5u], held[r + 6u], held[r + 7u]);
}

fn held_store(r: u32, cq: array<vec4<f32>, 8>) {
    held[r] = cq[0];
    held[r + 1u] = cq[1];
    held[r + 2u] = cq[2];
    held[r + 3u] = cq[3];
    held[r + 4u] = cq[4];
    held[r + 5u] = cq[5];
    held[r + 6u] = cq[6];
    held[r + 7u] = cq[7];
}

// `step` for heads with DK <= 64 (a multiple of 4) and DV <= 64, the prefill of the
// NeurIPS blocks' small heads on CPU adapters: each invocation holds its one 8-column block
// of C (all DK rows, in `held`) and its 8-row block of n (private) for the segment's tokens,
// loading them once before the token loop and storing them once after it, where `step`
// loads and stores C and n at every token. Tokens go four per pass over C (each row quad
// loaded once, updated for the four in turn, stored once; the last few one per pass): the
// same arithmetic, element for element, as one pass per token, with a quarter of the
// accesses to `held` (lavapipe, 512 tokens of 4 heads x 64: 10.1 ms one token per pass,
// 7.7 two, 5.2 four). Invocations past DV own no columns: they skip the passes over C.
//
// Loop iterations of one invocation, counting one more for each loop's exit: at most
// 2 * (DK + 1) + 8 outside the passes, 34 + DK / 4 per pass of four tokens and 10 + DK / 4
// per token passed alone (at most 3 per segment).
@compute @workgroup_size(8)
fn step_held(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let dv = p.v_dim;
    let nbase = sh * dk;
    let cs4 = p.c_stride / 4u;
    let j0 = 8u * lane;
    let mine = j0 < dv;
    let len = select(0u, dv - j0, mine);
    // Row quads of C this invocation passes over: none past DV (its region of `held` is
    // never written).
    let mine_quads = select(0u, dk / 4u, mine);
    // This invocation's region of `held`.
    let lb = lane * 2u * HELD_ROWS;
    let c0 = nbase * cs4 + 2u * lane;
    if mine {
        for (var r = 0u; r < dk; r++) {
            held[lb + 2u * r] = c_load(c0 + r * cs4);
            held[lb + 2u * r + 1u] = c_load(c0 + r * cs4 + 1u);
        }
    }
    // This invocation's rows of n (its one 8-row block, at 8 lane) as nq quads.
    let r0 = 8u * lane;
    let nq = select(0u, min(8u, dk - r0) / 4u, r0 < dk);
    var nl = array<vec4<f32>, 2>();
    for (var j = 0u; j < nq; j++) {
        let e = nbase + r0 + 4u * j;
        nl[j] = vec4<f32>(n[e], n[e + 1u], n[e + 2u], n[e + 3u]);
    }
    var mv = m[sh];
    let end = p.token_base + p.seg_tokens;
    var t = p.token_base;
    for (; t + 3u < end; t += 4u) {
        let x = held_token(b * p.tokens + t, hd, mv, &nl, nq, r0, j0, len);
        let y = held_token(b * p.tokens + t + 1u, hd, x.m_new, &nl, nq, r0, j0, len);
        let z = held_token(b * p.tokens + t + 2u, hd, y.m_new, &nl, nq, r0, j0, len);
        let w = held_token(b * p.tokens + t + 3u, hd, z.m_new, &nl, nq, r0, j0, len);
        var ax = array<vec4<f32>, 2>();
        var ay = array<vec4<f32>, 2>();
        var az = array<vec4<f32>, 2>();
        var aw = array<vec4<f32>, 2>();
        for (var i = 0u; i < mine_quads; i++) {
            let r = lb + 8u * i;
            held_store(r, quad_update(quad_update(quad_update(quad_update(held_load(r), x, i, &ax), y, i, &ay), z, i, &az), w, i, &aw));
        }
        block_h(x, hd, j0, len, ax);
        block_h(y, hd, j0, len, ay);
        block_h(z, hd, j0, len, az);
        block_h(w, hd, j0, len, aw);
        mv = w.m_new;
    }
    for (; t < end; t++) {
        let x = held_token(b * p.tokens + t, hd, mv, &nl, nq, r0, j0, len);
        var ax = array<vec4<f32>, 2>();
        for (var i = 0u; i < mine_quads; i++) {
            let r = lb + 8u * i;
            held_store(r, quad_update(held_load(r), x, i, &ax));
        }
        block_h(x, hd, j0, len, ax);
        mv = x.m_new;
    }
    if mine {
        for (var r = 0u; r < dk; r++) {
            c_store(c0 + r * cs4, held[lb + 2u * r]);
            c_store(c0 + r * cs4 + 1u, held[lb + 2u * r + 1u]);
        }
    }
    for (var j = 0u; j < nq; j++) {
        let e = nbase + r0 + 4u * j;
        n[e] = nl[j].x;
        n[e + 1u] = nl[j].y;
        n[e + 2u] = nl[j].z;
        n[e + 3u] = nl[j].w;
    }
    if lane == 0u {
        m[sh] = mv;
    }
}
