// mLSTM cell, recurrent form (MODEL.md section 5, XLSTM_LARGE.md), the token loop inside the
// kernel:
//   m' = max(logsig(f) + m, i);  f' = exp(logsig(f) + m - m');  i' = exp(i - m')
//   C  = f' C + i' kk v^T;  n = f' n + i' kk;  kk = k * scale (scale = 1 / sqrt(DK))
//   h  = (q^T C) / (max(|q . n|, exp(-m')) + eps)
// (scaling k or q by 1 / sqrt(DK) gives the same h: the NeurIPS cell scales k, xLSTM-Large
// q; the state holds C and n of the scaled k.)
//
// Layouts: shaders/common/mlstm_cell.wgsl. This dispatch covers tokens token_base ..
// token_base + seg_tokens of every sequence.
//
// One workgroup of 64 per (head, sequence): grid (NH, B). Invocation lid owns the columns
// j = lid, lid + 64, .. of C (j < DV): it updates them and computes h_j = sum_i q_i C[i][j]
// alone; q . n is a workgroup reduction. DK <= 512.
//
// Loop iterations of one invocation, counting one more for each loop's exit (llvmpipe ends
// all loops of an invocation after 65535 in total, so the host splits long inputs into
// segments): at most 11 + ceil(DH / 64) * (DH / 4 + 8) per token, plus 1, DH = max(DK, DV).

const WG: u32 = 64u;
const MAX_DH: u32 = 512u;

// Params, bindings 0-4, 6, 7 and log_sigmoid: shaders/common/mlstm_cell.wgsl (appended).
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

var<workgroup> qs: array<f32, MAX_DH>;
var<workgroup> ks: array<f32, MAX_DH>;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn step(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let dv = p.v_dim;
    let cs = p.c_stride;
    let cbase = sh * dk * cs;
    let nbase = sh * dk;
    var mv = m[sh];
    let end = p.token_base + p.seg_tokens;
    for (var t = p.token_base; t < end; t++) {
        let row = b * p.tokens + t;
        for (var i = lid; i < dk; i += WG) {
            qs[i] = qkv[q_at(row, hd, i)];
            ks[i] = qkv[k_at(row, hd, i)] * p.scale;
        }
        let g = gate_step(row, hd, mv);
        let fa = g.fa;
        let ia = g.ia;
        workgroupBarrier();

        var part = 0.0;
        for (var i = lid; i < dk; i += WG) {
            let nv = fa * n[nbase + i] + ia * ks[i];
            n[nbase + i] = nv;
            part += qs[i] * nv;
        }
        red[lid] = part;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if lid < s {
                red[lid] += red[lid + s];
            }
            workgroupBarrier();
        }
        let den = max(abs(red[0]), exp(-g.m_new)) + p.eps;

        for (var j = lid; j < dv; j += WG) {
            let vj = ia * qkv[v_at(row, hd, j)];
            var acc = 0.0;
            var ci = cbase + j;
            var i = 0u;
            // Four rows per iteration, then the rest.
            for (; i + 4u <= dk; i += 4u) {
                let c0 = fa * c[ci] + ks[i] * vj;
                let c1 = fa * c[ci + cs] + ks[i + 1u] * vj;
                let c2 = fa * c[ci + 2u * cs] + ks[i + 2u] * vj;
                let c3 = fa * c[ci + 3u * cs] + ks[i + 3u] * vj;
                c[ci] = c0;
                c[ci + cs] = c1;
                c[ci + 2u * cs] = c2;
                c[ci + 3u * cs] = c3;
                acc += qs[i] * c0 + qs[i + 1u] * c1 + qs[i + 2u] * c2 + qs[i + 3u] * c3;
                ci += 4u * cs;
            }
            for (; i < dk; i++) {
                let cv = fa * c[ci] + ks[i] * vj;
                c[ci] = cv;
                acc += qs[i] * cv;
                ci += cs;
            }
            h[h_at(row, hd, j)] = acc / den;
        }
        mv = g.m_new;
        // qs, ks and red are rewritten by the next token.
        workgroupBarrier();
    }
    if lid == 0u {
        m[sh] = mv;
    }
}
