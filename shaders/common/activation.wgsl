// Activations shared by the elementwise kernels, the matmul kernels' gated inputs and the
// cells (appended by the shader registry). Codes (`Activation::code` on the host): 0
// identity, 1 silu, 2 gelu (exact, erf form), 3 relu, 4 relu^2, 5 sigmoid, 6 selu, 7 tanh.

// Numerically stable logistic function.
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// erfc(z) with relative error below 1.2e-7 for all z (Chebyshev fit, W. H. Press et al.).
fn erfc(z: f32) -> f32 {
    let az = abs(z);
    let t = 1.0 / (1.0 + 0.5 * az);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-az * az + poly);
    return select(2.0 - r, r, z >= 0.0);
}

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2), accurate for both signs.
fn gelu(x: f32) -> f32 {
    return 0.5 * x * erfc(-x * 0.70710678118654752);
}

// Activation `code` (a pipeline constant at every call, so the switch folds away).
fn activate(code: u32, x: f32) -> f32 {
    switch code {
        case 1u: { return x * sigmoid(x); }
        case 2u: { return gelu(x); }
        case 3u: { return max(x, 0.0); }
        case 4u: { let r = max(x, 0.0); return r * r; }
        case 5u: { return sigmoid(x); }
        case 6u: {
            let alpha = 1.6732632423543772;
            let scale = 1.0507009873554805;
            return scale * select(alpha * (exp(x) - 1.0), x, x > 0.0);
        }
        case 7u: { return tanh(x); }
        default: { return x; }
    }
}
