// Read-bandwidth probe: the fastest plain read of a buffer, to put kernel throughput in
// perspective on the current adapter.
//
//   stream:    each invocation sums one contiguous span of `span` vec4s (the pattern a CPU
//              adapter serves best).
//   coalesced: consecutive invocations read consecutive vec4s, striding by the whole grid
//              (the pattern a GPU serves best).
// Each invocation writes its sum so the reads cannot be optimised away.

// Invocations per workgroup (8, one SIMD subgroup, reads fastest on llvmpipe).
override WG: u32 = 64u;

struct Params {
    n: u32,
    span: u32,
    threads: u32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The buffer, read through w_words (shaders/common/words32.wgsl, or words64.wgsl in the
// bandwidth_probe64 module: 64-bit loads where the matmul kernels use them too).
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<u32>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * p.groups_x * WG;
}

@compute @workgroup_size(WG)
fn stream(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if i >= p.threads {
        return;
    }
    let begin = i * p.span;
    let end = min(begin + p.span, p.n);
    // Four independent 16-byte loads per iteration (64 contiguous bytes).
    var a0 = vec4<u32>(0u);
    var a1 = vec4<u32>(0u);
    var a2 = vec4<u32>(0u);
    var a3 = vec4<u32>(0u);
    var j = begin;
    for (; j + 4u <= end; j += 4u) {
        a0 ^= w_words(j);
        a1 ^= w_words(j + 1u);
        a2 ^= w_words(j + 2u);
        a3 ^= w_words(j + 3u);
    }
    for (; j < end; j++) {
        a0 ^= w_words(j);
    }
    let acc = a0 ^ a1 ^ a2 ^ a3;
    sink[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}

@compute @workgroup_size(WG)
fn coalesced(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if i >= p.threads {
        return;
    }
    var acc = vec4<u32>(0u);
    for (var j = i; j < p.n; j += p.threads) {
        acc ^= w_words(j);
    }
    sink[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
