// The input loads of the matmul kernels for gated inputs (appended after
// common/matmul.wgsl and common/activation.wgsl, in the registry's `*_glu` modules): a gated
// FFN's down-projection reads its up-projection's output [a | b] in place, input k being
// activate(GLU - 1, a[k]) * b[k] with b at column glu_cols of x: elementwise.wgsl's GLU
// fused into the loads. Modules of their own, so that the plain products never compile the
// activations (lavapipe inlines every call before removing dead code).

// The activation code + 1 (common/activation.wgsl).
override GLU: u32 = 1u;

// activate(GLU - 1, a) * g, per component.
fn glu4(a: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    let c = GLU - 1u;
    return vec4<f32>(activate(c, a.x), activate(c, a.y), activate(c, a.z), activate(c, a.w)) * g;
}

// Eight consecutive gated inputs of token t starting at column c + k, with k + 8 <= K.
fn load_x8(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    let b = p.x_offset + t * p.x_stride + c + k;
    let v = raw_x8(b);
    let g = raw_x8(b + p.glu_cols);
    return array<vec4<f32>, 2>(glu4(v[0], g[0]), glu4(v[1], g[1]));
}

// The same for the last, partial block: zero past K (the select drops whatever, NaN
// included, the gate made of the elements past K).
fn load_x8_tail(t: u32, c: u32, k: u32) -> array<vec4<f32>, 2> {
    let b = p.x_offset + t * p.x_stride + c + k;
    let n = vec4<u32>(p.k - k);
    let i = vec4<u32>(0u, 1u, 2u, 3u);
    var v = array<vec4<f32>, 2>();
    v[0] = glu4(raw_x4(b), raw_x4(b + p.glu_cols));
    if p.k - k > 4u {
        v[1] = glu4(raw_x4(b + 4u), raw_x4(b + 4u + p.glu_cols));
    }
    return array<vec4<f32>, 2>(select(vec4<f32>(0.0), v[0], i < n), select(vec4<f32>(0.0), v[1], i + 4u < n));
}
