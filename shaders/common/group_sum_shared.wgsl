// Sums over a workgroup of at most 64 invocations through workgroup memory and barriers
// (appended to shaders/layer_norm.wgsl and shaders/skip_gate.wgsl in the registry's
// `layer_norm` and `skip_gate`; common/group_sum_subgroup.wgsl is the alternative).

var<workgroup> group_part: array<f32, 64>;

// Sum of `v` over invocations 0 .. n (n <= 64: the whole workgroup, every invocation
// calling), in invocation order; every invocation gets the same result.
fn group_sum(lid: u32, n: u32, v: f32) -> f32 {
    group_part[lid] = v;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < n; i++) {
        total += group_part[i];
    }
    workgroupBarrier();
    return total;
}
