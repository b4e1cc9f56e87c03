// Shared by mlstm_chunk and mlstm_chunk_wide (appended by the registry after
// common/mlstm_cell.wgsl): the chunk geometry, the per-chunk workgroup arrays both keep
// alike, and where q of a row and head starts in qkv.

const L: u32 = 32u; // tokens per chunk
const L4: u32 = 8u; // L / 4
const TI: u32 = 32u;
const WG: u32 = 64u;
const MAX_DH: u32 = 512u;
const NEG: f32 = -3.0e38;

var<workgroup> ns: array<f32, MAX_DH>; // n
var<workgroup> bb: array<f32, L>; // b_t
var<workgroup> aa: array<f32, L>; // a_s (very negative past the chunk's end)
var<workgroup> mx: array<f32, L>; // M_t
var<workgroup> gs: array<f32, L>; // exp(a_s - M_e), zero past the chunk's end
var<workgroup> dn: array<f32, L>; // q_t . n0, then the denominator

// Index of q[row, hd * DH + i] in qkv (k and v follow at + Di and + 2 Di).
fn q_index(row: u32, hd: u32, i: u32) -> u32 {
    return p.qkv_offset + row * p.qkv_stride + hd * p.head_dim + i;
}
