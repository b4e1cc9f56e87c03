// Read-bandwidth probe: the fastest plain read of a buffer, to put kernel throughput in
// perspective on the current adapter.
//
//   stream:    each invocation sums one contiguous span of `span` vec4s (the pattern a CPU
//              adapter serves best).
//   coalesced: consecutive invocations read consecutive vec4s, striding by the whole grid
//              (the pattern a GPU serves best).
// Each invocation writes its sum so the reads cannot be optimised away.

struct Params {
    n: u32,
    span: u32,
    threads: u32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<u32>;

fn index(gid: vec3<u32>) -> u32 {
    return gid.x + gid.y * p.groups_x * 64u;
}

@compute @workgroup_size(64)
fn stream(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if i >= p.threads {
        return;
    }
    let begin = i * p.span;
    let end = min(begin + p.span, p.n);
    var acc = vec4<u32>(0u);
    for (var j = begin; j < end; j++) {
        acc ^= src[j];
    }
    sink[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}

@compute @workgroup_size(64)
fn coalesced(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if i >= p.threads {
        return;
    }
    var acc = vec4<u32>(0u);
    for (var j = i; j < p.n; j += p.threads) {
        acc ^= src[j];
    }
    sink[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
