// Embedding lookup: out[r, c] = table[ids[r], c] for the rows of one table chunk.
//
// table: one row chunk (rows row_base .. row_base + chunk_rows of the full (V, D) table),
//        rows of `stride` elements: f32, f16 / bf16 pairs packed in u32, or q8 / q4 data
//        with the block scales in `scales` (s_stride words per row) (WDT override,
//        common/weights.wgsl).
// ids: u32 (rows); rows whose id is outside this chunk are left to the other chunks'
//      dispatches. out: element (r, c) at out_offset + r * out_stride + c (f32).
// Grid: (ceil(D / 64), rows split over y and z: r = wid.y + wid.z * 65535).

struct Params {
    rows: u32,
    dim: u32,
    stride: u32,
    row_base: u32,
    chunk_rows: u32,
    out_stride: u32,
    out_offset: u32,
    s_stride: u32,
}


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;

@compute @workgroup_size(64)
fn lookup(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = gid.x;
    let r = wid.y + wid.z * 65535u;
    if c >= p.dim || r >= p.rows {
        return;
    }
    let id = ids[r];
    if id < p.row_base || id - p.row_base >= p.chunk_rows {
        return;
    }
    let e = (id - p.row_base) * p.stride + c;
    var v: f32;
    if WDT >= 3u {
        // 4 (q8) or 8 (q4) weights per word.
        let per = select(8u, 4u, WDT == 3u);
        let s = scales[(id - p.row_base) * p.s_stride + c / 32u];
        v = dequant_one(table[e / per], e, s);
    } else if WDT != 0u {
        let pair = unpack_pair(table[e / 2u]);
        v = select(pair.x, pair.y, e % 2u == 1u);
    } else {
        v = bitcast<f32>(table[e]);
    }
    out[p.out_offset + r * p.out_stride + c] = v;
}
