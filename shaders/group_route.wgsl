// Per-group token lists of a latent MoE layer (see src/ops/group_route.rs): the experts are
// split into G contiguous groups of s = E / G, and every token that routed at least one of
// its top-k choices into group g gets ONE row in group g's region, in token order:
// row = g * chunk + (earlier tokens of the same chunk that hit g). Every choice (t, j) records
// the row of its token in its expert's group, so two choices of one token in the same group
// share a row. Deterministic: no atomics.
//
// Blocks of 64 tokens never straddle chunks (chunk is a multiple of 64, or there is one
// chunk). Workgroups of 64 invocations; invocation g < G handles group g.
//   count:   one workgroup per block: block_counts[b, g] = tokens of block b that hit g;
//   scan:    one workgroup per chunk: block_offsets[b, g] (hits in the chunk's earlier
//            blocks) and chunk_counts[c, g] (tokens of chunk c that hit g);
//   scatter: one workgroup per block: slots[t, j] for every choice of its tokens.

struct Params {
    n: u32,
    top_k: u32,
    chunk: u32,
    blocks: u32,
    chunks: u32,
    groups: u32,
    group_size: u32,
}

const BLOCK: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> topk_idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> block_counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> block_offsets: array<u32>;
@group(0) @binding(4) var<storage, read_write> chunk_counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> slots: array<u32>;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Whether token t routed any choice into group g.
fn hits(t: u32, g: u32) -> bool {
    var hit = false;
    for (var j = 0u; j < p.top_k; j++) {
        hit = hit || topk_idx[t * p.top_k + j] / p.group_size == g;
    }
    return hit;
}

@compute @workgroup_size(64)
fn count(
    @builtin(local_invocation_index) g: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let b = group_index(wid, nwg);
    if b >= p.blocks || g >= p.groups {
        return;
    }
    var count = 0u;
    for (var t = b * BLOCK; t < min(b * BLOCK + BLOCK, p.n); t++) {
        count += u32(hits(t, g));
    }
    block_counts[b * p.groups + g] = count;
}

@compute @workgroup_size(64)
fn scan(
    @builtin(local_invocation_index) g: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = group_index(wid, nwg);
    if c >= p.chunks || g >= p.groups {
        return;
    }
    let b0 = c * p.chunk / BLOCK;
    let b1 = min(((c + 1u) * p.chunk + BLOCK - 1u) / BLOCK, p.blocks);
    var running = 0u;
    for (var b = b0; b < b1; b++) {
        block_offsets[b * p.groups + g] = running;
        running += block_counts[b * p.groups + g];
    }
    chunk_counts[c * p.groups + g] = running;
}

@compute @workgroup_size(64)
fn scatter(
    @builtin(local_invocation_index) g: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let b = group_index(wid, nwg);
    if b >= p.blocks || g >= p.groups {
        return;
    }
    var slot = g * p.chunk + block_offsets[b * p.groups + g];
    for (var t = b * BLOCK; t < min(b * BLOCK + BLOCK, p.n); t++) {
        var hit = false;
        for (var j = 0u; j < p.top_k; j++) {
            let i = t * p.top_k + j;
            if topk_idx[i] / p.group_size == g {
                slots[i] = slot;
                hit = true;
            }
        }
        slot += u32(hit);
    }
}
