// Causal depthwise conv1d over B sequences of N tokens (the xlstm package's CausalConv1d):
//   y[b, n, c] = act(bias[c] + sum_{j<K} w[c, j] * in[b, n - (K-1) + j, c])
// where inputs before the first token come from the sequence's conv state (the last K-1
// inputs seen, oldest first) or are zero without a state. With a state, the last K-1 inputs
// are written back to it.
//
// x: element (row, c) at x_offset + row * x_stride + c, row = b * N + n; y likewise.
// w: (C, K) f32; bias: (C) f32.
// slots: u32 (B), the state slot of each sequence; state: (slots, K-1, C) f32.
// One invocation per (4 channels, sequence), looping over tokens first .. first + tokens of
// the sequence's `total` tokens (the host splits long inputs into such segments to stay under
// llvmpipe's loop limit, ops::LOOP_BUDGET; counted: 2 K per token + 2 K). A segment after
// the first takes its history from the inputs before it; the state is read by the first
// segment and written by the last. Grid: (ceil(C / 256), B split over y and z:
// b = wid.y + wid.z * 65535). K <= 16.
//
// The four channels move as one vec4: through the vec4 bindings when VEC4 (C, the strides and
// the offsets multiples of 4), else element by element with the channels past C skipped. On
// CPU adapters, where every storage access is a loop over the SIMD lanes, that is a quarter
// of the accesses of a channel per invocation. K is the pipeline constant TAPS, so the loops
// over taps unroll and the history and weights stay in registers.
//
// ACT: 0 identity, 1 silu.

struct Params {
    channels: u32,
    tokens: u32,
    seqs: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    has_state: u32,
    has_bias: u32,
    total: u32,
    first: u32,
    // With has_pass, each input is also written to y at pass_offset + row * y_stride + c.
    has_pass: u32,
    pass_offset: u32,
}

override ACT: u32 = 0u;
override TAPS: u32 = 4u;
override VEC4: bool = false;

// Storage, not uniform, and copied to `p` once per invocation: see shaders/common/matmul.wgsl
// (lavapipe recompiles shaders whose loop bounds are uniforms, and loads storage lane by lane).
@group(0) @binding(0) var<storage, read> params: Params;
var<private> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> slots: array<u32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
// The same buffers as x, y and state, read and written four channels at a time (VEC4).
@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> state4: array<vec4<f32>>;
// The same buffers as w and bias, read one channel's four taps (TAPS = 4) or four channels'
// biases at a time when VEC4.
@group(0) @binding(10) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> bias4: array<vec4<f32>>;

// silu without overflow: v / (1 + e^-v) for v >= 0, v e^v / (1 + e^v) below.
fn activate(v: vec4<f32>) -> vec4<f32> {
    if ACT == 1u {
        let e = exp(-abs(v));
        return select(v * e / (1.0 + e), v / (1.0 + e), v >= vec4<f32>(0.0));
    }
    return v;
}

// Elements i .. i + 3 of x (channels c .. c + 3; only the first n < 4 exist past VEC4).
fn load_x(i: u32, n: u32) -> vec4<f32> {
    if VEC4 {
        return x4[i / 4u];
    }
    var v = vec4<f32>(x[i], 0.0, 0.0, 0.0);
    for (var j = 1u; j < n; j++) {
        v[j] = x[i + j];
    }
    return v;
}

fn load_state(i: u32, n: u32) -> vec4<f32> {
    if VEC4 {
        return state4[i / 4u];
    }
    var v = vec4<f32>();
    for (var j = 0u; j < n; j++) {
        v[j] = state[i + j];
    }
    return v;
}

fn store_state(i: u32, v: vec4<f32>, n: u32) {
    if VEC4 {
        state4[i / 4u] = v;
        return;
    }
    for (var j = 0u; j < n; j++) {
        state[i + j] = v[j];
    }
}

fn store_y(i: u32, v: vec4<f32>, n: u32) {
    if VEC4 {
        y4[i / 4u] = v;
        return;
    }
    for (var j = 0u; j < n; j++) {
        y[i + j] = v[j];
    }
}

@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let c = gid.x * 4u;
    let b = wid.y + wid.z * 65535u;
    if c >= p.channels || b >= p.seqs {
        return;
    }
    let n = min(4u, p.channels - c);
    let k1 = TAPS - 1u;
    // wt[j]: tap j of the four channels (channels past C repeat the last).
    var wt = array<vec4<f32>, 16>();
    let last = p.channels - 1u;
    if VEC4 && TAPS == 4u {
        // The four channels' rows of taps, transposed (a decode step's loads were mostly
        // these sixteen weights).
        let r0 = w4[c];
        let r1 = w4[c + 1u];
        let r2 = w4[c + 2u];
        let r3 = w4[c + 3u];
        wt[0] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
        wt[1] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
        wt[2] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
        wt[3] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
    } else {
        for (var j = 0u; j < TAPS; j++) {
            wt[j] = vec4<f32>(
                w[c * TAPS + j],
                w[min(c + 1u, last) * TAPS + j],
                w[min(c + 2u, last) * TAPS + j],
                w[min(c + 3u, last) * TAPS + j],
            );
        }
    }
    // hist[j] holds the input at token first - k1 + j (pos = first + j = that token + k1):
    // from x inside the sequence, else from the state's entry pos (or zero).
    var hist = array<vec4<f32>, 16>();
    var base = 0u;
    if p.has_state != 0u {
        base = slots[b] * k1 * p.channels + c;
    }
    for (var j = 0u; j < k1; j++) {
        let pos = p.first + j;
        if pos >= k1 {
            hist[j] = load_x(p.x_offset + (b * p.total + pos - k1) * p.x_stride + c, n);
        } else if p.has_state != 0u {
            hist[j] = load_state(base + pos * p.channels, n);
        }
    }
    var b0 = vec4<f32>(0.0);
    if p.has_bias != 0u && VEC4 {
        b0 = bias4[c / 4u];
    } else if p.has_bias != 0u {
        b0 = vec4<f32>(bias[c], bias[min(c + 1u, last)], bias[min(c + 2u, last)], bias[min(c + 3u, last)]);
    }
    for (var t = 0u; t < p.tokens; t++) {
        let row = b * p.total + p.first + t;
        let xv = load_x(p.x_offset + row * p.x_stride + c, n);
        var acc = b0 + wt[k1] * xv;
        for (var j = 0u; j < k1; j++) {
            acc += wt[j] * hist[j];
        }
        for (var j = 0u; j + 1u < k1; j++) {
            hist[j] = hist[j + 1u];
        }
        // (max: TAPS = 1 leaves no history, and a constant index must stay in bounds.)
        if k1 > 0u {
            hist[max(k1, 1u) - 1u] = xv;
        }
        store_y(p.y_offset + row * p.y_stride + c, activate(acc), n);
        if p.has_pass != 0u {
            store_y(p.pass_offset + row * p.y_stride + c, xv, n);
        }
    }
    if p.has_state != 0u && p.first + p.tokens == p.total {
        for (var j = 0u; j < k1; j++) {
            store_state(base + j * p.channels, hist[j], n);
        }
    }
}
