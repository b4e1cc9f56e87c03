// How the sLSTM cell's invocations share h_prev (appended to shaders/slstm_cell.wgsl in the
// registry's `slstm_cell_subgroup`; common/slstm_h_shared.wgsl is the alternative): each
// invocation keeps its units' h in registers (hn: unit lid + u * WG in component u) and
// reads the others' by subgroup shuffles, so no workgroup memory and no barriers. Valid
// only where one subgroup holds the whole workgroup, with WG a multiple of 4 and without
// SHARED (nothing here orders the copy of R into workgroup memory): the host runs it on
// CPU adapters with a fixed subgroup size of at least 8, the rows layout and WG = 8. The
// shuffles take invocation i of the workgroup to be lane i of its subgroup (as on llvmpipe;
// see Context::subgroup_holds).

// Whether h is shared by subgroup operations (every invocation must then take part in
// each recurrent product).
const H_BY_SUBGROUP = true;

// h_prev[k] (columns layout; the host never pairs it with this variant, it is here so that
// the module is whole).
fn h_one(k: u32, hn: vec4<f32>) -> f32 {
    return subgroupShuffle(hn[k / WG], k % WG);
}

// h_prev[4 k4 .. 4 k4 + 3] (rows layout; zero past DH): units 4 k4 .. 4 k4 + 3 are
// component (4 k4) / WG of four consecutive invocations.
fn h_quad(k4: u32, hn: vec4<f32>) -> vec4<f32> {
    let j = 4u * k4;
    let v = hn[min(j / WG, 3u)];
    let l = j % WG;
    let q = vec4<f32>(subgroupShuffle(v, l), subgroupShuffle(v, l + 1u), subgroupShuffle(v, l + 2u), subgroupShuffle(v, l + 3u));
    return select(vec4<f32>(0.0), q, vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(DH));
}

// Nothing to publish: h_one and h_quad read the invocations' own hn.
fn init_h(lid: u32, hn: vec4<f32>) {}

fn publish_h(lid: u32, hn: vec4<f32>) {}
