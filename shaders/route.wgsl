// Per-expert token lists of a MoE layer, built on the GPU in token order (see
// src/ops/route.rs). Tokens are processed in chunks of `chunk` tokens (the whole step when it
// fits); each chunk has one region of `chunk` rows per expert, and each (token, choice) gets
// its row in its expert's region: slot = e * chunk + (number of earlier tokens of the same
// chunk routed to e). Deterministic: no atomics, positions follow token order.
//
// Blocks of 64 tokens never straddle chunks (chunk is a multiple of 64, or there is one
// chunk). Workgroups of 64 invocations; invocation e < E handles expert e.
//   count:   one workgroup per block: block_counts[b, e] and block_loads[b, e] (the sum of
//            the raw top-k probabilities on e) over the block's tokens;
//   scan:    one workgroup per chunk: block_offsets[b, e] = tokens routed to e in the
//            chunk's earlier blocks; chunk_counts[c, e] = tokens routed to e in the chunk;
//   scatter: one workgroup per block: slots[t, j] for every choice of its tokens;
//   single:  the three at once when the step is one block (N <= 64, as in decode): one
//            workgroup, invocation e going over its expert's choices once.

struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    chunk: u32,
    blocks: u32,
    chunks: u32,
}

const BLOCK: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> topk_idx: array<u32>;
@group(0) @binding(2) var<storage, read> topk_prob: array<f32>;
@group(0) @binding(3) var<storage, read_write> block_counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> block_loads: array<f32>;
@group(0) @binding(5) var<storage, read_write> block_offsets: array<u32>;
@group(0) @binding(6) var<storage, read_write> chunk_counts: array<u32>;
@group(0) @binding(7) var<storage, read_write> slots: array<u32>;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(64)
fn count(
    @builtin(local_invocation_index) e: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let b = group_index(wid, nwg);
    if b >= p.blocks || e >= p.experts {
        return;
    }
    let t0 = b * BLOCK;
    let t1 = min(t0 + BLOCK, p.n);
    var count = 0u;
    var load = 0.0;
    for (var i = t0 * p.top_k; i < t1 * p.top_k; i++) {
        if topk_idx[i] == e {
            count++;
            load += topk_prob[i];
        }
    }
    block_counts[b * p.experts + e] = count;
    block_loads[b * p.experts + e] = load;
}

@compute @workgroup_size(64)
fn scan(
    @builtin(local_invocation_index) e: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = group_index(wid, nwg);
    if c >= p.chunks || e >= p.experts {
        return;
    }
    let b0 = c * p.chunk / BLOCK;
    let b1 = min(((c + 1u) * p.chunk + BLOCK - 1u) / BLOCK, p.blocks);
    var running = 0u;
    for (var b = b0; b < b1; b++) {
        block_offsets[b * p.experts + e] = running;
        running += block_counts[b * p.experts + e];
    }
    chunk_counts[c * p.experts + e] = running;
}

@compute @workgroup_size(64)
fn scatter(
    @builtin(local_invocation_index) e: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let b = group_index(wid, nwg);
    if b >= p.blocks || e >= p.experts {
        return;
    }
    let t0 = b * BLOCK;
    let t1 = min(t0 + BLOCK, p.n);
    var slot = e * p.chunk + block_offsets[b * p.experts + e];
    for (var i = t0 * p.top_k; i < t1 * p.top_k; i++) {
        if topk_idx[i] == e {
            slots[i] = slot;
            slot++;
        }
    }
}

@compute @workgroup_size(64)
fn single(@builtin(local_invocation_index) e: u32) {
    if p.blocks != 1u || e >= p.experts {
        return;
    }
    var count = 0u;
    var load = 0.0;
    for (var i = 0u; i < p.n * p.top_k; i++) {
        if topk_idx[i] == e {
            slots[i] = e * p.chunk + count;
            count++;
            load += topk_prob[i];
        }
    }
    block_counts[e] = count;
    block_loads[e] = load;
    block_offsets[e] = 0u;
    chunk_counts[e] = count;
}
