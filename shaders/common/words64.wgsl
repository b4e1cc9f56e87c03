// Weight words of the matmul kernels read through a 64-bit view of w (modules that need
// SHADER_INT64, chosen on CPU adapters): lavapipe loads storage one vector component at a
// time in a loop over the SIMD lanes, so 16 bytes cost two component loads instead of four.
// shaders/common/words32.wgsl is the alternative.

// The same buffer as w.
@group(0) @binding(7) var<storage, read> w64: array<vec2<u64>>;

// The four u32 words of w at index i (16 bytes; little-endian halves of the u64s).
fn w_words(i: u32) -> vec4<u32> {
    let d = w64[i];
    return vec4<u32>(u32(d.x & 0xfffffffflu), u32(d.x >> 32u), u32(d.y & 0xfffffffflu), u32(d.y >> 32u));
}

// Word c (< 4) of w at index i.
fn w_word(i: u32, c: u32) -> u32 {
    let d = w64[i][c / 2u];
    return u32(select(d & 0xfffffffflu, d >> 32u, c % 2u == 1u));
}
