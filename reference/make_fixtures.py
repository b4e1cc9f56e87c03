#!/usr/bin/env python3
"""Generate the golden fixtures in tests/fixtures/ (the Rust engine's tests read them).

    .venv/bin/python reference/make_fixtures.py            # (re)write tests/fixtures/
    .venv/bin/python reference/make_fixtures.py --check    # regenerate into a temp dir and compare
    .venv/bin/python reference/make_fixtures.py --out DIR  # write elsewhere

Everything is seeded; torch runs single-threaded and deterministic on CPU, so a re-run
reproduces the committed files byte for byte (checked on the machine that made them).  ``--check``
reports byte equality per file; where bytes differ (another CPU / BLAS build) it falls back to a
numeric comparison (floats |a-b| <= 1e-5 + 1e-4 |b|, integers and JSON exact) and says so.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from xlstm.blocks.mlstm.backends import parallel_stabilized_simple, recurrent_step_stabilized_simple  # noqa: E402
from xlstm.blocks.mlstm.cell import mLSTMCell, mLSTMCellConfig  # noqa: E402
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig  # noqa: E402
from xlstm.components.conv import CausalConv1d, CausalConv1dConfig  # noqa: E402
from xlstm.components.feedforward import FeedForwardConfig, GatedFeedForward  # noqa: E402
from xlstm.components.linear_headwise import LinearHeadwiseExpand, LinearHeadwiseExpandConfig  # noqa: E402
from xlstm.components.ln import LayerNorm, MultiHeadLayerNorm  # noqa: E402

from moxe_ref import (  # noqa: E402
    DenseXLSTMModel,
    MoxEConfig,
    MoxEModel,
    SwiGLU,
    make_mlstm_block,
    make_slstm_block,
    randomize_,
    save_engine_dir,
    save_plain_xlstm_dir,
    xlstm_object,
)
from moxe_ref.gate import (  # noqa: E402
    EntropyAwareGate,
    StandardRouter,
    combine,
    combine_given_outputs,
    compute_telemetry,
)
from moxe_ref.golden import make_golden  # noqa: E402
from moxe_ref.latent import convert_to_latent, latent_slots, set_ranks_  # noqa: E402
from moxe_ref.export import load_engine_dir  # noqa: E402

EPS = 1e-5
SIZE_LIMIT = 5 * 1024 * 1024
README_BEGIN = "<!-- BEGIN GENERATED TENSOR TABLE (make_fixtures.py) -->"
README_END = "<!-- END GENERATED TENSOR TABLE -->"


# ============================================================================= io helpers

def _as_file_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype.is_floating_point:
        t = t.to(torch.float32)
    else:
        t = t.to(torch.int32)
    return t.contiguous().clone()


def write_st(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: _as_file_tensor(v) for k, v in tensors.items()}, str(path),
              metadata={"config": json.dumps(config, sort_keys=True)})


def write_case(root: Path, name: str, config: dict, ins: dict, params: dict, outs: dict) -> None:
    t = {}
    t.update({f"in.{k}": v for k, v in ins.items()})
    t.update({f"param.{k}": v for k, v in params.items()})
    t.update({f"out.{k}": v for k, v in outs.items()})
    write_st(root / "ops" / f"{name}.safetensors", t, config)


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen, *shape, std=1.0, mean=0.0):
    return torch.randn(shape, generator=gen) * std + mean


def sd(module) -> dict:
    return {k: v.detach() for k, v in module.state_dict().items()}


# ============================================================================= op cases

def op_layernorm(root):
    for name, d, b, s, mean, std, seed in (("layernorm", 37, 3, 5, 0.0, 1.0, 1),
                                           ("layernorm_offset", 44, 1, 6, 50.0, 0.5, 2)):
        ln = randomize_(LayerNorm(ndim=d), seed)
        x = randn(g(seed + 100), b, s, d, std=std, mean=mean)
        y = ln(x)
        write_case(root, name, {"op": "layernorm", "dim": d, "eps": EPS, "weight": "gamma = 1 + weight", "bias": False},
                   {"x": x}, sd(ln), {"y": y})


def op_multihead_layernorm(root):
    for name, b, nh, s, dh, seed in (("multihead_layernorm", 3, 3, 5, 10, 3),
                                     ("multihead_layernorm_nh4_dh11", 1, 4, 6, 11, 4)):
        ln = randomize_(MultiHeadLayerNorm(ndim=nh * dh), seed)
        x = randn(g(seed + 100), b, nh, s, dh, std=2.0, mean=0.5)
        y = ln(x)
        write_case(root, name, {"op": "multihead_layernorm", "num_heads": nh, "head_dim": dh, "eps": EPS,
                                "weight": "gamma = 1 + weight, weight index h*DH + j",
                                "layout": "x (B, NH, S, DH); normalised over DH per (b, h, s)"},
                   {"x": x}, sd(ln), {"y": y})


def _conv(f, k, seed):
    return randomize_(CausalConv1d(CausalConv1dConfig(feature_dim=f, kernel_size=k)), seed)


def op_conv(root):
    # sequence mode, no initial state
    f, k, b, s = 30, 4, 3, 9
    conv = _conv(f, k, 5)
    x = randn(g(105), b, s, f)
    y, last = conv(x, return_last_state=True)
    write_case(root, "conv_seq", {"op": "causal_conv1d", "mode": "sequence", "features": f, "kernel_size": k,
                                  "bias": True, "initial_state": "none (zeros)",
                                  "last_state": "the last K-1 inputs (B, K-1, F), oldest first"},
               {"x": x}, sd(conv), {"y": y, "last_state": last})
    # sequence mode with an initial state (K-1 previous inputs), K = 3
    f, k, b, s = 36, 3, 2, 7
    conv = _conv(f, k, 6)
    x = randn(g(106), b, s, f)
    st = randn(g(206), b, k - 1, f)
    y, last = conv(x, conv_state=st, return_last_state=True)
    write_case(root, "conv_seq_state", {"op": "causal_conv1d", "mode": "sequence", "features": f, "kernel_size": k,
                                        "bias": True, "initial_state": "in.conv_state (B, K-1, F): the K-1 inputs before x",
                                        "last_state": "the last K-1 inputs (B, K-1, F), oldest first"},
               {"x": x, "conv_state": st}, sd(conv), {"y": y, "last_state": last})
    # step mode (the package's CausalConv1d.step), T steps from a random state
    f, k, b, t = 30, 4, 3, 6
    conv = _conv(f, k, 7)
    x = randn(g(107), b, t, f)
    st0 = randn(g(207), b, k, f)
    st = (st0.clone(),)
    ys = []
    for i in range(t):
        y, st = conv.step(x[:, i:i + 1], conv_state=st)
        ys.append(y)
    write_case(root, "conv_step", {"op": "causal_conv1d", "mode": "step", "features": f, "kernel_size": k, "bias": True,
                                   "state": "(B, K, F): per step roll left by one, write x at index K-1, "
                                            "y = sum_k state[:, k] * weight[:, 0, k] + bias; T steps in order"},
               {"x": x, "conv_state": st0}, sd(conv), {"y": torch.cat(ys, 1), "conv_state": st[0]})


def op_headwise(root):
    for name, d, nh, bias, b, s, seed in (("headwise", 30, 3, False, 3, 5, 8),
                                          ("headwise_bias", 64, 16, True, 2, 5, 9)):
        lin = randomize_(LinearHeadwiseExpand(LinearHeadwiseExpandConfig(in_features=d, num_heads=nh, bias=bias)), seed)
        x = randn(g(seed + 100), b, s, d)
        write_case(root, name, {"op": "linear_headwise", "in_features": d, "num_heads": nh, "bias": bias,
                                "formula": "y[..., h*DH + o] = sum_d x[..., h*DH + d] * weight[h, o, d] (+ bias)"},
                   {"x": x}, sd(lin), {"y": lin(x)})


def _slstm_cell(d, nh, seed, rk_scale=1.0, gate_scale=1.0):
    cell = sLSTMCell(sLSTMCellConfig(hidden_size=d, num_heads=nh, backend="vanilla"))
    return randomize_(cell, seed, rk_scale=rk_scale, gate_scale=gate_scale)


def op_slstm_cell(root):
    cfg_common = {"op": "slstm_cell", "backend_layout": "vanilla",
                  "input": "x (B, S, 4*D) pre-activations W x, gate-major [i | f | z | o], each (h*DH + j)",
                  "state": "(4, B, D) = [h, c, n, m]",
                  "output": "y (B, NH, S, DH) = h before the group norm (the package's BNSH output)"}
    # fresh state
    d, nh, b, s = 30, 3, 3, 20
    cell = _slstm_cell(d, nh, 10)
    x = randn(g(110), b, s, 4 * d, std=1.5)
    y, st = cell(x)
    write_case(root, "slstm_cell", {**cfg_common, "hidden_size": d, "num_heads": nh, "initial_state": "zeros"},
               {"x": x}, sd(cell), {"y": y, "state": st})
    # continuing from a warm state (n > 0 everywhere)
    d, nh, b, s = 44, 4, 2, 16
    cell = _slstm_cell(d, nh, 11)
    _, st0 = cell(randn(g(211), b, 5, 4 * d, std=1.5))
    x = randn(g(111), b, s, 4 * d, std=1.5)
    y, st = cell(x, state=st0)
    write_case(root, "slstm_cell_state", {**cfg_common, "hidden_size": d, "num_heads": nh,
                                          "initial_state": "in.state (a warm state)"},
               {"x": x, "state": st0}, sd(cell), {"y": y, "state": st})
    # large pre-activations (stabiliser)
    d, nh, b, s = 44, 4, 2, 24
    cell = _slstm_cell(d, nh, 12, rk_scale=3.0, gate_scale=5.0)
    x = randn(g(112), b, s, 4 * d, std=30.0)
    y, st = cell(x)
    write_case(root, "slstm_cell_large", {**cfg_common, "hidden_size": d, "num_heads": nh, "initial_state": "zeros",
                                          "note": "pre-activations |x| ~ 20-50"},
               {"x": x}, sd(cell), {"y": y, "state": st})


def op_mlstm_kernel(root):
    for name, b, nh, s, dh, gstd, seed in (("mlstm_cell_kernel", 2, 2, 64, 12, 2.0, 13),
                                           ("mlstm_cell_kernel_large", 2, 2, 40, 10, 30.0, 14)):
        gen = g(seed)
        q, k, v = (randn(gen, b, nh, s, dh) for _ in range(3))
        ig = randn(gen, b, nh, s, 1, std=gstd)
        fg = randn(gen, b, nh, s, 1, std=gstd, mean=2.0 if gstd < 10 else 0.0)
        hp = parallel_stabilized_simple(q, k, v, ig, fg)
        c = torch.zeros(b, nh, dh, dh)
        n = torch.zeros(b, nh, dh, 1)
        m = torch.zeros(b, nh, 1, 1)
        hs = []
        for t in range(s):
            h, (c, n, m) = recurrent_step_stabilized_simple(
                c, n, m, q[:, :, t:t + 1].clone(), k[:, :, t:t + 1].clone(), v[:, :, t:t + 1].clone(),
                ig[:, :, t:t + 1], fg[:, :, t:t + 1])
            hs.append(h)
        hr = torch.cat(hs, 2)
        write_case(root, name, {
            "op": "mlstm_cell_kernel", "num_heads": nh, "head_dim": dh, "eps": 1e-6,
            "parallel": "h_parallel = xlstm parallel_stabilized_simple (m0 = -inf)",
            "recurrent": "h_recurrent = recurrent_step_stabilized_simple token by token from C=0, n=0, m=0; "
                         "C, n, m = final state",
            "note": "pre-activations |x| ~ 20-50" if gstd > 10 else "",
        }, {"q": q, "k": k, "v": v, "igate_preact": ig, "fgate_preact": fg}, {},
            {"h_parallel": hp, "h_recurrent": hr, "C": c, "n": n, "m": m})


def op_mlstm_cell(root):
    di, nh, b, s = 64, 2, 2, 20
    cell = randomize_(mLSTMCell(mLSTMCellConfig(context_length=s, embedding_dim=di, num_heads=nh)), 15)
    gen = g(115)
    q, k, v = (randn(gen, b, s, di) for _ in range(3))
    y = cell(q, k, v)
    st = None
    ys = []
    for t in range(s):
        yt, st = cell.step(q[:, t:t + 1].clone(), k[:, t:t + 1].clone(), v[:, t:t + 1].clone(), mlstm_state=st)
        ys.append(yt)
    write_case(root, "mlstm_cell", {
        "op": "mlstm_cell", "inner_dim": di, "num_heads": nh, "eps": 1e-6, "norm_eps": EPS,
        "formula": "i, f pre = igate/fgate(cat[q, k, v]) (Linear 3Di -> NH); h~ per head; outnorm (MultiHeadLayerNorm)",
        "outputs": "y = forward (parallel); y_step + C (B,NH,DH,DH), n (B,NH,DH,1), m (B,NH,1,1) = step() from zero state"},
        {"q": q, "k": k, "v": v}, sd(cell), {"y": y, "y_step": torch.cat(ys, 1), "C": st[0], "n": st[1], "m": st[2]})


def op_ffn(root):
    d = 30
    for i, act in enumerate(("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")):
        ff = GatedFeedForward(FeedForwardConfig(proj_factor=1.3, act_fn=act, embedding_dim=d))
        randomize_(ff, 20 + i)
        x = randn(g(120 + i), 3, 5, d)
        name = "gated_ffn_" + act.replace("^", "")
        write_case(root, name, {"op": "gated_ffn", "embedding_dim": d, "proj_factor": 1.3,
                                "up_dim": ff.config._proj_up_dim, "act_fn": act,
                                "formula": "[a | b] = proj_up(x) (first P rows -> a); y = proj_down(act(a) * b)"},
                   {"x": x}, sd(ff), {"y": ff(x)})


def op_swiglu(root):
    d = 30
    m = randomize_(SwiGLU(d, 2 * d), 30)
    x = randn(g(130), 21, d)
    write_case(root, "swiglu", {"op": "swiglu", "dim": d, "hidden": 2 * d, "formula": "y = w2(silu(w1 x) * (w3 x))"},
               {"x": x}, sd(m), {"y": m(x)})


def _block_xlstm(d, sheads, mheads, act="swish", bias=False, k=4, bs=4, ctx=128):
    return xlstm_object(d, 64, context_length=ctx, mlstm_heads=mheads, slstm_heads=sheads, conv1d_kernel_size=k,
                        qkv_proj_blocksize=bs, act_fn=act, bias=bias)


def _block_cfg_json(x: dict, kind: str) -> dict:
    keep = {kk: x[kk] for kk in ("embedding_dim", "bias")}
    if kind == "slstm":
        keep["slstm_block"] = x["slstm_block"]
    else:
        keep["mlstm_block"] = x["mlstm_block"]
    return keep


def _slstm_block_run(block, x, conv_state=None, slstm_state=None):
    """The block's forward, also returning the final state (same ops as xLSTMBlock.forward, with
    sLSTMLayer.forward(return_last_state=True))."""
    y_l, st = block.xlstm(block.xlstm_norm(x), conv_state=conv_state, slstm_state=slstm_state, return_last_state=True)
    h = x + y_l
    h = h + block.ffn(block.ffn_norm(h))
    return h, st


def op_slstm_block(root):
    cases = (
        # name, D, NH, act, B, S, warm, gate_scale, rk_scale, seed
        ("slstm_block_swish", 30, 3, "swish", 3, 64, False, 1.0, 1.0, 40),
        ("slstm_block_gelu", 44, 4, "gelu", 2, 70, True, 1.0, 1.0, 41),
        ("slstm_block_large", 30, 2, "selu", 2, 64, False, 10.0, 2.0, 42),
    )
    for name, d, nh, act, b, s, warm, gsc, rsc, seed in cases:
        xo = _block_xlstm(d, nh, 2, act=act)
        block = randomize_(make_slstm_block(MoxEConfig(xlstm=xo)), seed, gate_scale=gsc, rk_scale=rsc).eval()
        x = randn(g(seed + 100), b, s, d)
        ins = {"x": x}
        cs0 = ss0 = None
        if warm:
            _, st0 = _slstm_block_run(block, randn(g(seed + 200), b, 5, d))
            cs0, ss0 = st0["conv_state"], st0["slstm_state"]
            ins.update({"conv_state": cs0, "slstm_state": ss0})
        y, st = _slstm_block_run(block, x, cs0, ss0)
        if not warm:
            assert torch.equal(y, block(x)), "block forward mismatch"
        # the same through the package's step() (conv state in the (B, K, D) step format)
        k = xo["slstm_block"]["slstm"]["conv1d_kernel_size"]
        if warm:
            step_st = {"conv_state": (torch.cat([torch.zeros(b, 1, d), cs0], 1),), "slstm_state": ss0.clone()}
        else:
            step_st = {"conv_state": (torch.zeros(b, k, d),), "slstm_state": torch.zeros(4, b, d)}
        ys = []
        for t in range(s):
            yt, step_st = block.step(x[:, t:t + 1], **step_st)
            ys.append(yt)
        outs = {"y": y, "conv_state": st["conv_state"], "slstm_state": st["slstm_state"],
                "y_step": torch.cat(ys, 1), "step_conv_state": step_st["conv_state"][0]}
        cfg = {"op": "slstm_block", "xlstm": _block_cfg_json(xo, "slstm"), "act_fn": act, "eps": EPS,
               "initial_state": "in.conv_state (B, K-1, D) + in.slstm_state (4, B, D)" if warm else "zeros",
               "outputs": "y = forward; conv_state (B, K-1, D) = last K-1 conv inputs (normed x); "
                          "slstm_state (4, B, D) = final [h, c, n, m]; y_step / step_conv_state (B, K, D) = the "
                          "package's step() token by token (conv state in step format)",
               "note": "large gate pre-activations (|raw| ~ 20-50)" if gsc > 1 else ""}
        write_case(root, name, cfg, ins, sd(block), outs)


def op_mlstm_block(root):
    cases = (
        # name, D, NH, bs, bias, B, S, gate_scale, seed
        ("mlstm_block", 36, 4, 4, False, 2, 64, 1.0, 50),
        ("mlstm_block_nh1_bias", 30, 1, 8, True, 1, 65, 1.0, 51),
        ("mlstm_block_large", 30, 2, 4, False, 2, 64, 10.0, 52),
    )
    for name, d, nh, bs, bias, b, s, gsc, seed in cases:
        xo = _block_xlstm(d, 2, nh, bias=bias, bs=bs)
        block = randomize_(make_mlstm_block(MoxEConfig(xlstm=xo)), seed, gate_scale=gsc).eval()
        x = randn(g(seed + 100), b, s, d)
        y = block(x)
        st = None
        ys = []
        for t in range(s):
            yt, st = block.step(x[:, t:t + 1], **(st or {}))
            ys.append(yt)
        c, n, m = st["mlstm_state"]
        outs = {"y": y, "y_step": torch.cat(ys, 1), "conv_state": st["conv_state"][0], "C": c, "n": n, "m": m}
        cfg = {"op": "mlstm_block", "xlstm": _block_cfg_json(xo, "mlstm"), "eps": EPS, "cell_eps": 1e-6,
               "inner_dim": block.xlstm.config._inner_embedding_dim,
               "outputs": "y = forward (parallel form, m0 = -inf); y_step = package step() token by token from "
                          "zero state (m0 = 0); conv_state (B, K, Di), C (B, NH, DH, DH), n (B, NH, DH, 1), "
                          "m (B, NH, 1, 1) = final step state",
               "max_abs_diff_parallel_vs_step": float((y - outs["y_step"]).abs().max()),
               "note": "large gate pre-activations (|i|, |f| ~ 20-50)" if gsc > 1 else ""}
        write_case(root, name, cfg, {"x": x}, sd(block), outs)


def op_experts(root):
    n = 21
    xo = _block_xlstm(30, 3, 2)
    for name, make, seed in (("slstm_expert", make_slstm_block, 60), ("mlstm_expert", make_mlstm_block, 61)):
        block = randomize_(make(MoxEConfig(xlstm=xo)), seed).eval()
        x = randn(g(seed + 100), n, 1, 30)
        kind = name.split("_")[0]
        write_case(root, name, {"op": f"{kind}_block", "xlstm": _block_cfg_json(xo, kind), "eps": EPS,
                                "form": "expert: every token its own length-1 sequence with zero state"},
                   {"x": x}, sd(block), {"y": block(x)})


GATE_CASES = (
    # name, router, modulation, E, k, gate_bias, D, B, S, mlp experts, ties
    ("gate_standard_e4_k2", "conditioned_addition", "standard", 4, 2, True, 30, 3, 8, True, None),
    ("gate_standard_e8_k1", "conditioned_addition", "standard", 8, 1, False, 44, 1, 24, False, None),
    ("gate_proportional_e4_k1", "conditioned_addition", "proportional", 4, 1, True, 44, 3, 8, False, None),
    ("gate_proportional_e8_k2", "conditioned_addition", "proportional", 8, 2, True, 30, 1, 24, False, None),
    ("gate_masked_e4_k2", "conditioned_addition", "masked", 4, 2, False, 30, 3, 8, False, None),
    ("gate_masked_e8_k1", "conditioned_addition", "masked", 8, 1, True, 44, 1, 24, False, None),
    ("router_standard_e4_k1", "standard", None, 4, 1, True, 30, 3, 8, False, None),
    ("router_standard_e8_k2", "standard", None, 8, 2, False, 44, 1, 24, False, None),
    ("gate_ties_e4_k1", "conditioned_addition", "standard", 4, 1, True, 30, 3, 8, False, ((0, 1), (2, 3))),
    ("gate_ties_e8_k2", "conditioned_addition", "masked", 8, 2, True, 30, 3, 8, False, ((0, 1, 2), (5, 6))),
)


def op_gates(root):
    for i, (name, router, mode, e, k, gb, d, b, s, mlp, ties) in enumerate(GATE_CASES):
        seed = 70 + i
        gamma, tau = 1.5, 0.5
        if router == "standard":
            gate = StandardRouter(d, e, k, gate_bias=gb)
        else:
            gate = EntropyAwareGate(d, e, k, gate_bias=gb, modulation_bias=mode, gamma=gamma, difficulty_threshold=tau)
        randomize_(gate, seed, router_scale=2.0)
        if ties:
            with torch.no_grad():
                for grp in ties:
                    for j in grp[1:]:
                        gate.router.weight[j] = gate.router.weight[grp[0]]
                        if gb:
                            gate.router.bias[j] = gate.router.bias[grp[0]]
        gen = g(seed + 100)
        u = randn(gen, b, s, d)
        uf = u.reshape(b * s, d)
        r = gate(uf)
        tel = compute_telemetry(r, has_predictor=gate.has_predictor)
        if ties:
            for grp in ties:
                for j in grp[1:]:
                    assert torch.equal(r.probs[:, j], r.probs[:, grp[0]]), "tie rows not bitwise equal"
        expert_out = randn(gen, e, b * s, d)
        outs = {
            "difficulty": r.difficulty, "sigma": r.sigma, "z": r.z, "zc": r.zc, "probs": r.probs,
            "topk_idx": r.topk_idx, "topk_prob": r.topk_prob, "topk_weight": r.topk_weight,
            "entropy": tel.entropy, "group_shares": tel.group_shares, "expert_counts": tel.expert_counts,
            "expert_loads": tel.expert_loads, "losses": tel.losses,
            "y": combine_given_outputs(expert_out, r),
        }
        params = sd(gate)
        if mlp:
            experts = [randomize_(SwiGLU(d, 2 * d), seed * 10 + j) for j in range(e)]
            outs["y_experts"] = combine(uf, r, lambda j, x: experts[j](x), e)
            for j, ex in enumerate(experts):
                params.update({f"experts.{j}.{kk}": vv for kk, vv in sd(ex).items()})
        cfg = {"op": "gate", "router_type": router, "modulation_bias": mode, "num_experts": e, "top_k_experts": k,
               "gate_bias": gb, "gamma": gamma if router != "standard" else None,
               "difficulty_threshold": tau if router != "standard" else None, "dim": d,
               "tokens": "u (B, S, D) flattened row-major to N = B*S tokens; all means are over the N tokens",
               "expert_out": "in.expert_out (E, N, D): every expert's output for every token; out.y = sum_j "
                             "topk_weight[t, j] * expert_out[topk_idx[t, j], t]",
               "experts": "SwiGLU experts param.experts.{e}.w1/w2/w3 applied to u; out.y_experts" if mlp else None,
               "ties": [list(t) for t in ties] if ties else None,
               "losses": "[L_d, L_g, L_z, L_lb]",
               "standard_router": "difficulty = sigma = 0, zc = z, L_d = 0" if router == "standard" else None}
        write_case(root, name, cfg, {"u": u, "expert_out": expert_out}, params, outs)


# ============================================================================= models

MODEL_SPECS = {
    # (a) xlstm experts, E=4, k=2, standard modulation, gate_bias on
    "moxe_xlstm_e4_k2_standard": dict(
        top=dict(num_experts=4, top_k_experts=2, num_layers=3, router_type="conditioned_addition",
                 expert_type="xlstm", modulation_bias="standard", gate_bias=True, gamma=1.0,
                 difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
        xlstm=dict(embedding_dim=28, vocab_size=80, context_length=64, mlstm_heads=2, slstm_heads=4, act_fn="swish"),
        layout="vanilla", prompt_len=56, seed=1000),
    # (b) mlp experts, E=8, k=1, proportional, gate_bias off, tie_weights, post_layers_norm, biases in mLSTM
    "moxe_mlp_e8_k1_proportional_tied": dict(
        top=dict(num_experts=8, top_k_experts=1, num_layers=2, router_type="conditioned_addition",
                 expert_type="mlp", modulation_bias="proportional", gate_bias=False, gamma=2.0,
                 difficulty_threshold=0.45, post_layers_norm=True, tie_weights=True),
        xlstm=dict(embedding_dim=26, vocab_size=64, context_length=64, mlstm_heads=4, slstm_heads=2, act_fn="swish",
                   bias=True),
        layout="vanilla", prompt_len=48, seed=2000),
    # (c) xlstm experts, E=8, k=2, masked, gelu FFN, sLSTM stored in the "cuda" layout
    "moxe_xlstm_e8_k2_masked_cuda": dict(
        top=dict(num_experts=8, top_k_experts=2, num_layers=2, router_type="conditioned_addition",
                 expert_type="xlstm", modulation_bias="masked", gate_bias=True, gamma=1.5,
                 difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
        xlstm=dict(embedding_dim=32, vocab_size=72, context_length=64, mlstm_heads=1, slstm_heads=4, act_fn="gelu"),
        layout="cuda", prompt_len=48, seed=3000),
    # (d) router_type standard, xlstm experts, E=4, k=1, conv kernel 3, sLSTM DH = 15
    "moxe_router_standard_xlstm_e4_k1": dict(
        top=dict(num_experts=4, top_k_experts=1, num_layers=2, router_type="standard",
                 expert_type="xlstm", modulation_bias="standard", gate_bias=True, gamma=0.7,
                 difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
        xlstm=dict(embedding_dim=30, vocab_size=64, context_length=64, mlstm_heads=2, slstm_heads=2, act_fn="swish",
                   conv1d_kernel_size=3),
        layout="vanilla", prompt_len=64, seed=4000),
}

DENSE_SPEC = dict(
    xlstm=dict(embedding_dim=24, vocab_size=64, context_length=64, mlstm_heads=4, slstm_heads=2, act_fn="gelu"),
    num_blocks=3, slstm_at=[1], tie_weights=True, prompt_len=48, seed=5000)

# Latent-expert models (docs/LATENT_FORMAT.md): random latent models, every rank below the full rank
# (D = 16) and different per (layer, group, kind), so a loader must read the ranks from the shapes.
LATENT_SPECS = {
    # (g) mlp experts, E 4, k 2, groups 2 (experts 0-1, 2-3): w1 and w3 factored
    "latent_mlp_e4_k2": dict(
        top=dict(num_experts=4, top_k_experts=2, num_layers=2, router_type="conditioned_addition",
                 expert_type="mlp", modulation_bias="standard", gate_bias=True, gamma=1.0,
                 difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
        latent={"groups": 2},
        ranks={(0, 0, "w1"): 6, (0, 0, "w3"): 11, (0, 1, "w1"): 9, (0, 1, "w3"): 4,
               (1, 0, "w1"): 12, (1, 0, "w3"): 7, (1, 1, "w1"): 5, (1, 1, "w3"): 10},
        xlstm=dict(embedding_dim=16, vocab_size=48, context_length=64, mlstm_heads=2, slstm_heads=2, act_fn="swish"),
        layout="vanilla", prompt_len=40, seed=6000),
    # (h) xlstm experts, E 4, k 2, groups 2 (mLSTM 0-1, sLSTM 2-3): mLSTM xlstm.proj_up (with its per-expert
    # bias: xlstm.bias = true) and sLSTM ffn.proj_up factored
    "latent_xlstm_e4_k2": dict(
        top=dict(num_experts=4, top_k_experts=2, num_layers=2, router_type="conditioned_addition",
                 expert_type="xlstm", modulation_bias="standard", gate_bias=True, gamma=1.0,
                 difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
        latent={"groups": 2},
        ranks={(0, 0, "xlstm.proj_up"): 10, (0, 1, "ffn.proj_up"): 6,
               (1, 0, "xlstm.proj_up"): 5, (1, 1, "ffn.proj_up"): 12},
        xlstm=dict(embedding_dim=16, vocab_size=48, context_length=64, mlstm_heads=2, slstm_heads=2, act_fn="swish",
                   bias=True),
        layout="vanilla", prompt_len=40, seed=7000),
}

# Data-free conversions of two dense fixtures (cross-check of the engine's converter): ranks as
# fractions of D (full, 3/4, 1/2, 1/4, rounded down) and two energy thresholds.
CONVERSION_SOURCES = ("moxe_xlstm_e4_k2_standard", "moxe_mlp_e8_k1_proportional_tied")
CONVERSION_ENERGIES = (0.99, 0.9)
CONVERSION_GROUPS = 2

ROUTING_MARGIN_MIN = 1e-4
ARGMAX_MARGIN_MIN = 1e-3


def _pick_seed(build, base_seed, prompt_len, vocab):
    """Deterministically try seeds base, base+1, ... until routing and greedy decisions are far from
    ties (so an engine with f32 rounding differences makes the same discrete choices)."""
    for seed in range(base_seed, base_seed + 50):
        model = build(seed)
        prompt = torch.randint(0, vocab, (prompt_len,), generator=g(seed + 7))
        tensors, info = make_golden(model, prompt)
        ok = info["min_argmax_margin"] > ARGMAX_MARGIN_MIN and info["forward_step_last_argmax_agree"]
        if "min_routing_margin" in info:
            ok = ok and info["min_routing_margin"] > ROUTING_MARGIN_MIN and info["routing_forward_equals_step"]
        if ok:
            info["seed"] = seed
            return model, tensors, info
    raise RuntimeError("no seed with clear margins found")


def build_moxe(spec, seed):
    x = xlstm_object(**spec["xlstm"])
    cfg = MoxEConfig(xlstm=x, model_type="moxe", **spec["top"])
    model = MoxEModel(cfg)
    randomize_(model, seed)
    return model.eval()


def build_latent(spec, seed):
    x = xlstm_object(**spec["xlstm"])
    cfg = MoxEConfig(xlstm=x, model_type="moxe", latent=dict(spec["latent"]), **spec["top"])
    model = MoxEModel(cfg)
    set_ranks_(model, spec["ranks"])
    assert {(s.layer, s.group, s.kind) for s in latent_slots(model)} == set(spec["ranks"])
    randomize_(model, seed)
    return model.eval()


def build_dense(spec, seed):
    x = xlstm_object(**spec["xlstm"])
    x["num_blocks"] = spec["num_blocks"]
    x["slstm_at"] = spec["slstm_at"]
    x["tie_weights"] = spec["tie_weights"]
    cfg = MoxEConfig(xlstm=x, model_type="xlstm", tie_weights=spec["tie_weights"])
    model = DenseXLSTMModel(cfg)
    randomize_(model, seed)
    return model.eval()


def make_models(root: Path):
    for name, spec in MODEL_SPECS.items():
        model, tensors, info = _pick_seed(lambda s: build_moxe(spec, s), spec["seed"], spec["prompt_len"],
                                          spec["xlstm"]["vocab_size"])
        d = root / "models" / name
        save_engine_dir(model, d, slstm_layout=spec["layout"])
        info["slstm_layout_in_file"] = spec["layout"]
        write_st(d / "golden.safetensors", tensors, info)
    # (e) dense xLSTM in the engine format and (f) the same weights as a plain xLSTMLMModel dump
    spec = DENSE_SPEC
    model, tensors, info = _pick_seed(lambda s: build_dense(spec, s), spec["seed"], spec["prompt_len"],
                                      spec["xlstm"]["vocab_size"])
    d = root / "models" / "dense_xlstm"
    save_engine_dir(model, d)
    write_st(d / "golden.safetensors", tensors, info)
    d = root / "models" / "dense_xlstm_plain"
    save_plain_xlstm_dir(model, d)
    write_st(d / "golden.safetensors", tensors, {**info, "note": "same model and golden as dense_xlstm"})


def make_latent_models(root: Path):
    for name, spec in LATENT_SPECS.items():
        model, tensors, info = _pick_seed(lambda s: build_latent(spec, s), spec["seed"], spec["prompt_len"],
                                          spec["xlstm"]["vocab_size"])
        d = root / "models" / name
        save_engine_dir(model, d, slstm_layout=spec["layout"])
        info["slstm_layout_in_file"] = spec["layout"]
        info["latent_ranks"] = {f"layers.{l}.experts.latent.{g}.{k}.B": r for (l, g, k), r in sorted(spec["ranks"].items())}
        write_st(d / "golden.safetensors", tensors, info)


def conversion_case_list(d: int) -> list[dict]:
    return [{"rank": d}, {"rank": 3 * d // 4}, {"rank": d // 2}, {"rank": d // 4}] + [{"energy": e} for e in CONVERSION_ENERGIES]


@torch.no_grad()
def make_conversions(root: Path):
    """conversion/latent_<source>.safetensors: the reference's data-free conversion of a dense
    fixture (singular values, chosen ranks, errors, parameter counts, logit error)."""
    for name in CONVERSION_SOURCES:
        dense = load_engine_dir(root / "models" / name)
        ids = load_file(str(root / "models" / name / "golden.safetensors"))["prompt_ids"].long()[None]
        ref_logits = dense(ids)[0][0]
        d = dense.cfg.embedding_dim
        tensors: dict[str, torch.Tensor] = {}
        meta: dict = {"source": f"models/{name}", "groups": CONVERSION_GROUPS, "cases": conversion_case_list(d),
                      "logits": "forward logits of the converted model on the source golden's prompt_ids; "
                                "logits_max_abs_err = max |latent - dense|, logits_max_abs = max |dense|"}
        for c, case in enumerate(meta["cases"]):
            lat, rep = convert_to_latent(dense, groups=CONVERSION_GROUPS, **case)
            if c == 0:
                meta["slots"] = [{"layer": s.layer, "group": s.group, "kind": s.kind, "experts": s.experts,
                                  "out": s.out, "dim": s.dim, "full_rank": s.full_rank} for s in rep.slots]
                meta["params_before"] = rep.params_before
                meta["expert_params_before"] = rep.expert_params_before
                for i, s in enumerate(rep.slots):
                    tensors[f"slot.{i}.singular_values"] = torch.tensor(s.singular_values, dtype=torch.float64)
                tensors["logits_max_abs"] = ref_logits.abs().max().reshape(1)
            case["params_after"] = rep.params_after
            case["expert_params_after"] = rep.expert_params_after
            tensors[f"case.{c}.rank"] = torch.tensor([s.rank for s in rep.slots])
            tensors[f"case.{c}.rel_err"] = torch.tensor([s.rel_err for s in rep.slots], dtype=torch.float64)
            tensors[f"case.{c}.expert_rel_err"] = torch.tensor([s.expert_rel_err for s in rep.slots], dtype=torch.float64)
            tensors[f"case.{c}.logits_max_abs_err"] = (lat(ids)[0][0] - ref_logits).abs().max().reshape(1)
        write_st(root / "conversion" / f"latent_{name}.safetensors", tensors, meta)


# ============================================================================= driver

def generate(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for fn in (op_layernorm, op_multihead_layernorm, op_conv, op_headwise, op_slstm_cell, op_mlstm_kernel,
               op_mlstm_cell, op_ffn, op_swiglu, op_slstm_block, op_mlstm_block, op_experts, op_gates):
        torch.manual_seed(0)
        with torch.no_grad():
            fn(root)
    torch.manual_seed(0)
    make_models(root)
    torch.manual_seed(0)
    make_latent_models(root)
    torch.manual_seed(0)
    make_conversions(root)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))


def tensor_table(root: Path) -> str:
    lines = []
    for rel in _files(root):
        if rel.suffix != ".safetensors":
            continue
        with safe_open(str(root / rel), "pt") as f:
            names = list(f.keys())
            rows = []
            for n in sorted(names):
                sl = f.get_slice(n)
                rows.append((n, sl.get_dtype(), tuple(sl.get_shape())))
        size = (root / rel).stat().st_size
        lines.append(f"\n#### `{rel.as_posix()}` ({size} bytes)\n")
        if rel.name == "model.safetensors":
            rows = _collapse(rows)
            lines.append("| tensor (l = layer, e = expert) | dtype | shape | l | e |")
            lines.append("|---|---|---|---|---|")
            for n, dt, sh, ls, es in rows:
                lines.append(f"| `{n}` | {dt} | {list(sh)} | {_ranges(ls)} | {_ranges(es)} |")
            continue
        lines.append("| tensor | dtype | shape |")
        lines.append("|---|---|---|")
        for n, dt, sh in rows:
            lines.append(f"| `{n}` | {dt} | {list(sh)} |")
    return "\n".join(lines) + "\n"


def _collapse(rows):
    """Merge model tensors that differ only in their layer / expert index (same dtype and shape)."""
    import re
    groups: dict = {}
    for n, dt, sh in rows:
        ml = re.search(r"layers\.(\d+)\.", n)
        me = re.search(r"experts\.(\d+)\.", n)
        pat = re.sub(r"experts\.\d+\.", "experts.{e}.", re.sub(r"layers\.\d+\.", "layers.{l}.", n))
        key = (pat, dt, sh)
        ls, es = groups.setdefault(key, (set(), set()))
        if ml:
            ls.add(int(ml.group(1)))
        if me:
            es.add(int(me.group(1)))
    return [(k[0], k[1], k[2], v[0], v[1]) for k, v in sorted(groups.items(), key=lambda kv: (kv[0][0], min(kv[1][1], default=-1)))]


def _ranges(xs) -> str:
    xs = sorted(xs)
    if not xs:
        return ""
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def update_readme(root: Path) -> None:
    readme = root / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    if README_BEGIN not in text:
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_BEGIN + "\n" + tensor_table(root) + README_END + tail)


def total_size(root: Path) -> int:
    return sum((root / p).stat().st_size for p in _files(root))


def compare(a: Path, b: Path) -> int:
    fa, fb = _files(a), _files(b)
    if fa != fb:
        print("file sets differ:", sorted(set(map(str, fa)) ^ set(map(str, fb))))
        return 1
    bad = 0
    for rel in fa:
        if filecmp.cmp(a / rel, b / rel, shallow=False):
            continue
        if rel.suffix == ".json":
            print(f"DIFF (json) {rel}")
            bad += 1
            continue
        ta, tb = load_file(str(a / rel)), load_file(str(b / rel))
        with safe_open(str(a / rel), "pt") as f1, safe_open(str(b / rel), "pt") as f2:
            meta_same = f1.metadata() == f2.metadata()
        ok = ta.keys() == tb.keys()
        worst = 0.0
        for k in ta if ok else []:
            x, y = ta[k], tb[k]
            if x.shape != y.shape or x.dtype != y.dtype:
                ok = False
            elif x.dtype.is_floating_point:
                err = (x - y).abs() - (1e-5 + 1e-4 * y.abs())
                worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
                ok = ok and bool((err <= 0).all())
            else:
                ok = ok and torch.equal(x, y)
        if ok:
            print(f"not byte-identical but within tolerance: {rel} (max abs diff {worst:.3g}, metadata "
                  f"{'same' if meta_same else 'differs'})")
        else:
            print(f"DIFF {rel}")
            bad += 1
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests" / "fixtures")
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    args = ap.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            generate(tmp)
            rc = compare(tmp, args.out)
            if rc == 0:
                print(f"OK: {len(_files(tmp))} fixture files reproduced")
            return rc
    for sub in ("ops", "models", "conversion"):
        if (args.out / sub).exists():
            shutil.rmtree(args.out / sub)
    generate(args.out)
    update_readme(args.out)
    size = total_size(args.out)
    print(f"wrote {len(_files(args.out))} files, {size} bytes")
    if size > SIZE_LIMIT:
        print("ERROR: fixtures exceed 5 MB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
