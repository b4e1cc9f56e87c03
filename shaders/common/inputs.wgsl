// The input loads of the matmul kernels for plain inputs (appended after
// common/matmul.wgsl; common/inputs_glu.wgsl is the gated alternative).

// Eight consecutive inputs of token t starting at column c + k, with k + 8 <= K.
fn load_x8(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    return raw_x8(p.x_offset + t * p.x_stride + c + k);
}

// The same for the last, partial block: zero past K. Whole loads and a select, not a loop
// into a private array (which CPU adapters spill to memory); loads past K read whatever
// the buffer holds there (bounds-checked) and are discarded.
fn load_x8_tail(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    let b = p.x_offset + t * p.x_stride + c + k;
    let n = vec4<u32>(p.k - k);
    let i = vec4<u32>(0u, 1u, 2u, 3u);
    var v = array<vec4<f32>, 2>();
    v[0] = raw_x4(b);
    // The second quad only where some of it is within K (headwise blocks of 4 inputs never).
    if p.k - k > 4u {
        v[1] = raw_x4(b + 4u);
    }
    return array<vec4<f32>, 2>(select(vec4<f32>(0.0), v[0], i < n), select(vec4<f32>(0.0), v[1], i + 4u < n));
}
