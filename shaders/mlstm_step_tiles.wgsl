// mLSTM cell, recurrent form for GPUs: the math and layouts of mlstm_step.wgsl (read that
// file first), one token of every sequence per pair of dispatches:
//   tile:   grid (NH * ceil(DV / 32), B), workgroups of 256 = 8 row groups x 32 columns.
//           A workgroup updates 32 columns of one head's C (invocation (g, jj) the rows
//           g, g + 8, .. of column jj, coalesced across jj) and computes their h. Each
//           workgroup derives m', f', i' and q . n' from the old m and n, which it only reads.
//   update: grid (NH, B), workgroups of 64: writes n' and m' once every tile has read n and m
//           (the next dispatch).
// One head spread over DV / 32 workgroups keeps a GPU's multiprocessors busy where one
// workgroup per head (mlstm_step_wide) leaves most of them idle: that kernel took 132 us per
// block at DK = 256, DV = 512 on an H200.

const TILE: u32 = 32u;
const GROUPS: u32 = 8u;
const MAX_DH: u32 = 512u;

// Params, bindings 0-4, 6, 7 and the gates: shaders/common/mlstm_cell.wgsl (appended).
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

var<workgroup> qs: array<f32, MAX_DH>;
var<workgroup> ks: array<f32, MAX_DH>;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn tile(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tiles = (p.v_dim + TILE - 1u) / TILE;
    let hd = wid.x / tiles;
    let j = (wid.x % tiles) * TILE + lid % TILE;
    let g = lid / TILE;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let dk = p.qk_dim;
    let row = b * p.tokens + p.token_base;
    let s = gate_step(row, hd, m[sh]);
    let nbase = sh * dk;
    var part = 0.0;
    for (var i = lid; i < dk; i += 256u) {
        let q = qkv[q_at(row, hd, i)];
        let k = qkv[k_at(row, hd, i)] * p.scale;
        qs[i] = q;
        ks[i] = k;
        part += q * (s.fa * n[nbase + i] + s.ia * k);
    }
    red[lid] = part;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if lid < w {
            red[lid] += red[lid + w];
        }
        workgroupBarrier();
    }
    let den = max(abs(red[0]), exp(-s.m_new)) + p.eps;
    // red holds the column sums next.
    workgroupBarrier();
    // Invocations past DV repeat the last column (reads only) and store nothing.
    let live = j < p.v_dim;
    let jc = min(j, p.v_dim - 1u);
    let iv = s.ia * qkv[v_at(row, hd, jc)];
    var acc = 0.0;
    var ci = (sh * dk + g) * p.c_stride + jc;
    for (var i = g; i < dk; i += GROUPS) {
        let cv = s.fa * c[ci] + ks[i] * iv;
        if live {
            c[ci] = cv;
        }
        acc += qs[i] * cv;
        ci += GROUPS * p.c_stride;
    }
    red[lid] = acc;
    workgroupBarrier();
    if g == 0u && live {
        var total = 0.0;
        for (var r = 0u; r < GROUPS; r++) {
            total += red[r * TILE + lid];
        }
        h[h_at(row, hd, j)] = total / den;
    }
}

@compute @workgroup_size(64)
fn update(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let hd = wid.x;
    let b = wid.y;
    let sh = state_index(b, hd);
    if sh == SKIPPED {
        return;
    }
    let row = b * p.tokens + p.token_base;
    let s = gate_step(row, hd, m[sh]);
    let nbase = sh * p.qk_dim;
    for (var i = lid; i < p.qk_dim; i += 64u) {
        n[nbase + i] = s.fa * n[nbase + i] + s.ia * qkv[k_at(row, hd, i)] * p.scale;
    }
    // Every invocation has read the old m before it is replaced.
    workgroupBarrier();
    if lid == 0u {
        m[sh] = s.m_new;
    }
}
