// y[t, o] = beta * y[t, o] + bias[o] + sum_k x[t, k] * W[o, k] for a dense W (layouts:
// shaders/matmul.wgsl), one token per workgroup row: gemv with the loads of x shared within
// a subgroup. The host dispatches it on CPU adapters whose subgroups all have the same
// size S >= 8, with workgroups of WG = S invocations (one subgroup each).
//
// Invocation i owns rows 4i .. 4i + 3 as in gemv. Per span of 64 inputs, lane l < 8 loads
// the 8 inputs at 8 l (lanes past 8 repeat lane l % 8) and subgroupBroadcast hands block j
// from lane j to all: nearly every load an invocation issues is a weight. On llvmpipe,
// where each non-uniform load is a loop over the SIMD lanes and a broadcast from a constant
// lane two instructions, loads bound a GEMV, and this reads f16 weights ~1.7x faster than
// gemv. grid (ceil(M / (4 WG)), T).

// Params, overrides, bindings and helpers: shaders/common/matmul.wgsl (appended).

// Block j of the span (held by lane j), for a lane index known only at run time.
fn shuffle8(v: array<vec4<f32>, 2>, j: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(subgroupShuffle(v[0], j), subgroupShuffle(v[1], j));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let t = wid.y;
    // Uniform per workgroup. Invocations past M go on with clamped rows and store nothing:
    // the broadcasts need every lane's inputs.
    if t >= p.t {
        return;
    }
    let r = rows4(gid.x);
    let mine = 8u * (lane % 8u);
    var acc = vec4<f32>(0.0);
    var k = 0u;
    for (; k + 64u <= p.k; k += 64u) {
        let xs = load_x8(t, 0u, k + mine);
        // subgroupBroadcast takes a constant lane: the span's eight blocks written out.
        acc += block4(r, k, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 0u), subgroupBroadcast(xs[1], 0u)));
        acc += block4(r, k + 8u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 1u), subgroupBroadcast(xs[1], 1u)));
        acc += block4(r, k + 16u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 2u), subgroupBroadcast(xs[1], 2u)));
        acc += block4(r, k + 24u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 3u), subgroupBroadcast(xs[1], 3u)));
        acc += block4(r, k + 32u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 4u), subgroupBroadcast(xs[1], 4u)));
        acc += block4(r, k + 40u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 5u), subgroupBroadcast(xs[1], 5u)));
        acc += block4(r, k + 48u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 6u), subgroupBroadcast(xs[1], 6u)));
        acc += block4(r, k + 56u, array<vec4<f32>, 2>(subgroupBroadcast(xs[0], 7u), subgroupBroadcast(xs[1], 7u)));
    }
    // The last, partial span: blocks past K are zero inputs, and blocks past the span's
    // last are skipped (rows are zero-padded to a multiple of 8 only).
    if k < p.k {
        let kl = k + mine;
        var xs = array<vec4<f32>, 2>();
        if kl + 8u <= p.k {
            xs = load_x8(t, 0u, kl);
        } else if kl < p.k {
            xs = load_x8_tail(t, 0u, kl);
        }
        let blocks = (p.k - k + 7u) / 8u;
        for (var j = 0u; j < blocks; j++) {
            acc += block4(r, k + 8u * j, shuffle8(xs, j));
        }
    }
    if gid.x * 4u < p.m {
        store_rows(t, r, acc);
    }
}
