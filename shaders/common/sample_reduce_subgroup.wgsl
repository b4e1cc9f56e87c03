// Workgroup reductions of shaders/sample.wgsl through subgroup operations (appended in the
// registry's `sample_subgroup`; common/sample_reduce_shared.wgsl is the alternative): valid
// only where one subgroup holds the whole workgroup, which the host checks (CPU adapters,
// THREADS = 8). No workgroup memory and no barriers: on llvmpipe a barrier switches
// coroutines, and a sampled draw took ~25 of them per sequence. The prefix sum takes
// invocation i of the workgroup to be lane i of its subgroup (as on llvmpipe; see
// Context::subgroup_holds).

// Largest `v` over the workgroup.
fn wg_max(lid: u32, v: f32) -> f32 {
    return subgroupMax(v);
}

// Sum of `v` over the workgroup.
fn wg_count(lid: u32, v: u32) -> u32 {
    return subgroupAdd(v);
}

// Sums of `v` and of `c` over the workgroup.
fn wg_sum_count(lid: u32, v: f32, c: u32) -> vec2<f32> {
    return vec2<f32>(subgroupAdd(v), f32(subgroupAdd(c)));
}

// Lowest id among invocations proposing `id` with the largest `v` (argmax, ties low).
fn wg_argmax(lid: u32, v: f32, id: u32) -> u32 {
    let top = subgroupMax(v);
    return subgroupMin(select(0xffffffffu, id, v == top));
}

// (inclusive prefix sum of `v` up to this invocation, total over the workgroup): the
// total is the last invocation's prefix, as in the shared variant.
fn wg_inclusive_sum(lid: u32, v: f32) -> vec2<f32> {
    let incl = subgroupInclusiveAdd(v);
    return vec2<f32>(incl, subgroupShuffle(incl, THREADS - 1u));
}

// Smallest `v` over the workgroup.
fn wg_min(lid: u32, v: u32) -> u32 {
    return subgroupMin(v);
}
