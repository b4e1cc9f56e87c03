// The soft cap c * tanh(x / c) (xLSTM-Large's gates and logits), shared by the matmul and
// mLSTM cell kernels; the registry appends this file to each. tanh from one exp of a
// non-positive argument: no overflow for any x, unlike sinh / cosh.
fn soft_cap(x: f32, c: f32) -> f32 {
    let e = exp(-2.0 * abs(x / c));
    return sign(x) * c * (1.0 - e) / (1.0 + e);
}
