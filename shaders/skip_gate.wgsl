// The mLSTM block's output gate with its learnable skip (MODEL.md section 5):
//   y = (h + w * xc) * silu(z)
// over (rows, cols) views of f32 buffers: element (r, c) of view v at v_offset + r * v_stride
// + c; w is (cols). Grid: (ceil(cols / 64), rows split over y and z: row = wid.y + wid.z *
// 65535).

struct Params {
    rows: u32,
    cols: u32,
    h_offset: u32,
    h_stride: u32,
    xc_offset: u32,
    xc_stride: u32,
    z_offset: u32,
    z_stride: u32,
    y_offset: u32,
    y_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> xc: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// x * sigmoid(x) without overflow for either sign.
fn silu(x: f32) -> f32 {
    let e = exp(-abs(x));
    return x * select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

@compute @workgroup_size(64)
fn skip_gate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = gid.x;
    let r = wid.y + wid.z * 65535u;
    if c >= p.cols || r >= p.rows {
        return;
    }
    let hv = h[p.h_offset + r * p.h_stride + c];
    let xv = xc[p.xc_offset + r * p.xc_stride + c];
    let zv = z[p.z_offset + r * p.z_stride + c];
    y[p.y_offset + r * p.y_stride + c] = (hv + w[c] * xv) * silu(zv);
}
