// Sums over a workgroup by one subgroup operation (appended in the registry's
// `layer_norm_subgroup` and `skip_gate_subgroup`; common/group_sum_shared.wgsl is the
// alternative): valid only where one subgroup holds the whole workgroup, which the host
// checks (a fixed subgroup size at least the workgroup's: CPU adapters' workgroups of 8,
// or skip_gate's 64 on an adapter whose subgroups are all 64 wide). No
// workgroup memory and no barriers, which llvmpipe implements by switching coroutines.

// Sum of `v` over the workgroup's n invocations (all of them calling); every invocation
// gets the same result.
fn group_sum(lid: u32, n: u32, v: f32) -> f32 {
    return subgroupAdd(v);
}
