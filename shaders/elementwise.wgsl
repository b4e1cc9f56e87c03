// Elementwise kernels over 2-D strided views of f32 buffers.
//
// A view is `rows` rows of `cols` elements; element (r, c) of view v is at
// v_offset + r * v_stride + c. Grid: (ceil(cols / 64), rows) with rows split over y and z
// (row = wid.y + wid.z * 65535) so any row count fits the per-dimension limit.
//
//   unary:  y = act(a)
//   binary: y = a + b      (OP 0)
//           y = a * b      (OP 1)
//           y = act(a) * b (OP 2, gated linear unit)
//           y = act(a) * act_b(b) (OP 3, e.g. sigmoid(o) * tanh(z))
//
// ACT: an activation code of shaders/common/activation.wgsl (appended).

struct Params {
    rows: u32,
    cols: u32,
    a_stride: u32,
    a_offset: u32,
    b_stride: u32,
    b_offset: u32,
    y_stride: u32,
    y_offset: u32,
}

override ACT: u32 = 0u;
// The activation of b in OP 3 (codes as ACT).
override ACT_B: u32 = 0u;
override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn act(x: f32) -> f32 {
    return activate(ACT, x);
}

// (row, col) of this invocation, or row == rows when out of range.
fn position(gid: vec3<u32>, wid: vec3<u32>) -> vec2<u32> {
    let row = wid.y + wid.z * 65535u;
    if gid.x >= p.cols || row >= p.rows {
        return vec2<u32>(0u, p.rows);
    }
    return vec2<u32>(gid.x, row);
}

@compute @workgroup_size(64)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let rc = position(gid, wid);
    if rc.y >= p.rows {
        return;
    }
    let v = a[p.a_offset + rc.y * p.a_stride + rc.x];
    y[p.y_offset + rc.y * p.y_stride + rc.x] = act(v);
}

@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let rc = position(gid, wid);
    if rc.y >= p.rows {
        return;
    }
    let va = a[p.a_offset + rc.y * p.a_stride + rc.x];
    let vb = b[p.b_offset + rc.y * p.b_stride + rc.x];
    var r: f32;
    switch OP {
        case 1u: { r = va * vb; }
        case 2u: { r = act(va) * vb; }
        case 3u: { r = act(va) * activate(ACT_B, vb); }
        default: { r = va + vb; }
    }
    y[p.y_offset + rc.y * p.y_stride + rc.x] = r;
}
