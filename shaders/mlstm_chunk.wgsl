// mLSTM cell, chunkwise-parallel form: the same recurrence as mlstm_step.wgsl, computed in
// chunks of L tokens. Within a chunk starting from the state (C0, n0, m0), with
// b_t = sum_{l<=t} logsig(f_l) (chunk-local), a_s = i_s - b_s and M_t = max(m0, max_{s<=t} a_s):
//   m_t  = b_t + M_t                      (the recurrent stabiliser, unrolled)
//   num  = exp(m0 - M_t) q_t^T C0 + sum_{s<=t} D_ts v_s,  D_ts = (q_t . k_s) scale exp(a_s - M_t)
//   q.n  = exp(m0 - M_t) q_t . n0  + sum_{s<=t} D_ts
//   h_t  = num / (max(|q.n|, exp(-m_t)) + eps)
// and the state after the chunk (last token e):
//   C = exp(m0 - M_e) C0 + sum_s exp(a_s - M_e) kk_s v_s^T, n likewise with v = 1, m = m_e.
// Every exponent is <= 0.
//
// Layouts: shaders/common/mlstm_cell.wgsl; this dispatch covers tokens token_base ..
// token_base + seg_tokens of every sequence (rows b * tokens + t). pending: (slots, NH,
// DK + 1) indexed by the batch position b: [n | m] after the segment.
//
// chunk:  one workgroup of 64 per (64-column block of C, head, sequence): grid
//         (ceil(DV / 64), NH, B). Invocation lid owns column j = block * 64 + lid. Rows of
//         C are visited in tiles of TI, with the chunk's q and k tiles in workgroup memory
//         (stored [row][token], so four tokens read as one vec4); one pass over a tile
//         accumulates q^T C0, updates C, and accumulates a 4x4 block of the products
//         q_t . k_s per invocation. Every block keeps its own copy of n and m (identical
//         arithmetic); block 0 writes them to `pending`, because other blocks of the same
//         head may still be reading the old n and m.
// commit: copies `pending` into n and m; grid (NH, B).
// DK <= 512.
//
// Loop iterations of one invocation, counting one more for each loop's exit (llvmpipe ends
// all loops of an invocation after 65535 in total, so the host splits long inputs into
// segments): at most 544 + 405 * ceil(DH / 32) + 34 * ceil(DH / 64) per chunk, plus
// 12 + ceil(DH / 64), DH = max(DK, DV).

// Params, bindings 0-4, 6, 7 and the input helpers: shaders/common/mlstm_cell.wgsl; the chunk
// constants, workgroup arrays ns .. dn and gate_prefix: shaders/common/mlstm_chunk.wgsl
// (appended).
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(8) var<storage, read_write> pending: array<f32>;

var<workgroup> qt: array<f32, 1024>; // TI x L: q[token t][row i0 + ii] at ii * L + t
var<workgroup> kt: array<f32, 1024>; // TI x L: k likewise
var<workgroup> dm: array<f32, 1024>; // L x L: D_ts at s * L + t (zero for s > t)

// Four consecutive entries of a workgroup array, starting at a multiple of 4.
fn qt4(at: u32) -> vec4<f32> {
    return vec4<f32>(qt[at], qt[at + 1u], qt[at + 2u], qt[at + 3u]);
}

fn kt4(at: u32) -> vec4<f32> {
    return vec4<f32>(kt[at], kt[at + 1u], kt[at + 2u], kt[at + 3u]);
}

fn dm4(at: u32) -> vec4<f32> {
    return vec4<f32>(dm[at], dm[at + 1u], dm[at + 2u], dm[at + 3u]);
}

fn gs4(at: u32) -> vec4<f32> {
    return vec4<f32>(gs[at], gs[at + 1u], gs[at + 2u], gs[at + 3u]);
}

@compute @workgroup_size(64)
fn chunk(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = wid.x * WG + lid;
    let hd = wid.y;
    let b = wid.z;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let dv = p.v_dim;
    let live = j < dv;
    // This invocation's 4x4 block of the pair products: tokens 4 bt .., keys 4 bs ...
    let bt = lid / L4;
    let bs = lid % L4;
    for (var i = lid; i < MAX_DH; i += WG) {
        var v = 0.0;
        if i < dk {
            v = n[sh * dk + i];
        }
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
        // gv = exp(a_s - M_e) scale v_s[j] over s;  acc = q_t^T C0[:, j] over t, later num.
        var gv: array<vec4<f32>, L4>;
        var acc: array<vec4<f32>, L4>;
        for (var s4 = 0u; s4 < L4; s4++) {
            var v = vec4<f32>(0.0);
            for (var e = 0u; e < 4u; e++) {
                let s = s4 * 4u + e;
                if live && s < len {
                    v[e] = qkv[v_at(row0 + s, hd, j)];
                }
            }
            gv[s4] = gs4(s4 * 4u) * v * p.scale;
        }
        var sacc: array<vec4<f32>, 4>;
        var qn = vec4<f32>(0.0);
        for (var i0 = 0u; i0 < dk; i0 += TI) {
            for (var e = lid; e < L * TI; e += WG) {
                let t = e / TI;
                let ii = e % TI;
                var qv = 0.0;
                var kv = 0.0;
                if t < len && i0 + ii < dk {
                    qv = qkv[q_at(row0 + t, hd, i0 + ii)];
                    kv = qkv[k_at(row0 + t, hd, i0 + ii)];
                }
                qt[ii * L + t] = qv;
                kt[ii * L + t] = kv;
            }
            workgroupBarrier();
            if bs <= bt {
                for (var ii = 0u; ii < TI; ii++) {
                    let qv = qt4(ii * L + bt * 4u);
                    let kv = kt4(ii * L + bs * 4u);
                    sacc[0] += qv.x * kv;
                    sacc[1] += qv.y * kv;
                    sacc[2] += qv.z * kv;
                    sacc[3] += qv.w * kv;
                }
            }
            if lid < L4 {
                for (var ii = 0u; ii < TI; ii++) {
                    qn += qt4(ii * L + lid * 4u) * ns[i0 + ii];
                }
            }
            if live {
                let iend = min(TI, dk - i0);
                var ci = (sh * dk + i0) * p.c_stride + j;
                for (var ii = 0u; ii < iend; ii++) {
                    let cv = c[ci];
                    var cn = g0 * cv;
                    for (var t4 = 0u; t4 < L4; t4++) {
                        acc[t4] += qt4(ii * L + t4 * 4u) * cv;
                        cn += dot(kt4(ii * L + t4 * 4u), gv[t4]);
                    }
                    c[ci] = cn;
                    ci += p.c_stride;
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let t = bt * 4u + r;
            for (var e = 0u; e < 4u; e++) {
                let s = bs * 4u + e;
                var d = 0.0;
                if s <= t && t < len {
                    d = sacc[r][e] * p.scale * exp(aa[s] - mx[t]);
                }
                dm[s * L + t] = d;
            }
        }
        if lid < L4 {
            for (var e = 0u; e < 4u; e++) {
                dn[lid * 4u + e] = qn[e];
            }
        }
        workgroupBarrier();
        if lid < len {
            var d = exp(m0 - mx[lid]) * dn[lid];
            for (var s = 0u; s <= lid; s++) {
                d += dm[s * L + lid];
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
        if live {
            for (var t4 = 0u; t4 < L4; t4++) {
                let t = t4 * 4u;
                acc[t4] *= exp(vec4<f32>(m0) - vec4<f32>(mx[t], mx[t + 1u], mx[t + 2u], mx[t + 3u]));
            }
            for (var s = 0u; s < len; s++) {
                let vs = qkv[v_at(row0 + s, hd, j)];
                for (var t4 = 0u; t4 < L4; t4++) {
                    acc[t4] += dm4(s * L + t4 * 4u) * vs;
                }
            }
            for (var t = 0u; t < len; t++) {
                h[h_at(row0 + t, hd, j)] = acc[t / 4u][t % 4u] / dn[t];
            }
        }
        m0 = bb[len - 1u] + mx[len - 1u];
        // The chunk's workgroup arrays are rewritten by the next chunk.
        workgroupBarrier();
    }
    if wid.x == 0u {
        let pb = (b * p.heads + hd) * (dk + 1u);
        for (var i = lid; i < dk; i += WG) {
            pending[pb + i] = ns[i];
        }
        if lid == 0u {
            pending[pb + dk] = m0;
        }
    }
}

@compute @workgroup_size(64)
fn commit(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let pb = (b * p.heads + hd) * (dk + 1u);
    for (var i = lid; i < dk; i += WG) {
        n[sh * dk + i] = pending[pb + i];
    }
    if lid == 0u {
        m[sh] = pending[pb + dk];
    }
}
