// The mLSTM state C of shaders/mlstm_step_simd.wgsl through a 64-bit view (binding 5;
// modules that need SHADER_INT64, chosen on CPU adapters): lavapipe loads and stores storage
// one vector component at a time in a loop over the SIMD lanes, so a quad costs two
// component accesses instead of four. shaders/common/state32.wgsl is the alternative.

@group(0) @binding(5) var<storage, read_write> c64: array<vec2<u64>>;

// The two f32 held by u64 d (little-endian: the low half first).
fn c_pair(d: u64) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(u32(d & 0xfffffffflu)), bitcast<f32>(u32(d >> 32u)));
}

// The u64 that holds f32 a (low half) and b.
fn c_word(a: f32, b: f32) -> u64 {
    return u64(bitcast<u32>(a)) | (u64(bitcast<u32>(b)) << 32u);
}

// Quad i of C (floats 4 i .. 4 i + 3).
fn c_load(i: u32) -> vec4<f32> {
    let d = c64[i];
    return vec4<f32>(c_pair(d.x), c_pair(d.y));
}

// Writes quad i of C.
fn c_store(i: u32, v: vec4<f32>) {
    c64[i] = vec2<u64>(c_word(v.x, v.y), c_word(v.z, v.w));
}
