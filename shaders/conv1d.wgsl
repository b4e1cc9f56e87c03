// Causal depthwise conv1d over B sequences of N tokens (the xlstm package's CausalConv1d):
//   y[b, n, c] = act(bias[c] + sum_{j<K} w[c, j] * in[b, n - (K-1) + j, c])
// where inputs before the first token come from the sequence's conv state (the last K-1
// inputs seen, oldest first) or are zero without a state. With a state, the last K-1 inputs
// are written back to it.
//
// x: element (row, c) at x_offset + row * x_stride + c, row = b * N + n; y likewise.
// w: (C, K) f32; bias: (C) f32.
// slots: u32 (B), the state slot of each sequence; state: (slots, K-1, C) f32.
// One invocation per (channel, sequence), looping over tokens first .. first + tokens of
// the sequence's `total` tokens (the host splits long inputs into such segments to stay under
// llvmpipe's loop limit, ops::LOOP_BUDGET; counted: 2 K per token + 2 K). A segment after
// the first takes its history from the inputs before it; the state is read by the first
// segment and written by the last. Grid: (ceil(C / 64), B split over y and z:
// b = wid.y + wid.z * 65535). K <= 16.
//
// ACT: 0 identity, 1 silu.

struct Params {
    channels: u32,
    kernel: u32,
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

fn activate(v: f32) -> f32 {
    if ACT == 1u {
        // silu, with a logistic that cannot overflow
        if v >= 0.0 {
            return v / (1.0 + exp(-v));
        }
        let e = exp(v);
        return v * e / (1.0 + e);
    }
    return v;
}

@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    p = params;
    let c = gid.x;
    let b = wid.y + wid.z * 65535u;
    if c >= p.channels || b >= p.seqs {
        return;
    }
    let k1 = p.kernel - 1u;
    // hist[j]: the input j + 1 - K steps before the current token.
    var hist = array<f32, 16>();
    var base = 0u;
    if p.has_state != 0u {
        base = slots[b] * k1 * p.channels + c;
    }
    // hist[j] holds the input at token first - k1 + j (pos = first + j = that token + k1):
    // from x inside the sequence, else from the state's entry pos (or zero).
    for (var j = 0u; j < k1; j++) {
        let pos = p.first + j;
        if pos >= k1 {
            hist[j] = x[p.x_offset + (b * p.total + pos - k1) * p.x_stride + c];
        } else if p.has_state != 0u {
            hist[j] = state[base + pos * p.channels];
        }
    }
    var b0 = 0.0;
    if p.has_bias != 0u {
        b0 = bias[c];
    }
    let wb = c * p.kernel;
    for (var n = 0u; n < p.tokens; n++) {
        let row = b * p.total + p.first + n;
        let xv = x[p.x_offset + row * p.x_stride + c];
        var acc = b0 + w[wb + k1] * xv;
        for (var j = 0u; j < k1; j++) {
            acc += w[wb + j] * hist[j];
        }
        for (var j = 0u; j + 1u < k1; j++) {
            hist[j] = hist[j + 1u];
        }
        if k1 > 0u {
            hist[k1 - 1u] = xv;
        }
        y[p.y_offset + row * p.y_stride + c] = activate(acc);
        if p.has_pass != 0u {
            y[p.pass_offset + row * p.y_stride + c] = xv;
        }
    }
    if p.has_state != 0u && p.first + p.tokens == p.total {
        for (var j = 0u; j < k1; j++) {
            state[base + j * p.channels] = hist[j];
        }
    }
}
