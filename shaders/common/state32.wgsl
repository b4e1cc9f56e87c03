// The mLSTM state C of shaders/mlstm_step_simd.wgsl as 16-byte quads of f32 (binding 5).
// shaders/common/state64.wgsl is the alternative.

@group(0) @binding(5) var<storage, read_write> c: array<vec4<f32>>;

// Quad i of C (floats 4 i .. 4 i + 3).
fn c_load(i: u32) -> vec4<f32> {
    return c[i];
}

// Writes quad i of C.
fn c_store(i: u32, v: vec4<f32>) {
    c[i] = v;
}
