// mLSTM cell, chunkwise-parallel form, "wide" variant of mlstm_chunk.wgsl (same math and
// layouts; read that file first). One workgroup of 64 per (head, sequence): grid (NH, B).
// Invocation lid owns the eight columns j0 = 8 lid .. j0 + 8 of C (two vec4 per row; DV <=
// 512) and keeps, for the 32 tokens of a chunk, their q^T C0 / num accumulators and their
// exp(a_s - M_e) scale v_s terms in registers (eight Quad variables of four tokens each:
// named variables rather than an array, so that no compiler moves them to memory). The
// chunk's q and k stream through workgroup memory in tiles of TI rows, stored
// [row][4 tokens] so that one vec4 load serves four tokens; each invocation also
// accumulates a 4x4 block of the pair products q_t . k_s. One workgroup holds the whole
// head, so n and m are written back directly. On lavapipe, where every load or store of one
// value per invocation costs a loop over the SIMD lanes, this is 1.2x (DH = 64) to 12x
// (DH = 512) faster than mlstm_chunk.wgsl; the host picks it on CPU adapters.
//
// Loop iterations of one invocation, counting one more for each loop's exit (llvmpipe ends
// all loops of an invocation after 65535 in total, so the host splits long inputs into
// segments): at most 725 + 92 * ceil(DH / 32) + 34 * ceil(DH / 64) per chunk, plus
// 11 + ceil(DH / 64), DH = max(DK, DV).

// Params, bindings 0-4, 6, 7 and the input helpers: shaders/common/mlstm_cell.wgsl; the chunk
// constants, workgroup arrays ns .. dn and gate_prefix: shaders/common/mlstm_chunk.wgsl
// (appended).
@group(0) @binding(5) var<storage, read_write> c: array<vec4<f32>>;

var<workgroup> qt: array<vec4<f32>, 256>; // [ii][t4]: q of tokens 4 t4 .. at row i0 + ii
var<workgroup> kt: array<vec4<f32>, 256>; // [ii][s4]: k likewise
var<workgroup> dm: array<vec4<f32>, 256>; // [s][t4]: D_ts of tokens 4 t4 .. (zero for s > t)

// Eight consecutive elements of qkv from `at`, zero from the `valid`-th on.
fn load8(at: u32, valid: u32) -> array<vec4<f32>, 2> {
    var v = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var e = 0u; e < 4u; e++) {
        if e < valid {
            v[0][e] = qkv[at + e];
        }
        if e + 4u < valid {
            v[1][e] = qkv[at + 4u + e];
        }
    }
    return v;
}

// What an invocation keeps of four tokens (or keys) 4 t4 + e of a chunk, for its eight
// columns j0 .. j0 + 4 ("lo") and j0 + 4 .. j0 + 8 ("hi"); column e of each matrix belongs to
// token (key) 4 t4 + e.
struct Quad {
    // q_t^T C0 (then num).
    acc_lo: mat4x4<f32>,
    acc_hi: mat4x4<f32>,
    // exp(a_s - M_e) scale v_s, zero past the chunk's end.
    gv_lo: mat4x4<f32>,
    gv_hi: mat4x4<f32>,
}

fn quad_start(row0: u32, hd: u32, j0: u32, valid: u32, t4: u32, len: u32) -> Quad {
    var g: array<array<vec4<f32>, 2>, 4>;
    for (var e = 0u; e < 4u; e++) {
        let s = 4u * t4 + e;
        if s < len {
            let v = load8(v_at(row0 + s, hd, j0), valid);
            let w = gs[s] * p.scale;
            g[e] = array<vec4<f32>, 2>(w * v[0], w * v[1]);
        }
    }
    let zero = mat4x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    return Quad(
        zero,
        zero,
        mat4x4<f32>(g[0][0], g[1][0], g[2][0], g[3][0]),
        mat4x4<f32>(g[0][1], g[1][1], g[2][1], g[3][1]),
    );
}

// One row of C0 (c_lo, c_hi) with the four tokens' q at that row (qv).
fn quad_row(qd: Quad, c_lo: vec4<f32>, c_hi: vec4<f32>, qv: vec4<f32>) -> Quad {
    var r = qd;
    r.acc_lo += outer(c_lo, qv);
    r.acc_hi += outer(c_hi, qv);
    return r;
}

// acc times exp(m0 - M_t) of each of the four tokens.
fn quad_scale(qd: Quad, t4: u32, m0: f32) -> Quad {
    let t = 4u * t4;
    let w = exp(vec4<f32>(m0) - vec4<f32>(mx[t], mx[t + 1u], mx[t + 2u], mx[t + 3u]));
    var r = qd;
    r.acc_lo = scale_columns(qd.acc_lo, w);
    r.acc_hi = scale_columns(qd.acc_hi, w);
    return r;
}

// acc += D_ts v_s for the four tokens t (dv) of one key s (v).
fn quad_add(qd: Quad, v: array<vec4<f32>, 2>, dv: vec4<f32>) -> Quad {
    var r = qd;
    r.acc_lo += outer(v[0], dv);
    r.acc_hi += outer(v[1], dv);
    return r;
}

// h = num / den of the four tokens (those before `len`), stored to h.
fn quad_store(qd: Quad, row0: u32, hd: u32, j0: u32, valid: u32, t4: u32, len: u32) {
    for (var e = 0u; e < 4u; e++) {
        let t = 4u * t4 + e;
        if t < len {
            let hb = h_at(row0 + t, hd, j0);
            store8(hb, valid, qd.acc_lo[e] / dn[t], qd.acc_hi[e] / dn[t]);
        }
    }
}

// Writes lo and hi (eight values) to h at `at`, the first `valid` of them.
fn store8(at: u32, valid: u32, lo: vec4<f32>, hi: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        if e < valid {
            h[at + e] = lo[e];
        }
        if e + 4u < valid {
            h[at + 4u + e] = hi[e];
        }
    }
}

// The outer product c w^T: column e is w[e] c.
fn outer(c: vec4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w.x * c, w.y * c, w.z * c, w.w * c);
}

// Column e of a times w[e].
fn scale_columns(a: mat4x4<f32>, w: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w.x * a[0], w.y * a[1], w.z * a[2], w.w * a[3]);
}

@compute @workgroup_size(64)
fn chunk(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let dv = p.v_dim;
    let cs4 = p.c_stride / 4u;
    // Invocations past DV repeat the last columns (so loops stay uniform) and store nothing.
    let j0 = min(8u * lid, ((dv - 1u) / 8u) * 8u);
    let live = 8u * lid < dv;
    let valid = select(0u, min(8u, dv - j0), live);
    let bt = lid / L4;
    let bs = lid % L4;
    for (var i = lid; i < MAX_DH; i += WG) {
        var v = 0.0;
        if i < dk { v = n[sh * dk + i]; }
        ns[i] = v;
    }
    var m0 = m[sh];
    let end = p.token_base + p.seg_tokens;
    for (var c0 = p.token_base; c0 < end; c0 += L) {
        let len = min(L, end - c0);
        let row0 = b * p.tokens + c0;
        if lid == 0u {
            gate_prefix(row0, hd, len, m0);
        }
        workgroupBarrier();
        let g0 = exp(m0 - mx[L - 1u]);
        // One Quad per four tokens (keys): named variables, not an array, so they stay in
        // registers on every compiler.
        var qd0 = quad_start(row0, hd, j0, valid, 0u, len);
        var qd1 = quad_start(row0, hd, j0, valid, 1u, len);
        var qd2 = quad_start(row0, hd, j0, valid, 2u, len);
        var qd3 = quad_start(row0, hd, j0, valid, 3u, len);
        var qd4 = quad_start(row0, hd, j0, valid, 4u, len);
        var qd5 = quad_start(row0, hd, j0, valid, 5u, len);
        var qd6 = quad_start(row0, hd, j0, valid, 6u, len);
        var qd7 = quad_start(row0, hd, j0, valid, 7u, len);
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        var qn = vec4<f32>(0.0);
        for (var i0 = 0u; i0 < dk; i0 += TI) {
            // (row ii, tokens 4 t4 ..): 256 vec4 of q and k, four per invocation.
            for (var e = lid; e < TI * L4; e += WG) {
                let ii = e / L4;
                let t4 = e % L4;
                var qv = vec4<f32>(0.0);
                var kv = vec4<f32>(0.0);
                if i0 + ii < dk {
                    for (var r = 0u; r < 4u; r++) {
                        let t = t4 * 4u + r;
                        if t < len {
                            qv[r] = qkv[q_at(row0 + t, hd, i0 + ii)];
                            kv[r] = qkv[k_at(row0 + t, hd, i0 + ii)];
                        }
                    }
                }
                qt[e] = qv;
                kt[e] = kv;
            }
            workgroupBarrier();
            for (var ii = 0u; ii < TI; ii++) {
                let qv = qt[ii * L4 + bt];
                let kv = kt[ii * L4 + bs];
                s0 += qv.x * kv;
                s1 += qv.y * kv;
                s2 += qv.z * kv;
                s3 += qv.w * kv;
                qn += qv * ns[i0 + ii];
            }
            // Each row of C: q^T C0 into acc, and C = g0 C0 + sum_s k_s gv_s.
            let iend = min(TI, dk - i0);
            var ci = (sh * dk + i0) * cs4 + j0 / 4u;
            for (var ii = 0u; ii < iend; ii++) {
                let c0v = c[ci];
                let c1v = c[ci + 1u];
                let b = ii * L4;
                qd0 = quad_row(qd0, c0v, c1v, qt[b]);
                qd1 = quad_row(qd1, c0v, c1v, qt[b + 1u]);
                qd2 = quad_row(qd2, c0v, c1v, qt[b + 2u]);
                qd3 = quad_row(qd3, c0v, c1v, qt[b + 3u]);
                qd4 = quad_row(qd4, c0v, c1v, qt[b + 4u]);
                qd5 = quad_row(qd5, c0v, c1v, qt[b + 5u]);
                qd6 = quad_row(qd6, c0v, c1v, qt[b + 6u]);
                qd7 = quad_row(qd7, c0v, c1v, qt[b + 7u]);
                let n0 = g0 * c0v + qd0.gv_lo * kt[b] + qd1.gv_lo * kt[b + 1u]
                    + qd2.gv_lo * kt[b + 2u] + qd3.gv_lo * kt[b + 3u] + qd4.gv_lo * kt[b + 4u]
                    + qd5.gv_lo * kt[b + 5u] + qd6.gv_lo * kt[b + 6u] + qd7.gv_lo * kt[b + 7u];
                let n1 = g0 * c1v + qd0.gv_hi * kt[b] + qd1.gv_hi * kt[b + 1u]
                    + qd2.gv_hi * kt[b + 2u] + qd3.gv_hi * kt[b + 3u] + qd4.gv_hi * kt[b + 4u]
                    + qd5.gv_hi * kt[b + 5u] + qd6.gv_hi * kt[b + 6u] + qd7.gv_hi * kt[b + 7u];
                if live {
                    c[ci] = n0;
                    c[ci + 1u] = n1;
                }
                ci += cs4;
            }
            workgroupBarrier();
        }
        // D_ts for t = 4 bt + r, s = 4 bs + e, stored [s][t4].
        let sacc = array<vec4<f32>, 4>(s0, s1, s2, s3);
        for (var e = 0u; e < 4u; e++) {
            let s = bs * 4u + e;
            var d = vec4<f32>(0.0);
            for (var r = 0u; r < 4u; r++) {
                let t = bt * 4u + r;
                if s <= t && t < len {
                    d[r] = sacc[r][e] * p.scale * exp(aa[s] - mx[t]);
                }
            }
            dm[s * L4 + bt] = d;
        }
        if bs == 0u {
            for (var r = 0u; r < 4u; r++) {
                dn[bt * 4u + r] = qn[r];
            }
        }
        workgroupBarrier();
        if lid < len {
            var d = exp(m0 - mx[lid]) * dn[lid];
            for (var s = 0u; s <= lid; s++) {
                d += dm[s * L4 + lid / 4u][lid % 4u];
            }
            dn[lid] = max(abs(d), exp(-(bb[lid] + mx[lid]))) + p.eps;
        }
        // n after the chunk; the tile loop is done reading the old n.
        for (var i = lid; i < dk; i += WG) {
            var nv = g0 * ns[i];
            for (var s = 0u; s < len; s++) {
                nv += gs[s] * qkv[k_at(row0 + s, hd, i)] * p.scale;
            }
            ns[i] = nv;
        }
        workgroupBarrier();
        // num = exp(m0 - M_t) q_t^T C0 + sum_s D_ts v_s, then h = num / den.
        qd0 = quad_scale(qd0, 0u, m0);
        qd1 = quad_scale(qd1, 1u, m0);
        qd2 = quad_scale(qd2, 2u, m0);
        qd3 = quad_scale(qd3, 3u, m0);
        qd4 = quad_scale(qd4, 4u, m0);
        qd5 = quad_scale(qd5, 5u, m0);
        qd6 = quad_scale(qd6, 6u, m0);
        qd7 = quad_scale(qd7, 7u, m0);
        for (var s = 0u; s < len; s++) {
            let v = load8(v_at(row0 + s, hd, j0), valid);
            let b = s * L4;
            qd0 = quad_add(qd0, v, dm[b]);
            qd1 = quad_add(qd1, v, dm[b + 1u]);
            qd2 = quad_add(qd2, v, dm[b + 2u]);
            qd3 = quad_add(qd3, v, dm[b + 3u]);
            qd4 = quad_add(qd4, v, dm[b + 4u]);
            qd5 = quad_add(qd5, v, dm[b + 5u]);
            qd6 = quad_add(qd6, v, dm[b + 6u]);
            qd7 = quad_add(qd7, v, dm[b + 7u]);
        }
        if live {
            quad_store(qd0, row0, hd, j0, valid, 0u, len);
            quad_store(qd1, row0, hd, j0, valid, 1u, len);
            quad_store(qd2, row0, hd, j0, valid, 2u, len);
            quad_store(qd3, row0, hd, j0, valid, 3u, len);
            quad_store(qd4, row0, hd, j0, valid, 4u, len);
            quad_store(qd5, row0, hd, j0, valid, 5u, len);
            quad_store(qd6, row0, hd, j0, valid, 6u, len);
            quad_store(qd7, row0, hd, j0, valid, 7u, len);
        }
        m0 = bb[len - 1u] + mx[len - 1u];
        // The chunk's workgroup arrays are rewritten by the next chunk.
        workgroupBarrier();
    }
    for (var i = lid; i < dk; i += WG) {
        n[sh * dk + i] = ns[i];
    }
    if lid == 0u {
        m[sh] = m0;
    }
}
