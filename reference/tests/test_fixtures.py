"""The committed fixtures: format contract, reproduction by the reference, and agreement with an
independent float64 implementation of MODEL.md (spec_math.py) — i.e. MODEL.md describes what the
package computes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import spec_math as S
from moxe_ref import import_xlstm_lm_state_dict, load_engine_dir
from moxe_ref.golden import make_golden

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OPS = sorted((ROOT / "ops").glob("*.safetensors"))
MODELS = sorted(p for p in (ROOT / "models").iterdir() if p.is_dir())
F64 = torch.float64

pytestmark = pytest.mark.skipif(not ROOT.exists(), reason="fixtures not generated")


def load_case(path):
    t = {k: v.to(F64) if v.dtype.is_floating_point else v.long() for k, v in load_file(str(path)).items()}
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    ins = {k[3:]: v for k, v in t.items() if k.startswith("in.")}
    par = {k[6:]: v for k, v in t.items() if k.startswith("param.")}
    out = {k[4:]: v for k, v in t.items() if k.startswith("out.")}
    return cfg, ins, par, out


def close(a, b, tol=2e-5, name=""):
    a, b = a.to(F64), b.to(F64)
    assert a.shape == b.shape, (name, a.shape, b.shape)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{name}: max abs err {err:.3g} > {tol * scale:.3g}"
    return err


# ----------------------------------------------------------------------------- format

def test_size_and_dtypes():
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")]
    total = sum(p.stat().st_size for p in files)
    assert total < 5 * 1024 * 1024, total
    for p in files:
        if p.suffix != ".safetensors":
            continue
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                assert f.get_slice(k).get_dtype() in ("F32", "I32"), (p, k)
            if p.parent.name == "ops":
                meta = f.metadata()
                assert set(meta) == {"config"}
                json.loads(meta["config"])
                assert all(k.split(".", 1)[0] in ("in", "param", "out") for k in f.keys())


def test_required_op_cases_present():
    names = {p.stem for p in OPS}
    for n in ("layernorm", "multihead_layernorm", "conv_seq", "conv_seq_state", "conv_step", "headwise",
              "slstm_cell", "slstm_cell_large", "mlstm_cell_kernel", "mlstm_cell_kernel_large", "mlstm_cell",
              "slstm_block_swish", "slstm_block_gelu", "slstm_block_large", "mlstm_block", "mlstm_block_large",
              "slstm_expert", "mlstm_expert", "swiglu", "gate_standard_e4_k2", "gate_proportional_e8_k2",
              "gate_masked_e4_k2", "router_standard_e4_k1", "router_standard_e8_k2"):
        assert n in names, n


# ----------------------------------------------------------------------------- ops vs MODEL.md

def _run_op(path):
    cfg, i, p, o = load_case(path)
    op = cfg["op"]
    if op == "layernorm":
        close(S.layernorm(i["x"], p["weight"]), o["y"], name="y")
    elif op == "multihead_layernorm":
        x = i["x"]  # (B, NH, S, DH)
        b, nh, s, dh = x.shape
        y = S.mh_layernorm(x.transpose(1, 2).reshape(b, s, nh * dh), p["weight"], nh)
        close(y.reshape(b, s, nh, dh).transpose(1, 2), o["y"], name="y")
    elif op == "causal_conv1d" and cfg["mode"] == "sequence":
        y, last = S.conv_seq(i["x"], p["conv.weight"], p["conv.bias"], i.get("conv_state"))
        close(y, o["y"], name="y")
        close(last, o["last_state"], name="last_state")
    elif op == "causal_conv1d":
        st0 = i["conv_state"]
        st = st0[:, 1:]
        ys = []
        for t in range(i["x"].shape[1]):
            y, st = S.conv_step(i["x"][:, t], st, p["conv.weight"], p["conv.bias"])
            ys.append(y)
        close(torch.stack(ys, 1), o["y"], name="y")
        window = torch.cat([st0, i["x"]], 1)[:, -st0.shape[1]:]
        close(window, o["conv_state"], name="conv_state")
    elif op == "linear_headwise":
        close(S.headwise(p["weight"], i["x"], p.get("bias")), o["y"], name="y")
    elif op == "slstm_cell":
        x = i["x"]
        b, s, d4 = x.shape
        d, nh = d4 // 4, cfg["num_heads"]
        st = tuple(i["state"]) if "state" in i else tuple(torch.zeros(b, d, dtype=F64) for _ in range(4))
        ys = []
        for t in range(s):
            h, st = S.slstm_cell_step(x[:, t], st, p["_recurrent_kernel_"], p["_bias_"], nh)
            ys.append(h)
        y = torch.stack(ys, 1).reshape(b, s, nh, d // nh).transpose(1, 2)
        close(y, o["y"], 1e-4, name="y")
        close(torch.stack(st), o["state"], 1e-4, name="state")
    elif op == "mlstm_cell_kernel":
        q, k, v, ig, fg = i["q"], i["k"], i["v"], i["igate_preact"][..., 0], i["fgate_preact"][..., 0]
        close(S.mlstm_parallel(q, k, v, ig, fg), o["h_parallel"], 1e-4, name="h_parallel")
        b, nh, s, dh = q.shape
        st = (torch.zeros(b, nh, dh, dh, dtype=F64), torch.zeros(b, nh, dh, dtype=F64), torch.zeros(b, nh, dtype=F64))
        hs = []
        for t in range(s):
            h, st = S.mlstm_cell_step(q[:, :, t], k[:, :, t], v[:, :, t], ig[:, :, t], fg[:, :, t], st)
            hs.append(h)
        close(torch.stack(hs, 2), o["h_recurrent"], 1e-4, name="h_recurrent")
        close(st[0], o["C"], 1e-4, name="C")
        close(st[1], o["n"][..., 0], 1e-4, name="n")
        close(st[2], o["m"][..., 0, 0], 1e-5, name="m")
    elif op == "mlstm_cell":
        q, k, v = i["q"], i["k"], i["v"]
        b, s, di = q.shape
        nh = cfg["num_heads"]
        qkv = torch.cat([q, k, v], -1)
        ig = S.linear(qkv, p["igate.weight"], p["igate.bias"]).transpose(1, 2)
        fg = S.linear(qkv, p["fgate.weight"], p["fgate.bias"]).transpose(1, 2)
        hv = lambda t: t.reshape(b, s, nh, -1).transpose(1, 2)
        hp = S.mlstm_parallel(hv(q), hv(k), hv(v), ig, fg).transpose(1, 2).reshape(b, s, di)
        close(S.mh_layernorm(hp, p["outnorm.weight"], nh), o["y"], 1e-4, name="y")
        dh = di // nh
        st = (torch.zeros(b, nh, dh, dh, dtype=F64), torch.zeros(b, nh, dh, dtype=F64), torch.zeros(b, nh, dtype=F64))
        ys = []
        for t in range(s):
            h, st = S.mlstm_cell_step(hv(q)[:, :, t], hv(k)[:, :, t], hv(v)[:, :, t], ig[:, :, t], fg[:, :, t], st)
            ys.append(S.mh_layernorm(h.reshape(b, di), p["outnorm.weight"], nh))
        close(torch.stack(ys, 1), o["y_step"], 1e-4, name="y_step")
        close(st[0], o["C"], 1e-4, name="C")
    elif op == "gated_ffn":
        close(S.gated_ffn(i["x"], p, "", cfg["act_fn"]), o["y"], name="y")
    elif op == "swiglu":
        close(S.swiglu(i["x"], p, ""), o["y"], name="y")
    elif op in ("slstm_block", "mlstm_block") and cfg.get("form", "").startswith("expert"):
        _expert_case(op, cfg, i, p, o)
    elif op == "slstm_block":
        _slstm_block_case(cfg, i, p, o)
    elif op == "mlstm_block":
        _mlstm_block_case(cfg, i, p, o)
    elif op == "gate":
        _gate_case(cfg, i, p, o)
    else:
        raise AssertionError(f"unknown op {op}")


def _scfg(x):
    s = x["slstm_block"]
    return {"nh": s["slstm"]["num_heads"], "k": s["slstm"]["conv1d_kernel_size"], "act": s["feedforward"]["act_fn"]}


def _mcfg(x):
    m = x["mlstm_block"]["mlstm"]
    return {"nh": m["num_heads"], "k": m["conv1d_kernel_size"],
            "di": int(math.ceil(m["proj_factor"] * x["embedding_dim"] / 64) * 64)}


def _slstm_block_case(cfg, i, p, o):
    c = _scfg(cfg["xlstm"])
    x = i["x"]
    b, s, d = x.shape
    st = S.slstm_zero_state(b, d, c["k"])
    if "conv_state" in i:
        st = {"conv": i["conv_state"], "cell": tuple(i["slstm_state"])}
    ys = []
    for t in range(s):
        y, st = S.slstm_block_step(x[:, t], st, p, "", c)
        ys.append(y)
    y = torch.stack(ys, 1)
    tol = 1e-4 if "large" not in cfg.get("note", "") else 2e-4
    close(y, o["y"], tol, name="y")
    close(y, o["y_step"], tol, name="y_step")
    close(st["conv"], o["conv_state"], tol, name="conv_state")
    close(st["conv"], o["step_conv_state"][:, 1:], tol, name="step_conv_state")
    close(torch.stack(st["cell"][:3]), o["slstm_state"][:3], tol, name="h,c,n")
    close(st["cell"][3], o["slstm_state"][3], tol, name="m")


def _mlstm_block_case(cfg, i, p, o):
    c = _mcfg(cfg["xlstm"])
    assert c["di"] == cfg["inner_dim"]
    x = i["x"]
    b, s, d = x.shape
    st = S.mlstm_zero_state(b, c["di"], c["nh"], c["k"])
    ys = []
    for t in range(s):
        y, st = S.mlstm_block_step(x[:, t], st, p, "", c)
        ys.append(y)
    y = torch.stack(ys, 1)
    close(y, o["y_step"], 1e-4, name="y_step")
    close(y, o["y"], 1e-4, name="y (parallel vs recurrent: eps difference <= 1e-6 relative)")
    close(st["conv"], o["conv_state"][:, 1:], 1e-4, name="conv_state")
    close(st["cell"][0], o["C"], 1e-4, name="C")
    close(st["cell"][1], o["n"][..., 0], 1e-4, name="n")
    close(st["cell"][2], o["m"][..., 0, 0], 1e-4, name="m")


def _expert_case(op, cfg, i, p, o):
    x = i["x"][:, 0]
    n, d = x.shape
    if op == "slstm_block":
        c = _scfg(cfg["xlstm"])
        y, _ = S.slstm_block_step(x, S.slstm_zero_state(n, d, c["k"]), p, "", c)
        # MODEL.md's reduced form: conv uses only its last tap, h = sigma(raw_o) * tanh(raw_z)
        xn = S.layernorm(x, p["xlstm_norm.weight"])
        xc = S.silu(p["xlstm.conv1d.conv.weight"][:, 0, -1] * xn + p["xlstm.conv1d.conv.bias"])
        b = p["xlstm.slstm_cell._bias_"]
        rz = S.headwise(p["xlstm.zgate.weight"], xn) + b[2 * d:3 * d]
        ro = S.headwise(p["xlstm.ogate.weight"], xn) + b[3 * d:]
        h = S.sigmoid(ro) * torch.tanh(rz)
        y2 = x + S.mh_layernorm(h, p["xlstm.group_norm.weight"], c["nh"])
        y2 = y2 + S.gated_ffn(S.layernorm(y2, p["ffn_norm.weight"]), p, "ffn.", c["act"])
        assert xc.shape == x.shape
    else:
        c = _mcfg(cfg["xlstm"])
        y, _ = S.mlstm_block_step(x, S.mlstm_zero_state(n, c["di"], c["nh"], c["k"]), p, "", c)
        # reduced form: h~ = (q.kk) v / (max(|q.kk|, exp(-i_pre)) + 1e-6)
        xn = S.layernorm(x, p["xlstm_norm.weight"])
        up = S.linear(xn, p["xlstm.proj_up.weight"])
        di = up.shape[-1] // 2
        xm, z = up[:, :di], up[:, di:]
        xc = S.silu(p["xlstm.conv1d.conv.weight"][:, 0, -1] * xm + p["xlstm.conv1d.conv.bias"])
        q, k, v = (S.headwise(p[f"xlstm.{w}_proj.weight"], src) for w, src in (("q", xc), ("k", xc), ("v", xm)))
        ipre = S.linear(torch.cat([q, k, v], -1), p["xlstm.mlstm_cell.igate.weight"], p["xlstm.mlstm_cell.igate.bias"])
        nh = c["nh"]
        qh, kh, vh = (t.reshape(n, nh, -1) for t in (q, k, v))
        qk = (qh * kh).sum(-1) / math.sqrt(qh.shape[-1])
        ht = qk[..., None] * vh / (torch.maximum(qk.abs(), torch.exp(-ipre))[..., None] + 1e-6)
        ht = S.mh_layernorm(ht.reshape(n, di), p["xlstm.mlstm_cell.outnorm.weight"], nh)
        y2 = x + S.linear((ht + p["xlstm.learnable_skip"] * xc) * S.silu(z), p["xlstm.proj_down.weight"])
    close(y, o["y"][:, 0], 1e-4, name="y")
    close(y2, o["y"][:, 0], 1e-4, name="y (reduced expert form)")


def _gate_case(cfg, i, p, o):
    u = i["u"].reshape(-1, i["u"].shape[-1])
    c = dict(cfg)
    if c["router_type"] == "standard":
        c["gamma"], c["difficulty_threshold"], c["modulation_bias"] = 0.0, 0.0, "standard"
    r = S.gate(u, p, "", c)
    assert torch.equal(r["topk_idx"], o["topk_idx"]), "top-k choice"
    for k in ("difficulty", "z", "zc", "probs", "topk_weight", "topk_prob", "entropy", "group_shares",
              "expert_loads", "losses"):
        close(r[k], o[k], 2e-5, name=k)
    assert torch.equal(r["expert_counts"], o["expert_counts"])
    n = u.shape[0]
    y = torch.zeros_like(u)
    for t in range(n):
        for j in range(c["top_k_experts"]):
            y[t] += r["topk_weight"][t, j] * i["expert_out"][r["topk_idx"][t, j], t]
    close(y, o["y"], 2e-5, name="y")
    if "y_experts" in o:
        ye = torch.zeros_like(u)
        for t in range(n):
            for j in range(c["top_k_experts"]):
                ye[t] += r["topk_weight"][t, j] * S.swiglu(u[t:t + 1], p, f"experts.{int(r['topk_idx'][t, j])}.")[0]
        close(ye, o["y_experts"], 2e-5, name="y_experts")
    if cfg.get("ties"):
        for grp in cfg["ties"]:
            for j in grp[1:]:
                assert torch.equal(o["probs"][:, j], o["probs"][:, grp[0]])
        # lower index wins: a later member of a tie group is never chosen while an earlier one is not
        for grp in cfg["ties"]:
            for t in range(n):
                chosen = set(o["topk_idx"][t].tolist())
                for a, b in zip(grp, grp[1:]):
                    assert not (b in chosen and a not in chosen)


@pytest.mark.parametrize("path", OPS, ids=[p.stem for p in OPS])
def test_op_fixture_matches_model_md(path):
    _run_op(path)


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("mdir", MODELS, ids=[p.name for p in MODELS])
@torch.no_grad()
def test_model_fixture_reproduced_by_reference(mdir):
    gold = load_file(str(mdir / "golden.safetensors"))
    model = load_engine_dir(mdir)
    tensors, info = make_golden(model, gold["prompt_ids"].long())
    assert tensors.keys() == gold.keys()
    for k, v in tensors.items():
        if v.dtype.is_floating_point:
            close(v, gold[k], 1e-6, name=k)
        else:
            assert torch.equal(v.to(torch.int32), gold[k]), k
    assert int(gold["decode_ids"][0]) == int(gold["prompt_logits"][-1].argmax())
    for j in range(15):
        assert int(gold["decode_ids"][j + 1]) == int(gold["decode_logits"][j].argmax())


@torch.no_grad()
def test_plain_dense_import_matches_golden():
    d = ROOT / "models" / "dense_xlstm_plain"
    cfg = json.loads((d / "config.json").read_text())
    model = import_xlstm_lm_state_dict(load_file(str(d / "model.safetensors")), cfg["xlstm"])
    gold = load_file(str(d / "golden.safetensors"))
    logits = model(gold["prompt_ids"].long()[None])[0]
    close(logits, gold["prompt_logits"], 1e-6, name="prompt_logits")


@pytest.mark.parametrize("mdir", MODELS, ids=[p.name for p in MODELS])
@torch.no_grad()
def test_model_fixture_matches_model_md(mdir):
    """Token-by-token float64 run of MODEL.md (reading the engine files directly, incl. the cuda
    layout) against the golden step logits, decode logits and telemetry."""
    gold = {k: v.to(F64) if v.dtype.is_floating_point else v.long() for k, v in load_file(str(mdir / "golden.safetensors")).items()}
    spec = S.SpecModel(mdir)
    st = spec.zero_state(1)
    logits, traces = [], []
    for t in gold["prompt_ids"]:
        lg, st, tr = spec.step(t[None], st)
        logits.append(lg[0])
        traces.append(tr)
    close(torch.stack(logits), gold["prompt_logits_step"], 1e-4, name="prompt_logits_step")
    close(torch.stack(logits), gold["prompt_logits"], 1e-4, name="prompt_logits")
    for l in range(len(traces[0])):
        close(torch.stack([tr[l][1][0] for tr in traces]), gold[f"hidden.{l}.out"], 1e-4, name=f"hidden.{l}.out")
        if spec.moxe:
            close(torch.stack([tr[l][0][0] for tr in traces]), gold[f"hidden.{l}.mixer"], 1e-4, name=f"hidden.{l}.mixer")
            g = {k: torch.cat([tr[l][2][k] for tr in traces]) for k in ("difficulty", "entropy", "probs", "topk_idx", "topk_weight")}
            assert torch.equal(g["topk_idx"], gold[f"telemetry.{l}.topk_idx"])
            close(g["probs"], gold[f"telemetry.{l}.router_probs"], 1e-4, name="router_probs")
            close(g["difficulty"], gold[f"telemetry.{l}.difficulty"], 1e-4, name="difficulty")
            close(g["entropy"], gold[f"telemetry.{l}.entropy"], 1e-4, name="entropy")
            close(g["topk_weight"], gold[f"telemetry.{l}.topk_weight"], 1e-4, name="topk_weight")
    for j, tok in enumerate(gold["decode_ids"]):
        lg, st, _ = spec.step(tok[None], st)
        close(lg[0], gold["decode_logits"][j], 1e-4, name=f"decode_logits[{j}]")


@pytest.mark.parametrize("mdir", [m for m in MODELS if m.name.startswith(("moxe", "latent"))], ids=lambda p: p.name)
def test_golden_telemetry_over_whole_prompt(mdir):
    """Sequence-level telemetry (group shares, counts, loads, losses) from the spec over the
    prompt's mixer outputs."""
    gold = {k: v.to(F64) if v.dtype.is_floating_point else v.long() for k, v in load_file(str(mdir / "golden.safetensors")).items()}
    spec = S.SpecModel(mdir)
    for l in range(spec.cfg["num_layers"]):
        r = S.gate(gold[f"hidden.{l}.mixer"], spec.p, f"layers.{l}.gate.", spec.cfg)
        assert torch.equal(r["expert_counts"], gold[f"telemetry.{l}.expert_counts"])
        for k, gk in (("group_shares", "group_shares"), ("expert_loads", "expert_loads"), ("losses", "losses")):
            close(r[k], gold[f"telemetry.{l}.{gk}"], 1e-4, name=gk)


def test_fixture_script_reproduces_committed_files():
    script = Path(__file__).resolve().parents[1] / "make_fixtures.py"
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=600)
    print(r.stdout, r.stderr)
    assert r.returncode == 0


# ----------------------------------------------------------------------------- latent experts

LATENT_MODELS = ("latent_mlp_e4_k2", "latent_xlstm_e4_k2")


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_latent_fixture_format(name):
    """docs/LATENT_FORMAT.md: "latent": {"groups": G}; B (r, D) per (layer, group, kind), A (out, r)
    per expert, no dense weight of a factored matrix, every rank below D, ranks differing."""
    mdir = ROOT / "models" / name
    cfg = json.loads((mdir / "config.json").read_text())
    assert cfg["latent"] == {"groups": 2}
    t = load_file(str(mdir / "model.safetensors"))
    d = cfg["xlstm"]["embedding_dim"]
    kinds = ("w1", "w3") if cfg["expert_type"] == "mlp" else ("xlstm.proj_up", "ffn.proj_up")
    ranks = set()
    for l in range(cfg["num_layers"]):
        for e in range(cfg["num_experts"]):
            g = e // (cfg["num_experts"] // 2)
            for k in kinds:
                if cfg["expert_type"] == "xlstm" and k != ("xlstm.proj_up" if g == 0 else "ffn.proj_up"):
                    continue
                b = t[f"layers.{l}.experts.latent.{g}.{k}.B"]
                a = t[f"layers.{l}.experts.{e}.{k}.A"]
                assert b.shape[1] == d and b.shape[0] < d and a.shape[1] == b.shape[0]
                assert f"layers.{l}.experts.{e}.{k}.weight" not in t
                ranks.add(b.shape[0])
    assert len(ranks) > 2
    with safe_open(str(mdir / "golden.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["config"])
    assert {int(t[n].shape[0]) for n in info["latent_ranks"]} == ranks


CONVERSIONS = sorted((ROOT / "conversion").glob("*.safetensors")) if (ROOT / "conversion").exists() else []


@pytest.mark.parametrize("path", CONVERSIONS, ids=[p.stem for p in CONVERSIONS])
@torch.no_grad()
def test_conversion_fixture(path):
    """The stored conversion report is what the reference's conversion gives; the stacked errors
    are sqrt(discarded energy) of the stored singular values and grow as the rank falls."""
    from moxe_ref.latent import convert_to_latent
    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    dense = load_engine_dir(ROOT / meta["source"])
    n = len(meta["slots"])
    for c, case in enumerate(meta["cases"]):
        how = {k: case[k] for k in ("rank", "energy") if k in case}
        _, rep = convert_to_latent(dense, groups=meta["groups"], **how)
        assert [s.rank for s in rep.slots] == t[f"case.{c}.rank"].tolist()
        close(torch.tensor([s.rel_err for s in rep.slots]), t[f"case.{c}.rel_err"], 1e-5, name="rel_err")
        assert rep.params_after == case["params_after"]
        for i in range(n):
            sv = t[f"slot.{i}.singular_values"].double()
            r = int(t[f"case.{c}.rank"][i])
            assert math.isclose(float(t[f"case.{c}.rel_err"][i]), math.sqrt(float((sv[r:] ** 2).sum() / (sv ** 2).sum())),
                                rel_tol=1e-4, abs_tol=1e-6)
    rank_cases = [c for c, case in enumerate(meta["cases"]) if "rank" in case]
    for a, b in zip(rank_cases, rank_cases[1:]):
        assert (t[f"case.{b}.rel_err"] > t[f"case.{a}.rel_err"]).all()
    full = meta["cases"][rank_cases[0]]["rank"]
    assert full == dense.cfg.embedding_dim
    assert float(t[f"case.{rank_cases[0]}.logits_max_abs_err"]) <= 1e-4 * float(t["logits_max_abs"])
