// Workgroup reductions of shaders/sample.wgsl through workgroup memory and barriers
// (appended in the registry's `sample`; common/sample_reduce_subgroup.wgsl is the
// alternative). Every invocation of the workgroup (THREADS, a power of two) calls each
// together and gets the same result.

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;

fn wg_max(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Results of the last reduction, read back with workgroupUniformLoad so that loops may
// stop on them (uniform control flow around the barriers).
var<workgroup> total_f: f32;
var<workgroup> total_u: u32;

// Sum of `v` over the workgroup, uniform.
fn wg_count(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_u[lid] += red_u[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        total_u = red_u[0];
    }
    return workgroupUniformLoad(&total_u);
}

// Sums of `v` and of `c` over the workgroup, uniform.
fn wg_sum_count(lid: u32, v: f32, c: u32) -> vec2<f32> {
    red_f[lid] = v;
    red_u[lid] = c;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_f[lid] += red_f[lid + s];
            red_u[lid] += red_u[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        total_f = red_f[0];
        total_u = red_u[0];
    }
    let sum = workgroupUniformLoad(&total_f);
    return vec2<f32>(sum, f32(workgroupUniformLoad(&total_u)));
}

// Lowest id among invocations proposing `id` with the largest `v` (argmax, ties low).
fn wg_argmax(lid: u32, v: f32, id: u32) -> u32 {
    red_f[lid] = v;
    red_u[lid] = id;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            if ov > red_f[lid] || (ov == red_f[lid] && oi < red_u[lid]) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}

// (inclusive prefix sum of `v` up to this invocation, total over the workgroup)
// (Hillis-Steele).
fn wg_inclusive_sum(lid: u32, v: f32) -> vec2<f32> {
    red_f[lid] = v;
    workgroupBarrier();
    for (var d = 1u; d < THREADS; d <<= 1u) {
        var add = 0.0;
        if lid >= d {
            add = red_f[lid - d];
        }
        workgroupBarrier();
        red_f[lid] += add;
        workgroupBarrier();
    }
    let sums = vec2<f32>(red_f[lid], red_f[THREADS - 1u]);
    workgroupBarrier();
    return sums;
}

// Smallest `v` over the workgroup.
fn wg_min(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var st = THREADS / 2u; st > 0u; st >>= 1u) {
        if lid < st {
            red_u[lid] = min(red_u[lid], red_u[lid + st]);
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}
