// Shared by mlstm_chunk and mlstm_chunk_wide (appended by the registry after
// common/mlstm_cell.wgsl): the chunk geometry, the per-chunk workgroup arrays both keep
// alike, and the gate prefix of a chunk.

const L: u32 = 32u; // tokens per chunk
const L4: u32 = 8u; // L / 4
const TI: u32 = 32u;
const WG: u32 = 64u;
const MAX_DH: u32 = 512u;
const NEG: f32 = -3.0e38;

var<workgroup> ns: array<f32, MAX_DH>; // n (DK)
var<workgroup> bb: array<f32, L>; // b_t
var<workgroup> aa: array<f32, L>; // a_s (very negative past the chunk's end)
var<workgroup> mx: array<f32, L>; // M_t
var<workgroup> gs: array<f32, L>; // exp(a_s - M_e), zero past the chunk's end
var<workgroup> dn: array<f32, L>; // q_t . n0, then the denominator

// The chunk's gate prefix (one invocation): b_t = sum_{l<=t} logsig(f_l) (chunk-local),
// a_s = i_s - b_s, M_t = max(m0, max_{s<=t} a_s), and gs_s = exp(a_s - M_e), for the `len`
// tokens from row0 of head hd; past the chunk's end a_s is very negative and gs_s zero.
fn gate_prefix(row0: u32, hd: u32, len: u32, m0: f32) {
    var bsum = 0.0;
    var run = NEG;
    var mt = m0;
    for (var t = 0u; t < L; t++) {
        var a = NEG;
        if t < len {
            bsum += gate_log_f(row0 + t, hd);
            a = gate_i(row0 + t, hd) - bsum;
            run = max(run, a);
            mt = max(m0, run);
        }
        bb[t] = bsum;
        aa[t] = a;
        mx[t] = mt;
    }
    for (var s = 0u; s < L; s++) {
        gs[s] = exp(aa[s] - mt);
    }
}
