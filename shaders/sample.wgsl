// Token sampling on the GPU, one workgroup of THREADS invocations per sequence.
//
// logits: row b of the (B, V) view at logits_offset + b * logits_stride.
// settings: per sequence (temperature, top_k, top_p, seed, step):
//   temperature <= 0 or top_k == 1: greedy (argmax, ties to the lower id);
//   otherwise softmax(logits / temperature) restricted to the top_k largest (0 = all) and to
//   the smallest set of largest probabilities whose mass reaches top_p (1 = all), then one
//   draw u = hash(seed, step) in [0, 1) over the kept mass, scanning ids in order. The draw
//   does not depend on the sequence's place in the batch, so a sequence gives the same text
//   alone or batched.
// Thresholds are found by bisection on values (no sort); a value tie at the top-k
// threshold keeps every tied token.
// out: u32 (B) sampled ids, written at out_offset + b; NON_FINITE (past any vocabulary) for
// a row holding a NaN or infinite logit, whatever the settings (the host reports it).
// Each invocation owns a contiguous segment of ceil(V / THREADS) ids rounded up to a multiple
// of 4, and walks it a quad at a time (ids past the segment read as -inf): one vec4 load per
// quad through logits4 when V4 (offset and stride multiples of 4), else four scalar loads. On
// CPU adapters, where each storage load is a loop over the SIMD lanes, that quarters the
// loads of every pass over the vocabulary (the top-k and top-p searches make up to 80).
//
// THREADS (override): a power of two up to 256. 256 on GPUs; 8 (one SIMD group) on CPU
// adapters, where every barrier of a larger workgroup switches between its SIMD groups.

struct Params {
    vocab: u32,
    seqs: u32,
    logits_stride: u32,
    logits_offset: u32,
    out_offset: u32,
}

struct Settings {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u32,
    step: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> settings: array<Settings>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
// The same buffer as logits, a quad at a time (V4).
@group(0) @binding(4) var<storage, read> logits4: array<vec4<f32>>;

const NON_FINITE: u32 = 0xffffffffu;

override THREADS: u32 = 256u;
override V4: bool = false;

// Logits of ids i .. i + 3 of the row at base (i a multiple of 4), -inf from id `hi` on.
fn quad(base: u32, i: u32, hi: u32) -> vec4<f32> {
    let live = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(hi);
    var q = vec4<f32>(0.0);
    if V4 {
        q = logits4[(base + i) / 4u];
    } else {
        for (var j = 0u; j < 4u; j++) {
            if i + j < hi {
                q[j] = logits[base + i + j];
            }
        }
    }
    return select(vec4<f32>(bitcast<f32>(0xff800000u)), q, live);
}

// How many of the four are true.
fn count4(b: vec4<bool>) -> u32 {
    return dot(select(vec4<u32>(0u), vec4<u32>(1u), b), vec4<u32>(1u));
}

// Reductions over the workgroup (every invocation gets the result, uniform): wg_max,
// wg_count, wg_sum_count, wg_argmax, wg_inclusive_sum and wg_min, in
// shaders/common/sample_reduce_shared.wgsl (workgroup memory and barriers; the registry's
// `sample`) or common/sample_reduce_subgroup.wgsl (subgroup operations where one subgroup
// holds the workgroup: CPU adapters, `sample_subgroup`).

// PCG-style integer hash.
fn hash(x: u32) -> u32 {
    var h = x * 747796405u + 2891336453u;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    return (h >> 22u) ^ h;
}

@compute @workgroup_size(THREADS)
fn sample(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    // Uniform per workgroup, so barriers stay uniform.
    if b >= p.seqs {
        return;
    }
    let s = settings[b];
    let base = p.logits_offset + b * p.logits_stride;
    let seg = ((p.vocab + THREADS - 1u) / THREADS + 3u) / 4u * 4u;
    let lo = min(lid * seg, p.vocab);
    let hi = min(lo + seg, p.vocab);

    // Largest logit of this segment (and its lowest id), and how many of its logits are
    // NaN or infinite (an all-ones exponent: bits, which no fast-math assumption drops).
    var best = -3.4e38;
    var best_id = 0xffffffffu;
    var bad = 0u;
    for (var i = lo; i < hi; i += 4u) {
        let q = quad(base, i, hi);
        let live = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(hi);
        let exponent = bitcast<vec4<u32>>(q) & vec4<u32>(0x7f800000u);
        bad += count4(live & (exponent == vec4<u32>(0x7f800000u)));
        for (var j = 0u; j < 4u; j++) {
            if q[j] > best {
                best = q[j];
                best_id = i + j;
            }
        }
    }
    if wg_count(lid, bad) > 0u {
        if lid == 0u {
            out[p.out_offset + b] = NON_FINITE;
        }
        return;
    }
    if s.temperature <= 0.0 || s.top_k == 1u {
        let id = wg_argmax(lid, best, best_id);
        if lid == 0u {
            out[p.out_offset + b] = id;
        }
        return;
    }
    let inv_t = 1.0 / s.temperature;
    let m = wg_max(lid, best);
    var low = m;
    for (var i = lo; i < hi; i += 4u) {
        let live = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(hi);
        let q = select(vec4<f32>(low), quad(base, i, hi), live);
        low = min(low, min(min(q.x, q.y), min(q.z, q.w)));
    }
    low = -wg_max(lid, -low);

    // Top-k: the largest threshold keeping at least k ids (bisection on logit values). A
    // threshold keeping exactly k ids keeps the set every later step would keep: stop there.
    var keep_from = low;
    if s.top_k > 0u && s.top_k < p.vocab {
        var a = low;
        var z = m;
        for (var it = 0u; it < 40u; it++) {
            let mid = 0.5 * (a + z);
            var c = 0u;
            for (var i = lo; i < hi; i += 4u) {
                c += count4(quad(base, i, hi) >= vec4<f32>(mid));
            }
            let kept = wg_count(lid, c);
            if kept >= s.top_k {
                a = mid;
                if kept == s.top_k {
                    break;
                }
            } else {
                z = mid;
            }
        }
        keep_from = a;
    }

    // Unnormalised probabilities w_i = exp((l_i - m) / T) of the kept ids, in (0, 1] (ids
    // past the segment are -inf: never kept).
    var mass = 0.0;
    for (var i = lo; i < hi; i += 4u) {
        let q = quad(base, i, hi);
        let w = exp((q - m) * inv_t);
        mass += dot(select(vec4<f32>(0.0), w, q >= vec4<f32>(keep_from)), vec4<f32>(1.0));
    }
    // The same reduction as the top-p search below, so its sums compare exactly.
    let total = wg_sum_count(lid, mass, 0u).x;

    // Top-p: the largest probability threshold whose kept mass still reaches top_p. With
    // ids(t) = the kept ids with w >= t, the search holds mass(ids(a)) >= top_p * total >
    // mass(ids(z)); once at most one id has w in [a, z) (count(a) - count(z) <= 1, with
    // count(z) under-estimated as 0 until z is first evaluated), every later a keeps
    // exactly ids(a): stop there.
    var w_from = 0.0;
    if s.top_p < 1.0 {
        var a = 0.0;
        var z = 1.0;
        var count_a = 0u;
        for (var i = lo; i < hi; i += 4u) {
            count_a += count4(quad(base, i, hi) >= vec4<f32>(keep_from));
        }
        count_a = wg_count(lid, count_a);
        var count_z = 0u;
        for (var it = 0u; it < 40u; it++) {
            if count_a - count_z <= 1u {
                break;
            }
            let mid = 0.5 * (a + z);
            var part = 0.0;
            var c = 0u;
            for (var i = lo; i < hi; i += 4u) {
                let q = quad(base, i, hi);
                let w = exp((q - m) * inv_t);
                let keep = q >= vec4<f32>(keep_from) & w >= vec4<f32>(mid);
                part += dot(select(vec4<f32>(0.0), w, keep), vec4<f32>(1.0));
                c += count4(keep);
            }
            let got = wg_sum_count(lid, part, c);
            if got.x >= s.top_p * total {
                a = mid;
                count_a = u32(got.y);
            } else {
                z = mid;
                count_z = u32(got.y);
            }
        }
        w_from = a;
    }

    // One draw over the kept mass, scanning ids in order.
    var kept = 0.0;
    for (var i = lo; i < hi; i += 4u) {
        let q = quad(base, i, hi);
        let w = exp((q - m) * inv_t);
        let keep = q >= vec4<f32>(keep_from) & w >= vec4<f32>(w_from);
        kept += dot(select(vec4<f32>(0.0), w, keep), vec4<f32>(1.0));
    }
    // Inclusive prefix sum of the segment masses, and their total.
    let sums = wg_inclusive_sum(lid, kept);
    let incl = sums.x;
    let all = sums.y;
    let r = hash(s.seed ^ hash(s.step));
    let u = f32(r >> 8u) * (1.0 / 16777216.0) * all;
    let excl = incl - kept;
    // The segment holding u picks; the last non-empty segment catches rounding at the top.
    let mine = kept > 0.0 && u >= excl && (u < incl || incl >= all);
    var pick = 0xffffffffu;
    if mine {
        var acc = excl;
        var last = 0xffffffffu;
        for (var i = lo; i < hi && pick == 0xffffffffu; i += 4u) {
            let q = quad(base, i, hi);
            let w = exp((q - m) * inv_t);
            for (var j = 0u; j < 4u; j++) {
                if q[j] >= keep_from && w[j] >= w_from {
                    acc += w[j];
                    last = i + j;
                    if u < acc {
                        pick = i + j;
                        break;
                    }
                }
            }
        }
        if pick == 0xffffffffu {
            pick = last;
        }
    }
    // Several segments can claim u on exact boundaries: the lowest id wins.
    let id = wg_min(lid, pick);
    if lid == 0u {
        out[p.out_offset + b] = id;
    }
}
