// mLSTM cell, recurrent form, "wide" variant of mlstm_step.wgsl (same math, same layouts;
// read that file first): invocation lid owns the eight columns j0 = 8 lid .. j0 + 8 of C and
// reads and writes them as two vec4 per row, so one workgroup of 64 covers DV <= 512 and
// every C access is an aligned 16-byte load or store (c_stride is a multiple of 8). On
// lavapipe, where every load or store of one value per invocation costs a loop over the
// SIMD lanes, this is 1.1x (DH = 128) to 3.5x (DH = 512) faster than one column per
// invocation; for small DH most invocations idle, so the host picks it for DH >= 128.
//
// Loop iterations of one invocation, counting one more for each loop's exit: at most
// 21 + 2 * ceil(DH / 64) + DH per token, plus 1, DH = max(DK, DV).

const WG: u32 = 64u;
const MAX_DH: u32 = 512u;

// Params, bindings 0-4, 6, 7 and log_sigmoid: shaders/common/mlstm_cell.wgsl (appended).
@group(0) @binding(5) var<storage, read_write> c: array<vec4<f32>>;

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
    let nbase = sh * dk;
    let cs4 = p.c_stride / 4u;
    // Invocations past DV repeat the last columns (so the row loop stays uniform) and store
    // nothing.
    let j0 = min(8u * lid, ((dv - 1u) / 8u) * 8u);
    let live = 8u * lid < dv;
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

        // i' v of the eight columns, zero past DV.
        let vb = v_at(row, hd, j0);
        var v0 = vec4<f32>(0.0);
        var v1 = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            if j0 + e < dv {
                v0[e] = ia * qkv[vb + e];
            }
            if j0 + 4u + e < dv {
                v1[e] = ia * qkv[vb + 4u + e];
            }
        }
        var a0 = vec4<f32>(0.0);
        var a1 = vec4<f32>(0.0);
        var ci = sh * dk * cs4 + j0 / 4u;
        for (var i = 0u; i < dk; i++) {
            let c0 = fa * c[ci] + ks[i] * v0;
            let c1 = fa * c[ci + 1u] + ks[i] * v1;
            if live {
                c[ci] = c0;
                c[ci + 1u] = c1;
            }
            a0 += qs[i] * c0;
            a1 += qs[i] * c1;
            ci += cs4;
        }
        if live {
            let hb = h_at(row, hd, j0);
            for (var e = 0u; e < 4u; e++) {
                if j0 + e < dv {
                    h[hb + e] = a0[e] / den;
                }
                if j0 + 4u + e < dv {
                    h[hb + 4u + e] = a1[e] / den;
                }
            }
        }
        mv = g.m_new;
        // qs, ks and red are rewritten by the next token.
        workgroupBarrier();
    }
    if lid == 0u {
        m[sh] = mv;
    }
}
