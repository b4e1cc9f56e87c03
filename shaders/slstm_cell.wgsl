// sLSTM cell (xlstm package, MODEL.md section 4) over B sequences of N tokens, the token
// loop inside the kernel. One workgroup per (head, sequence); each invocation owns up to
// UNITS hidden units j of the head (j = lid + u * WG) and keeps their c, n, m in registers;
// the head's h lives in workgroup memory, where every invocation reads all of it for the
// recurrent product.
//
// Per token and unit (gates g in i, f, z, o; D = NH * DH, head h):
//   raw_g = pre[row, g*D + h*DH + j] + sum_k h_prev[k] R[h, k, g*DH + j] + bias[g*D + h*DH + j]
//   logfpm = m + logsigmoid(raw_f)
//   m' = raw_i where n == 0 (per element: a fresh state), else max(raw_i, logfpm)
//   i' = min(exp(raw_i - m'), 1);  f' = min(exp(logfpm - m'), 1)
//   c' = f' c + i' tanh(raw_z);  n' = f' n + i';  h' = sigmoid(raw_o) c' / n'
// Every exp argument is <= 0 except under the n == 0 rule, where min(., 1) takes an infinite
// f' to 1: no overflow, and n' >= min(1, n) > 0 after the first step, so no 0/0.
//
// pre: element (row, c) at pre_offset + row * pre_stride + c, row = b * N + t (f32).
// r:   (NH, DH, 4*DH) internal layout R[h, k, g*DH + j] (the package's cuda layout): f32 bits,
//      or f16 pairs packed in u32 when F16 (element e in half e % 2 of word e / 2).
// bias: (4 * D) f32, gate-major bias[g*D + h*DH + j].
// slots: u32 (B), state slot of each sequence; state: (slots, 4, D) f32 = [h, c, n, m],
//      read before the first token and written after the last.
// y: h' of element (row, h*DH + j) at y_offset + row * y_stride + h*DH + j (f32).
// Grid: (NH, B split over y and z: b = wid.y + wid.z * 65535).
//
// SHARED: the head's R is copied into workgroup memory (RS_LEN = 4*DH*DH floats) once,
// before the token loop; otherwise it is streamed from global memory every token (the
// per-invocation reads R[h, k, g*DH + j] of consecutive j are coalesced).

struct Params {
    tokens: u32,
    seqs: u32,
    dim: u32,
    pre_stride: u32,
    pre_offset: u32,
    y_stride: u32,
    y_offset: u32,
}

// Head dim.
override DH: u32 = 16u;
// Invocations per workgroup (<= 256).
override WG: u32 = 16u;
// Units per invocation: ceil(DH / WG) <= MAX_UNITS.
override UNITS: u32 = 1u;
override F16: bool = false;
override SHARED: bool = false;
// Floats of workgroup memory for R: 4 * DH * DH when SHARED, else 1.
override RS_LEN: u32 = 1u;

const MAX_UNITS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pre: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> hs: array<f32, DH>;
var<workgroup> rs: array<f32, RS_LEN>;

// Element e of the global R.
fn r_global(e: u32) -> f32 {
    if F16 {
        return unpack2x16float(r[e >> 1u])[e & 1u];
    }
    return bitcast<f32>(r[e]);
}

// R[h, k, g*DH + j] for the four gates, from `base` = offset of (h, k, j).
fn r4(base: u32) -> vec4<f32> {
    if SHARED {
        return vec4<f32>(rs[base], rs[base + DH], rs[base + 2u * DH], rs[base + 3u * DH]);
    }
    return vec4<f32>(
        r_global(base),
        r_global(base + DH),
        r_global(base + 2u * DH),
        r_global(base + 3u * DH),
    );
}

// Numerically stable logistic function.
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), finite for every finite x.
fn logsigmoid(x: f32) -> f32 {
    return min(x, 0.0) - log(1.0 + exp(-abs(x)));
}

@compute @workgroup_size(WG)
fn cell(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.x;
    let b = wid.y + wid.z * 65535u;
    // Uniform per workgroup, so no invocation skips a barrier that another reaches.
    if b >= p.seqs {
        return;
    }
    let d = p.dim;
    let col0 = head * DH;
    let sbase = slots[b] * 4u * d + col0;
    let four = 4u * DH;
    // Offset of R[head, 0, 0] in the global R, and in whichever copy r4 reads.
    let rhead = head * four * DH;
    var rbase = rhead;
    if SHARED {
        rbase = 0u;
        for (var e = lid; e < four * DH; e += WG) {
            rs[e] = r_global(rhead + e);
        }
    }

    var c = array<f32, MAX_UNITS>();
    var n = array<f32, MAX_UNITS>();
    var m = array<f32, MAX_UNITS>();
    var hn = array<f32, MAX_UNITS>();
    var bg = array<vec4<f32>, MAX_UNITS>();
    for (var u = 0u; u < UNITS; u++) {
        let j = lid + u * WG;
        if j < DH {
            hs[j] = state[sbase + j];
            c[u] = state[sbase + d + j];
            n[u] = state[sbase + 2u * d + j];
            m[u] = state[sbase + 3u * d + j];
            let o = col0 + j;
            bg[u] = vec4<f32>(bias[o], bias[d + o], bias[2u * d + o], bias[3u * d + o]);
        }
    }
    workgroupBarrier();

    for (var t = 0u; t < p.tokens; t++) {
        let row = b * p.tokens + t;
        let pbase = p.pre_offset + row * p.pre_stride + col0;
        for (var u = 0u; u < UNITS; u++) {
            let j = lid + u * WG;
            if j < DH {
                var raw = bg[u] + vec4<f32>(
                    pre[pbase + j],
                    pre[pbase + d + j],
                    pre[pbase + 2u * d + j],
                    pre[pbase + 3u * d + j],
                );
                var rb = rbase + j;
                for (var k = 0u; k < DH; k++) {
                    raw += hs[k] * r4(rb);
                    rb += four;
                }
                let logfpm = m[u] + logsigmoid(raw.y);
                let mn = select(max(raw.x, logfpm), raw.x, n[u] == 0.0);
                let ig = min(exp(raw.x - mn), 1.0);
                let fg = min(exp(logfpm - mn), 1.0);
                c[u] = fg * c[u] + ig * tanh(clamp(raw.z, -15.0, 15.0));
                n[u] = fg * n[u] + ig;
                m[u] = mn;
                hn[u] = sigmoid(raw.w) * c[u] / n[u];
                y[p.y_offset + row * p.y_stride + col0 + j] = hn[u];
            }
        }
        // Everyone has read h_prev before anyone overwrites it.
        workgroupBarrier();
        for (var u = 0u; u < UNITS; u++) {
            let j = lid + u * WG;
            if j < DH {
                hs[j] = hn[u];
            }
        }
        workgroupBarrier();
    }

    for (var u = 0u; u < UNITS; u++) {
        let j = lid + u * WG;
        if j < DH {
            state[sbase + j] = hs[j];
            state[sbase + d + j] = c[u];
            state[sbase + 2u * d + j] = n[u];
            state[sbase + 3u * d + j] = m[u];
        }
    }
}
