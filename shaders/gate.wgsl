// Entropy-aware gate and standard router of a MoxE layer (MODEL.md section 3), fused per
// token: difficulty and modulation, conditioned logits, softmax, top-k (ties to the lower
// index), renormalisation, and the per-token terms of the router telemetry.
// One invocation per token; grid: ceil(N / 64) workgroups laid out 2-D (x up to 65535).
//
// logits: row t at logit_offset + t * logit_stride holds z_0 .. z_{E-1} (router logits,
//   bias included) and, for the entropy-aware gate, the difficulty pre-activation
//   u . w_d + b_d at column E.
// mode: 0 standard router (p = softmax(z), d = sigma = 0); entropy-aware gate with
//   modulation 1 standard (sigma = gamma d), 2 proportional (gamma relu(d - tau)),
//   3 masked (gamma d [d > tau]).
// zc = z + sigma on the mLSTM group (experts 0 .. E/2 - 1), z - sigma on the sLSTM group.
//
// Outputs for token t:
//   probs[t * E + e]       p = softmax(zc)
//   topk_idx[t * K + j]    j-th largest p (ties: lower index first), u32
//   topk_weight[t * K + j] p of that expert / sum of the K selected p
//   topk_prob[t * K + j]   p of that expert (raw, for the expert loads)
//   stats[t * 8 + ..]      [d, sigma, H~, logsumexp(zc), P_m(t), P_s(t), 0, 0] where
//                          H~ = -sum q log(max(q, 1e-6)) / log E with q = softmax(z), and
//                          P_m(t), P_s(t) the sums of p over the two groups.

struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    logit_stride: u32,
    logit_offset: u32,
    mode: u32,
    gamma: f32,
    tau: f32,
}

const MAX_EXPERTS: u32 = 64u;
const STATS: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> topk_idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> topk_weight: array<f32>;
@group(0) @binding(5) var<storage, read_write> topk_prob: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;

fn modulation(d: f32) -> f32 {
    switch p.mode {
        case 1u: { return p.gamma * d; }
        case 2u: { return p.gamma * max(d - p.tau, 0.0); }
        case 3u: { return select(0.0, p.gamma * d, d > p.tau); }
        default: { return 0.0; }
    }
}

fn is_selected(mask: vec2<u32>, e: u32) -> bool {
    return ((mask[e / 32u] >> (e % 32u)) & 1u) != 0u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 64u;
    if t >= p.n {
        return;
    }
    let ne = p.experts;
    let half = ne / 2u;
    let row = p.logit_offset + t * p.logit_stride;

    var d = 0.0;
    var sigma = 0.0;
    if p.mode != 0u {
        d = sigmoid(logits[row + ne]);
        sigma = modulation(d);
    }

    // Conditioned logits, their maximum, and the maximum of the raw logits.
    var zc: array<f32, MAX_EXPERTS>;
    for (var e = 0u; e < ne; e++) {
        zc[e] = logits[row + e] + select(-sigma, sigma, e < half);
    }
    var zmax = logits[row];
    var zcmax = zc[0];
    for (var e = 1u; e < ne; e++) {
        zmax = max(zmax, logits[row + e]);
        zcmax = max(zcmax, zc[e]);
    }

    // Normalised entropy of q = softmax(z).
    var zsum = 0.0;
    for (var e = 0u; e < ne; e++) {
        zsum += exp(logits[row + e] - zmax);
    }
    var ent = 0.0;
    for (var e = 0u; e < ne; e++) {
        let q = exp(logits[row + e] - zmax) / zsum;
        ent -= q * log(max(q, 1e-6));
    }
    ent /= log(f32(ne));

    // p = softmax(zc) and the group sums.
    var pr: array<f32, MAX_EXPERTS>;
    var sum = 0.0;
    for (var e = 0u; e < ne; e++) {
        pr[e] = exp(zc[e] - zcmax);
        sum += pr[e];
    }
    var pm = 0.0;
    var ps = 0.0;
    for (var e = 0u; e < ne; e++) {
        pr[e] /= sum;
        probs[t * ne + e] = pr[e];
        if e < half {
            pm += pr[e];
        } else {
            ps += pr[e];
        }
    }

    // Top-k by repeated selection: a strictly larger p replaces the candidate, so ties keep
    // the lower index; the first unselected expert starts each round, so even NaN inputs
    // give K distinct valid indices.
    var mask = vec2<u32>(0u, 0u);
    var raw_sum = 0.0;
    let base = t * p.top_k;
    for (var j = 0u; j < p.top_k; j++) {
        var best = 0u;
        while is_selected(mask, best) {
            best++;
        }
        var value = pr[best];
        for (var e = best + 1u; e < ne; e++) {
            if !is_selected(mask, e) && pr[e] > value {
                best = e;
                value = pr[e];
            }
        }
        mask[best / 32u] |= 1u << (best % 32u);
        topk_idx[base + j] = best;
        topk_prob[base + j] = value;
        raw_sum += value;
    }
    for (var j = 0u; j < p.top_k; j++) {
        topk_weight[base + j] = topk_prob[base + j] / raw_sum;
    }

    let s = t * STATS;
    stats[s] = d;
    stats[s + 1u] = sigma;
    stats[s + 2u] = ent;
    stats[s + 3u] = zcmax + log(sum);
    stats[s + 4u] = pm;
    stats[s + 5u] = ps;
    stats[s + 6u] = 0.0;
    stats[s + 7u] = 0.0;
}
