// Router telemetry of one MoE step (MODEL.md section 3): means over the step's N tokens of
// the per-token terms the gate wrote, expert token counts and loads from the routing's
// per-block partial sums, and the four auxiliary losses. One workgroup; every sum runs in a
// fixed order, so the result is deterministic.
//
// stats (N, 8): [d, sigma, H~, logsumexp(zc), P_m(t), P_s(t), 0, 0] (see gate.wgsl).
// block_counts / block_loads (blocks, E): tokens routed to e and the sum of their raw top-k
//   probabilities, per block of 64 tokens (see route.wgsl).
// summary (8 + E): [L_d, L_g, L_z, L_lb, P_m, P_s, 0, 0, u_0 .. u_{E-1}] with
//   L_d = mean (d - H~)^2 (0 without a difficulty predictor), P_m / P_s = mean group sums,
//   L_g = P_m log(2 P_m + 1e-8) + P_s log(2 P_s + 1e-8), L_z = mean logsumexp(zc)^2,
//   u_e = (sum of raw top-k probabilities on e) / (N K), L_lb = E mean_e (u_e - 1/E)^2.
// counts (E): tokens routed to each expert.

struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    blocks: u32,
    has_predictor: u32,
}

// Invocations (a power of two): one SIMD group (8) on CPU adapters, where each workgroup
// barrier switches every SIMD group's coroutine, 256 on GPUs.
override WG: u32 = 256u;
const STATS: u32 = 8u;
const HEAD: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read> block_counts: array<u32>;
@group(0) @binding(3) var<storage, read> block_loads: array<f32>;
@group(0) @binding(4) var<storage, read_write> summary: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

var<workgroup> partial: array<vec4<f32>, WG>;
var<workgroup> loads: array<f32, 64>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    // Per-token terms: (d - H~)^2, P_m(t), P_s(t), logsumexp(zc)^2.
    var acc = vec4<f32>(0.0);
    for (var t = lid; t < p.n; t += WG) {
        let s = t * STATS;
        let dh = stats[s] - stats[s + 2u];
        let lse = stats[s + 3u];
        acc += vec4<f32>(dh * dh, stats[s + 4u], stats[s + 5u], lse * lse);
    }
    partial[lid] = acc;

    for (var e = lid; e < p.experts; e += WG) {
        var count = 0u;
        var load = 0.0;
        for (var b = 0u; b < p.blocks; b++) {
            count += block_counts[b * p.experts + e];
            load += block_loads[b * p.experts + e];
        }
        let u = load / f32(p.n * p.top_k);
        counts[e] = count;
        summary[HEAD + e] = u;
        loads[e] = u;
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }

    if lid == 0u {
        let mean = partial[0] / f32(p.n);
        let pm = mean.y;
        let ps = mean.z;
        let ne = f32(p.experts);
        var dev = 0.0;
        for (var e = 0u; e < p.experts; e++) {
            let x = loads[e] - 1.0 / ne;
            dev += x * x;
        }
        summary[0] = select(0.0, mean.x, p.has_predictor != 0u);
        summary[1] = pm * log(2.0 * pm + 1e-8) + ps * log(2.0 * ps + 1e-8);
        summary[2] = mean.w;
        summary[3] = ne * (dev / ne);
        summary[4] = pm;
        summary[5] = ps;
        summary[6] = 0.0;
        summary[7] = 0.0;
    }
}
