// Weight words of the matmul kernels read as the declared array<vec4<u32>> (the modules
// without SHADER_INT64); shaders/common/words64.wgsl is the alternative.

// The four u32 words of w at index i (16 bytes).
fn w_words(i: u32) -> vec4<u32> {
    return w[i];
}

// Word c (< 4) of w at index i.
fn w_word(i: u32, c: u32) -> u32 {
    return w[i][c];
}
