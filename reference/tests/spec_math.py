"""An independent implementation of MODEL.md, written from the spec text only (no xlstm
package code, no moxe_ref code), in float64 and in the recurrent (engine-like) form.

The tests run it against the fixtures made with the package: if they agree, MODEL.md describes
exactly what the package computes, and the fixtures are what the engine should reproduce.
Tensor names are those of the engine checkpoint format (MODEL.md section 7).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

F64 = torch.float64
LN_EPS = 1e-5
MLSTM_EPS = 1e-6


def sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def logsig(x):
    # log(sigma(x)) = -softplus(-x), computed stably
    return -torch.nn.functional.softplus(-x)


def silu(x):
    return x * sigmoid(x)


ACTS = {
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "relu": lambda x: torch.clamp(x, min=0),
    "relu^2": lambda x: torch.clamp(x, min=0) ** 2,
    "sigmoid": sigmoid,
    "swish": silu,
    "selu": lambda x: 1.0507009873554804934193349852946 * torch.where(
        x > 0, x, 1.6732632423543772848170429916717 * (torch.exp(x) - 1)),
}


def layernorm(x, w, eps=LN_EPS):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * (1.0 + w)


def mh_layernorm(h, w, nh, eps=LN_EPS):
    """h (..., NH*DH) flat; normalised per head over DH; gamma = 1 + w."""
    shp = h.shape
    hh = h.reshape(*shp[:-1], nh, -1)
    mu = hh.mean(-1, keepdim=True)
    var = ((hh - mu) ** 2).mean(-1, keepdim=True)
    return ((hh - mu) / torch.sqrt(var + eps)).reshape(shp) * (1.0 + w)


def headwise(w, x, b=None):
    """w (NH, O, I); y[h*O + o] = sum_d x[h*I + d] w[h, o, d]."""
    nh, o, i = w.shape
    xs = x.reshape(*x.shape[:-1], nh, i)
    y = torch.einsum("...hd,hod->...ho", xs, w).reshape(*x.shape[:-1], nh * o)
    return y if b is None else y + b


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


# ----------------------------------------------------------------------------- conv

def conv_step(x, state, w, b):
    """x (B, F) one token; state (B, K-1, F) previous inputs oldest first; w (F, 1, K)."""
    window = torch.cat([state, x[:, None]], 1)  # (B, K, F)
    y = (window * w[:, 0, :].T[None]).sum(1) + b
    return y, window[:, 1:]


def conv_seq(x, w, b, state=None):
    bsz, s, f = x.shape
    k = w.shape[-1]
    st = torch.zeros(bsz, k - 1, f, dtype=x.dtype) if state is None else state
    ys = []
    for t in range(s):
        y, st = conv_step(x[:, t], st, w, b)
        ys.append(y)
    return torch.stack(ys, 1), st


# ----------------------------------------------------------------------------- sLSTM

def rk_apply(r, h, nh, layout="vanilla"):
    """(R h)_g[h*DH + j] for all gates, gate-major (B, 4D)."""
    bsz, d = h.shape
    dh = d // nh
    hh = h.reshape(bsz, nh, dh)
    if layout == "vanilla":  # R (NH, 4DH, DH): sum_k h[k] R[h, g*DH + j, k]
        y = torch.einsum("bhk,hgk->bhg", hh, r)
    else:  # cuda R (NH, DH, 4DH): sum_k h[k] R[h, k, g*DH + j]
        y = torch.einsum("bhk,hkg->bhg", hh, r)
    return y.reshape(bsz, nh, 4, dh).permute(0, 2, 1, 3).reshape(bsz, 4 * d)


def bias_vanilla(b, nh, layout="vanilla"):
    if layout == "vanilla":
        return b
    d4 = b.shape[0]
    dh = d4 // 4 // nh
    return b.reshape(nh, 4, dh).permute(1, 0, 2).reshape(-1)  # b[h*4DH + g*DH + j] -> gate-major


def slstm_cell_step(pre, state, r, b, nh, layout="vanilla"):
    """pre (B, 4D) gate-major W x; state (h, c, n, m) each (B, D)."""
    h, c, n, m = state
    d = h.shape[-1]
    raw = pre + rk_apply(r, h, nh, layout) + bias_vanilla(b, nh, layout)
    ri, rf, rz, ro = raw[:, :d], raw[:, d:2 * d], raw[:, 2 * d:3 * d], raw[:, 3 * d:]
    logfpm = m + logsig(rf)
    m_new = torch.where(n == 0, ri, torch.maximum(ri, logfpm))  # per element (MODEL.md section 8)
    i_ = torch.clamp(torch.exp(ri - m_new), max=1.0)
    f_ = torch.clamp(torch.exp(logfpm - m_new), max=1.0)
    c_new = f_ * c + i_ * torch.tanh(rz)
    n_new = f_ * n + i_
    h_new = sigmoid(ro) * c_new / n_new
    return h_new, (h_new, c_new, n_new, m_new)


def slstm_block_step(x, st, p, pre, cfg, layout="vanilla"):
    """One token x (B, D) through an sLSTM block; st = {"conv": (B, K-1, D), "cell": (h,c,n,m)}."""
    nh = cfg["nh"]
    xn = layernorm(x, p[pre + "xlstm_norm.weight"])
    if cfg["k"] > 0:
        xc, conv = conv_step(xn, st["conv"], p[pre + "xlstm.conv1d.conv.weight"], p[pre + "xlstm.conv1d.conv.bias"])
        xc = silu(xc)
    else:
        xc, conv = xn, st["conv"]
    pre_i = headwise(p[pre + "xlstm.fgate.weight"], xc)  # the parameter NAMED fgate drives the input gate
    pre_f = headwise(p[pre + "xlstm.igate.weight"], xc)
    pre_z = headwise(p[pre + "xlstm.zgate.weight"], xn)
    pre_o = headwise(p[pre + "xlstm.ogate.weight"], xn)
    h, cell = slstm_cell_step(torch.cat([pre_i, pre_f, pre_z, pre_o], -1), st["cell"],
                              p[pre + "xlstm.slstm_cell._recurrent_kernel_"], p[pre + "xlstm.slstm_cell._bias_"], nh, layout)
    y = mh_layernorm(h, p[pre + "xlstm.group_norm.weight"], nh)
    x = x + y
    if pre + "ffn.proj_up.weight" in p:
        x = x + gated_ffn(layernorm(x, p[pre + "ffn_norm.weight"]), p, pre + "ffn.", cfg["act"])
    return x, {"conv": conv, "cell": cell}


def slstm_zero_state(bsz, d, k):
    z = torch.zeros(bsz, d, dtype=F64)
    return {"conv": torch.zeros(bsz, max(k - 1, 0), d, dtype=F64), "cell": (z, z, z, z)}


def gated_ffn(x, p, pre, act):
    up = linear(x, p[pre + "proj_up.weight"], p.get(pre + "proj_up.bias"))
    half = up.shape[-1] // 2
    a, b = up[..., :half], up[..., half:]
    return linear(ACTS[act](a) * b, p[pre + "proj_down.weight"], p.get(pre + "proj_down.bias"))


# ----------------------------------------------------------------------------- mLSTM

def mlstm_cell_step(q, k, v, ipre, fpre, state):
    """q, k, v (B, NH, DH); ipre, fpre (B, NH); state C (B,NH,DH,DH), n (B,NH,DH), m (B,NH)."""
    C, n, m = state
    dh = q.shape[-1]
    lf = logsig(fpre)
    m_new = torch.maximum(lf + m, ipre)
    f_ = torch.exp(lf + m - m_new)[..., None]
    i_ = torch.exp(ipre - m_new)[..., None]
    kk = k / math.sqrt(dh)
    C = f_[..., None] * C + i_[..., None] * kk[..., :, None] * v[..., None, :]
    n = f_ * n + i_ * kk
    num = torch.einsum("...a,...ab->...b", q, C)
    den = torch.maximum((q * n).sum(-1).abs(), torch.exp(-m_new)) + MLSTM_EPS
    return num / den[..., None], (C, n, m_new)


def mlstm_parallel(q, k, v, ipre, fpre):
    """Parallel form (m0 = -inf); q, k, v (B, NH, S, DH); ipre, fpre (B, NH, S)."""
    s, dh = q.shape[-2], q.shape[-1]
    lf = logsig(fpre)
    cs = torch.cumsum(lf, -1)
    logF = cs[..., :, None] - cs[..., None, :]  # sum_{l=s+1..t}
    mask = torch.tril(torch.ones(s, s, dtype=torch.bool))
    logD = torch.where(mask, logF + ipre[..., None, :], torch.tensor(-math.inf, dtype=q.dtype))
    m = logD.max(-1, keepdim=True).values
    Cm = (q @ (k / math.sqrt(dh)).transpose(-1, -2)) * torch.exp(logD - m)
    den = torch.maximum(Cm.sum(-1, keepdim=True).abs(), torch.exp(-m)) + MLSTM_EPS
    return (Cm / den) @ v


def mlstm_block_step(x, st, p, pre, cfg):
    """One token x (B, D); st = {"conv": (B, K-1, Di), "cell": (C, n, m)}."""
    nh = cfg["nh"]
    xn = layernorm(x, p[pre + "xlstm_norm.weight"])
    up = linear(xn, p[pre + "xlstm.proj_up.weight"], p.get(pre + "xlstm.proj_up.bias"))
    di = up.shape[-1] // 2
    xm, z = up[..., :di], up[..., di:]
    xc, conv = conv_step(xm, st["conv"], p[pre + "xlstm.conv1d.conv.weight"], p[pre + "xlstm.conv1d.conv.bias"])
    xc = silu(xc)
    q = headwise(p[pre + "xlstm.q_proj.weight"], xc, p.get(pre + "xlstm.q_proj.bias"))
    k = headwise(p[pre + "xlstm.k_proj.weight"], xc, p.get(pre + "xlstm.k_proj.bias"))
    v = headwise(p[pre + "xlstm.v_proj.weight"], xm, p.get(pre + "xlstm.v_proj.bias"))
    qkv = torch.cat([q, k, v], -1)
    ipre = linear(qkv, p[pre + "xlstm.mlstm_cell.igate.weight"], p[pre + "xlstm.mlstm_cell.igate.bias"])
    fpre = linear(qkv, p[pre + "xlstm.mlstm_cell.fgate.weight"], p[pre + "xlstm.mlstm_cell.fgate.bias"])
    bsz = x.shape[0]
    sh = lambda t: t.reshape(bsz, nh, -1)
    ht, cell = mlstm_cell_step(sh(q), sh(k), sh(v), ipre, fpre, st["cell"])
    ht = mh_layernorm(ht.reshape(bsz, di), p[pre + "xlstm.mlstm_cell.outnorm.weight"], nh)
    h = (ht + p[pre + "xlstm.learnable_skip"] * xc) * silu(z)
    return x + linear(h, p[pre + "xlstm.proj_down.weight"], p.get(pre + "xlstm.proj_down.bias")), {"conv": conv, "cell": cell}


def mlstm_zero_state(bsz, di, nh, k):
    dh = di // nh
    return {"conv": torch.zeros(bsz, k - 1, di, dtype=F64),
            "cell": (torch.zeros(bsz, nh, dh, dh, dtype=F64), torch.zeros(bsz, nh, dh, dtype=F64),
                     torch.zeros(bsz, nh, dtype=F64))}


# ----------------------------------------------------------------------------- experts / gate

def swiglu(x, p, pre):
    return linear(silu(linear(x, p[pre + "w1.weight"])) * linear(x, p[pre + "w3.weight"]), p[pre + "w2.weight"])


def gate(u, p, pre, c):
    """u (N, D) -> dict with d, z, zc, p, idx, w, raw, telemetry and losses."""
    e, k = c["num_experts"], c["top_k_experts"]
    g = e // 2
    z = linear(u, p[pre + "router.weight"], p.get(pre + "router.bias"))
    if c["router_type"] == "conditioned_addition":
        d = sigmoid(linear(u, p[pre + "entropy_predictor.weight"], p[pre + "entropy_predictor.bias"]))[:, 0]
        gm, tau = c["gamma"], c["difficulty_threshold"]
        mode = c["modulation_bias"]
        if mode == "standard":
            sig = gm * d
        elif mode == "proportional":
            sig = gm * torch.clamp(d - tau, min=0)
        else:
            sig = gm * d * (d > tau).to(d.dtype)
        zc = z + torch.cat([sig[:, None].expand(-1, g), -sig[:, None].expand(-1, g)], -1)
    else:
        d = torch.zeros(z.shape[0], dtype=z.dtype)
        zc = z
    pr = torch.softmax(zc, -1)
    idx = torch.stack([torch.tensor(sorted(range(e), key=lambda j: (-float(row[j]), j))[:k]) for row in pr])
    raw = torch.gather(pr, 1, idx)
    w = raw / raw.sum(-1, keepdim=True)
    q = torch.softmax(z, -1)
    ent = -(q * torch.log(torch.clamp(q, min=1e-6))).sum(-1) / math.log(e)
    n = u.shape[0]
    l_d = ((d - ent) ** 2).mean() if c["router_type"] == "conditioned_addition" else torch.zeros((), dtype=F64)
    pm, ps = pr[:, :g].sum(-1).mean(), pr[:, g:].sum(-1).mean()
    l_g = pm * torch.log(2 * pm + 1e-8) + ps * torch.log(2 * ps + 1e-8)
    l_z = (torch.logsumexp(zc, -1) ** 2).mean()
    counts = torch.zeros(e, dtype=torch.long)
    loads = torch.zeros(e, dtype=F64)
    for t in range(n):
        for j in range(k):
            counts[idx[t, j]] += 1
            loads[idx[t, j]] += raw[t, j]
    loads = loads / (n * k)
    l_lb = e * ((loads - 1.0 / e) ** 2).mean()
    return dict(difficulty=d, z=z, zc=zc, probs=pr, topk_idx=idx, topk_weight=w, topk_prob=raw, entropy=ent,
                group_shares=torch.stack([pm, ps]), expert_counts=counts, expert_loads=loads,
                losses=torch.stack([l_d, l_g, l_z, l_lb]))


# ----------------------------------------------------------------------------- whole model

class SpecModel:
    """Reads an engine model directory and runs it token by token (recurrent forms only)."""

    def __init__(self, path):
        path = Path(path)
        self.cfg = json.loads((path / "config.json").read_text())
        self.p = {k: v.to(F64) for k, v in load_file(str(path / "model.safetensors")).items()}
        if self.cfg.get("model_type", "moxe") == "moxe" and self.cfg.get("latent") is not None:
            self._densify_latent(self.cfg["num_experts"], self.cfg["latent"]["groups"])
        x = self.cfg["xlstm"]
        self.x = x
        self.layout = x.get("slstm_block", {}).get("slstm", {}).get("backend", "vanilla")
        self.d = x["embedding_dim"]
        self.moxe = self.cfg.get("model_type", "moxe") == "moxe"
        tie = self.cfg.get("tie_weights", x.get("tie_weights", False))
        self.lm_head = self.p["token_embedding.weight"] if tie and "lm_head.weight" not in self.p else self.p["lm_head.weight"]
        sl, ml = x.get("slstm_block", {}), x.get("mlstm_block", {})
        self.scfg = {"nh": sl.get("slstm", {}).get("num_heads", 4), "k": sl.get("slstm", {}).get("conv1d_kernel_size", 4),
                     "act": sl.get("feedforward", {}).get("act_fn", "gelu")}
        mf = ml.get("mlstm", {}).get("proj_factor", 2.0)
        self.mcfg = {"nh": ml.get("mlstm", {}).get("num_heads", 4), "k": ml.get("mlstm", {}).get("conv1d_kernel_size", 4),
                     "di": int(math.ceil(mf * self.d / 64) * 64)}
        if self.moxe:
            self.blocks = [[("slstm", f"layers.{l}.mixer.blocks.0."), ("mlstm", f"layers.{l}.mixer.blocks.1.")]
                           for l in range(self.cfg["num_layers"])]
        else:
            nb = x.get("num_blocks", 1)
            sat = x.get("slstm_at", [])
            sat = list(range(nb)) if sat == "all" else sat
            self.blocks = [[("slstm" if i in sat else "mlstm", f"xlstm_block_stack.blocks.{i}.") for i in range(nb)]]

    def _densify_latent(self, n_experts, groups):
        """Latent experts (LATENT.md): W_i = A_i B_g, group g = experts [g*E/G, (g+1)*E/G).  The dense
        W_i is formed here (float64) and the expert code below runs unchanged."""
        size = n_experts // groups
        for name in list(self.p):
            m = re.fullmatch(r"(layers\.(\d+)\.experts\.)(\d+)\.(.+)\.A", name)
            if m is None:
                continue
            pre, e, kind = m.group(1), int(m.group(3)), m.group(4)
            b = self.p[f"{pre}latent.{e // size}.{kind}.B"]
            dense = f"{pre}{e}.{kind}.weight"
            assert dense not in self.p, dense
            self.p[dense] = self.p.pop(name) @ b

    def zero_state(self, bsz):
        out = []
        for blocks in self.blocks:
            out.append([slstm_zero_state(bsz, self.d, self.scfg["k"]) if kind == "slstm"
                        else mlstm_zero_state(bsz, self.mcfg["di"], self.mcfg["nh"], self.mcfg["k"])
                        for kind, _ in blocks])
        return out

    def _run_block(self, kind, pre, x, st):
        if kind == "slstm":
            return slstm_block_step(x, st, self.p, pre, self.scfg, self.layout)
        return mlstm_block_step(x, st, self.p, pre, self.mcfg)

    def _expert(self, l, e, u):
        pre = f"layers.{l}.experts.{e}."
        c = self.cfg
        if pre + "w1.weight" in self.p:
            return swiglu(u, self.p, pre)
        kind = "slstm" if pre + "xlstm.slstm_cell._bias_" in self.p else "mlstm"
        st = (slstm_zero_state(u.shape[0], self.d, self.scfg["k"]) if kind == "slstm"
              else mlstm_zero_state(u.shape[0], self.mcfg["di"], self.mcfg["nh"], self.mcfg["k"]))
        y, _ = self._run_block(kind, pre, u, st)
        return y

    def step(self, ids, state):
        """ids (B,) -> logits (B, V), new state, per-layer (u, out, gate dict)."""
        x = self.p["token_embedding.weight"][ids]
        new_state, trace = [], []
        for l, blocks in enumerate(self.blocks):
            sts = []
            for (kind, pre), st in zip(blocks, state[l]):
                x, ns = self._run_block(kind, pre, x, st)
                sts.append(ns)
                if not self.moxe:
                    trace.append((x, x, None))  # dense: one entry per block
            new_state.append(sts)
            if not self.moxe:
                continue
            u = x
            if self.x.get("add_post_blocks_norm", True):
                u = layernorm(u, self.p[f"layers.{l}.mixer.post_blocks_norm.weight"])
            gt = gate(u, self.p, f"layers.{l}.gate.", self.cfg)
            out = torch.zeros_like(u)
            for t in range(u.shape[0]):
                for j in range(self.cfg["top_k_experts"]):
                    e = int(gt["topk_idx"][t, j])
                    out[t] += gt["topk_weight"][t, j] * self._expert(l, e, u[t:t + 1])[0]
            trace.append((u, out, gt))
            x = out
        if not self.moxe and self.x.get("add_post_blocks_norm", True):
            x = layernorm(x, self.p["xlstm_block_stack.post_blocks_norm.weight"])
        if self.moxe and self.cfg.get("post_layers_norm", False):
            x = layernorm(x, self.p["norm.weight"])
        return x @ self.lm_head.T, new_state, trace
