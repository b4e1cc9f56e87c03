// Negative log-likelihood of target ids: nll[r] = logsumexp(logits[r, :]) - logits[r, target[r]].
// One workgroup of 256 invocations per row; each owns a contiguous segment of the vocab.
// logits: row r at logits_offset + r * logits_stride; targets u32 (rows); nll f32 (rows).

struct Params {
    vocab: u32,
    rows: u32,
    logits_stride: u32,
    logits_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> nll: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce(lid: u32, v: f32, take_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            if take_max {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] += red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn nll_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.x + wid.y * 65535u;
    if r >= p.rows {
        return;
    }
    let base = p.logits_offset + r * p.logits_stride;
    let seg = (p.vocab + 255u) / 256u;
    let lo = min(lid * seg, p.vocab);
    let hi = min(lo + seg, p.vocab);
    var m = -3.4e38;
    for (var i = lo; i < hi; i++) {
        m = max(m, logits[base + i]);
    }
    m = reduce(lid, m, true);
    var s = 0.0;
    for (var i = lo; i < hi; i++) {
        s += exp(logits[base + i] - m);
    }
    s = reduce(lid, s, false);
    if lid == 0u {
        nll[r] = log(s) + m - logits[base + targets[r]];
    }
}
