// mLSTM cell, recurrent form (MODEL.md section 5), the token loop inside the kernel:
//   m' = max(logsig(f) + m, i);  f' = exp(logsig(f) + m - m');  i' = exp(i - m')
//   C  = f' C + i' kk v^T;  n = f' n + i' kk;  kk = k * scale (scale = 1 / sqrt(DH))
//   h  = (q^T C) / (max(|q . n|, exp(-m')) + eps)
//
// qkv:   [q | k | v], element (row, c) at qkv_offset + row * qkv_stride + c; row = b * N + t
//        (N = tokens); head hd of q at columns hd * DH .., of k at Di + hd * DH .., of v at
//        2 Di + hd * DH ...
// gates: [i | f], element (row, c) at gate_offset + row * gate_stride + c (NH columns each).
// h:     (row, hd * DH + j) at h_offset + row * h_stride + hd * DH + j.
// slots: u32 (B), the state slot of each sequence; slots >= p.slots are skipped.
// c:     (slots, NH, DH, DH), C[i][j] at ((slot * NH + hd) * DH + i) * c_stride + j (rows
//        padded to c_stride >= DH).
// n:     (slots, NH, DH);  m: (slots, NH).
// This dispatch covers tokens token_base .. token_base + seg_tokens of every sequence.
//
// One workgroup of 64 per (head, sequence): grid (NH, B). Invocation lid owns the columns
// j = lid, lid + 64, .. of C: it updates them and computes h_j = sum_i q_i C[i][j] alone;
// q . n is a workgroup reduction. DH <= 512.
//
// Loop iterations of one invocation, counting one more for each loop's exit (llvmpipe ends
// all loops of an invocation after 65535 in total, so the host splits long inputs into
// segments): at most 11 + ceil(DH / 64) * (DH / 4 + 8) per token, plus 1.

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
    let slot = slots[b];
    // Uniform per workgroup, so returning keeps the barriers uniform.
    if slot >= p.slots || b >= p.seqs {
        return;
    }
    let dh = p.head_dim;
    let di = p.heads * dh;
    let sh = slot * p.heads + hd;
    let cs = p.c_stride;
    let cbase = sh * dh * cs;
    let nbase = sh * dh;
    var mv = m[sh];
    let end = p.token_base + p.seg_tokens;
    for (var t = p.token_base; t < end; t++) {
        let row = b * p.tokens + t;
        let qb = p.qkv_offset + row * p.qkv_stride + hd * dh;
        for (var i = lid; i < dh; i += WG) {
            qs[i] = qkv[qb + i];
            ks[i] = qkv[qb + di + i] * p.scale;
        }
        let gb = p.gate_offset + row * p.gate_stride + hd;
        let ip = gates[gb];
        let lf = log_sigmoid(gates[gb + p.heads]);
        let m_new = max(lf + mv, ip);
        let fa = exp(lf + mv - m_new);
        let ia = exp(ip - m_new);
        workgroupBarrier();

        var part = 0.0;
        for (var i = lid; i < dh; i += WG) {
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
        let den = max(abs(red[0]), exp(-m_new)) + p.eps;

        for (var j = lid; j < dh; j += WG) {
            let vj = ia * qkv[qb + 2u * di + j];
            var acc = 0.0;
            var ci = cbase + j;
            var i = 0u;
            // Four rows per iteration, then the rest.
            for (; i + 4u <= dh; i += 4u) {
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
            for (; i < dh; i++) {
                let cv = fa * c[ci] + ks[i] * vj;
                c[ci] = cv;
                acc += qs[i] * cv;
                ci += cs;
            }
            h[p.h_offset + row * p.h_stride + hd * dh + j] = acc / den;
        }
        mv = m_new;
        // qs, ks and red are rewritten by the next token.
        workgroupBarrier();
    }
    if lid == 0u {
        m[sh] = mv;
    }
}
