// Indirect dispatch arguments from GPU-written row counts (see src/graph/dynamic_rows.rs).
//
// specs: one entry per registered dispatch: (mode, count_index, x, y, per, pad x3)
//   mode 0: unused       -> (0, 0, 0)
//   mode 1: rows on y    -> (x, ceil(n / per), 1)
//   mode 2: rows on z    -> (x, y, ceil(n / per))
//   mode 3: rows on y, z -> (x, min(n, rows_per_z), ceil(n / rows_per_z))
// with n = counts[count_index]. n == 0 gives a zero dimension: the dispatch runs nothing.
// Every dimension is clamped to 65535 (the WebGPU minimum of
// max_compute_workgroups_per_dimension), so the arguments are valid by construction and
// wgpu's own validation pass over them can stay off.

struct Params {
    capacity: u32,
    rows_per_z: u32,
}

struct Spec {
    mode: u32,
    count_index: u32,
    x: u32,
    y: u32,
    per: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> counts: array<u32>;
@group(0) @binding(2) var<storage, read> specs: array<Spec>;
@group(0) @binding(3) var<storage, read_write> args: array<u32>;

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.capacity {
        return;
    }
    let s = specs[i];
    var out = vec3<u32>(0u, 0u, 0u);
    if s.mode != 0u {
        let n = counts[s.count_index];
        switch s.mode {
            case 1u: { out = vec3<u32>(s.x, (n + s.per - 1u) / s.per, 1u); }
            case 2u: { out = vec3<u32>(s.x, s.y, (n + s.per - 1u) / s.per); }
            default: {
                out = vec3<u32>(s.x, min(n, p.rows_per_z), (n + p.rows_per_z - 1u) / p.rows_per_z);
            }
        }
    }
    out = min(out, vec3<u32>(65535u));
    args[i * 3u] = out.x;
    args[i * 3u + 1u] = out.y;
    args[i * 3u + 2u] = out.z;
}
