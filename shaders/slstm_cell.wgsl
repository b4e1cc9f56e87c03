// sLSTM cell (xlstm package, MODEL.md section 4) over B sequences of N tokens, the token
// loop inside the kernel. One workgroup per (head, sequence); each invocation owns up to
// UNITS hidden units j of the head (j = lid + u * WG) and keeps their c, n, m in registers;
// every invocation reads all of the head's h for the recurrent product, through h_one /
// h_quad: from workgroup memory behind barriers (shaders/common/slstm_h_shared.wgsl, the
// registry's `slstm_cell`), or, where one subgroup holds the workgroup, from the other
// invocations' registers by subgroup shuffles, without barriers
// (common/slstm_h_subgroup.wgsl, `slstm_cell_subgroup`: CPU adapters, rows layout, WG 8;
// llvmpipe implements a barrier by switching coroutines: the bundled model's cell ran
// ~1.5x faster without them).
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
// r:   R, f32 bits or (WDT != 0) f16 / bf16 pairs packed in u32 (element e in half e % 2 of word e / 2),
//      in one of two layouts:
//      columns (ROWS false): dense (NH, DH, 4*DH), R[h, k, g*DH + j] (the package's cuda
//        layout); per k, the reads of consecutive units j are coalesced (GPUs);
//      rows (ROWS true): (NH * 4*DH, RSTRIDE) rows R[h, g*DH + j, k] (the vanilla layout),
//        zero-padded to RSTRIDE (a multiple of 8) elements; each invocation streams its own
//        four rows with 16-byte loads (CPU adapters).
// bias: (4 * D) f32, gate-major bias[g*D + h*DH + j].
// slots: u32 (B), state slot of each sequence; state: (slots, 4, D) f32 = [h, c, n, m],
//      read before the first token and written after the last.
// y: h' of element (row, h*DH + j) at y_offset + row * y_stride + h*DH + j (f32).
// Grid: (NH, B split over y and z: b = wid.y + wid.z * 65535).
// One dispatch covers tokens first .. first + tokens of every sequence of `total` tokens
// (row = b * total + first + t); the host splits long inputs into such segments so that an
// invocation's loop iterations stay under llvmpipe's limit (ops::LOOP_BUDGET). Counted per
// token: UNITS * (RSTRIDE / (8 if WDT != 0 else 4) * 5 + 2) in the rows layout, UNITS * (DH + 2) in the columns
// layout, plus 2 * UNITS for h; before the tokens: RS_LEN / WG + 3 * UNITS.
//
// SHARED (columns only): the head's R is copied into workgroup memory (RS_LEN = 4*DH*DH
// floats) once, before the token loop; otherwise it is read from global memory every token.

struct Params {
    tokens: u32,
    seqs: u32,
    dim: u32,
    pre_stride: u32,
    pre_offset: u32,
    y_stride: u32,
    y_offset: u32,
    total: u32,
    first: u32,
}

// Head dim.
override DH: u32 = 16u;
// Invocations per workgroup (<= 256).
override WG: u32 = 16u;
// Units per invocation: ceil(DH / WG) <= MAX_UNITS.
override UNITS: u32 = 1u;
override ROWS: bool = false;
// Row stride of R in the rows layout (elements, a multiple of 8).
override RSTRIDE: u32 = 16u;
override SHARED: bool = false;
// Floats of workgroup memory for R: 4 * DH * DH when SHARED, else 1.
override RS_LEN: u32 = 1u;
// h_prev as scalars (columns: DH, rows: 1) and as vec4 (rows: RSTRIDE / 4, columns: 1): the
// sizes of common/slstm_h_shared.wgsl's workgroup arrays (unused by the subgroup variant).
override HS_LEN: u32 = 16u;
override HS4_LEN: u32 = 1u;

const MAX_UNITS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pre: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> rs: array<f32, RS_LEN>;

// Element e of the global R.
fn r_global(e: u32) -> f32 {
    if WDT != 0u {
        let w = e >> 1u;
        return unpack_pair(r[w >> 2u][w & 3u])[e & 1u];
    }
    return bitcast<f32>(r[e >> 2u][e & 3u]);
}

// Columns: R[h, k, g*DH + j] for the four gates, from `base` = offset of (h, k, j).
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

// Rows: R h_prev of the four gates of unit j of head `head`: four padded rows, each a
// contiguous stream (hn: this invocation's units' h, for h_quad).
fn recurrent_rows(head: u32, j: u32, hn: vec4<f32>) -> vec4<f32> {
    // Row of gate g: (head * 4 + g) * DH + j.
    let row = head * 4u * DH + j;
    var a = array<vec4<f32>, 4>();
    if WDT != 0u {
        let q = RSTRIDE / 8u;
        for (var k8 = 0u; k8 < q; k8++) {
            let h0 = h_quad(2u * k8, hn);
            let h1 = h_quad(2u * k8 + 1u, hn);
            for (var g = 0u; g < 4u; g++) {
                let w = r[(row + g * DH) * q + k8];
                a[g] += vec4<f32>(unpack_pair(w.x), unpack_pair(w.y)) * h0
                    + vec4<f32>(unpack_pair(w.z), unpack_pair(w.w)) * h1;
            }
        }
    } else {
        let q = RSTRIDE / 4u;
        for (var k4 = 0u; k4 < q; k4++) {
            let hv = h_quad(k4, hn);
            for (var g = 0u; g < 4u; g++) {
                a[g] += bitcast<vec4<f32>>(r[(row + g * DH) * q + k4]) * hv;
            }
        }
    }
    let one = vec4<f32>(1.0);
    return vec4<f32>(dot(a[0], one), dot(a[1], one), dot(a[2], one), dot(a[3], one));
}

// The recurrent contribution (R h_prev) of the four gates of unit j of head `head`; `rbase`
// is the offset of R[head] in whichever copy r4 reads (columns). Every invocation calls it
// together (the subgroup shuffles of h_one / h_quad need the whole subgroup).
fn recurrent(head: u32, j: u32, rbase: u32, hn: vec4<f32>) -> vec4<f32> {
    if ROWS {
        return recurrent_rows(head, j, hn);
    }
    var acc = vec4<f32>(0.0);
    var rb = rbase + j;
    for (var k = 0u; k < DH; k++) {
        acc += h_one(k, hn) * r4(rb);
        rb += 4u * DH;
    }
    return acc;
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
    // Offset of R[head] in the global R (columns), and in whichever copy r4 reads.
    let rhead = head * 4u * DH * DH;
    var rbase = rhead;
    if SHARED {
        rbase = 0u;
        for (var e = lid; e < 4u * DH * DH; e += WG) {
            rs[e] = r_global(rhead + e);
        }
    }

    var c = array<f32, MAX_UNITS>();
    var n = array<f32, MAX_UNITS>();
    var m = array<f32, MAX_UNITS>();
    // h of unit lid + u * WG in component u (0 for units past DH).
    var hn = vec4<f32>(0.0);
    var bg = array<vec4<f32>, MAX_UNITS>();
    for (var u = 0u; u < UNITS; u++) {
        let j = lid + u * WG;
        if j < DH {
            hn[u] = state[sbase + j];
            c[u] = state[sbase + d + j];
            n[u] = state[sbase + 2u * d + j];
            m[u] = state[sbase + 3u * d + j];
            let o = col0 + j;
            bg[u] = vec4<f32>(bias[o], bias[d + o], bias[2u * d + o], bias[3u * d + o]);
        }
    }
    init_h(lid, hn);

    for (var t = 0u; t < p.tokens; t++) {
        let row = b * p.total + p.first + t;
        let pbase = p.pre_offset + row * p.pre_stride + col0;
        // R h_prev of every unit first, as h changes below; with H_BY_SUBGROUP by all
        // invocations together (the shuffles need them all: units past DH read the last
        // unit's rows and are dropped).
        var rec = array<vec4<f32>, MAX_UNITS>();
        for (var u = 0u; u < UNITS; u++) {
            if H_BY_SUBGROUP || lid + u * WG < DH {
                rec[u] = recurrent(head, min(lid + u * WG, DH - 1u), rbase, hn);
            }
        }
        for (var u = 0u; u < UNITS; u++) {
            let j = lid + u * WG;
            if j < DH {
                var raw = bg[u] + vec4<f32>(
                    pre[pbase + j],
                    pre[pbase + d + j],
                    pre[pbase + 2u * d + j],
                    pre[pbase + 3u * d + j],
                );
                raw += rec[u];
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
        publish_h(lid, hn);
    }

    for (var u = 0u; u < UNITS; u++) {
        let j = lid + u * WG;
        if j < DH {
            state[sbase + j] = hn[u];
            state[sbase + d + j] = c[u];
            state[sbase + 2u * d + j] = n[u];
            state[sbase + 3u * d + j] = m[u];
        }
    }
}
