// How the sLSTM cell's invocations share h_prev (appended to shaders/slstm_cell.wgsl in the
// registry's `slstm_cell`; common/slstm_h_subgroup.wgsl is the alternative): in workgroup
// memory, written between barriers. hn holds the h of this invocation's units (unit
// lid + u * WG in component u).

// Whether h is shared by subgroup operations (every invocation must then take part in
// each recurrent product).
const H_BY_SUBGROUP = false;

// h_prev as scalars (columns layout) and as vec4 (rows layout).
var<workgroup> hs: array<f32, HS_LEN>;
var<workgroup> hs4: array<vec4<f32>, HS4_LEN>;

// h_prev[k] (columns layout).
fn h_one(k: u32, hn: vec4<f32>) -> f32 {
    return hs[k];
}

// h_prev[4 k4 .. 4 k4 + 3] (rows layout; zero past DH).
fn h_quad(k4: u32, hn: vec4<f32>) -> vec4<f32> {
    return hs4[k4];
}

// Writes this invocation's units of h where h_one and h_quad read them.
fn store_h(lid: u32, hn: vec4<f32>) {
    for (var u = 0u; u < UNITS; u++) {
        let j = lid + u * WG;
        if j < DH {
            if ROWS {
                hs4[j >> 2u][j & 3u] = hn[u];
            } else {
                hs[j] = hn[u];
            }
        }
    }
}

// Before the first token: the state's h (and the SHARED copy of R, written before this
// call) readable by every invocation.
fn init_h(lid: u32, hn: vec4<f32>) {
    if ROWS {
        // The padding of h_prev meets the zero padding of R: keep it 0, not garbage.
        for (var e = DH + lid; e < 4u * HS4_LEN; e += WG) {
            hs4[e >> 2u][e & 3u] = 0.0;
        }
    }
    store_h(lid, hn);
    workgroupBarrier();
}

// After a token: its h replaces h_prev once every invocation has read h_prev.
fn publish_h(lid: u32, hn: vec4<f32>) {
    workgroupBarrier();
    store_h(lid, hn);
    workgroupBarrier();
}
