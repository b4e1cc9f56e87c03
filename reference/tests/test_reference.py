"""The reference itself: package identity, forward == step, export / import, training API."""

import copy
import json

import pytest
import torch
import xlstm
from torch import nn
from xlstm.blocks.mlstm.backends import parallel_stabilized_simple, recurrent_step_stabilized_simple
from xlstm.blocks.slstm.cell import sLSTMCell_vanilla
from xlstm.components.ln import LayerNorm

from moxe_ref import (
    DenseXLSTMModel,
    MoxEConfig,
    MoxEModel,
    SwiGLU,
    import_xlstm_lm_state_dict,
    load_engine_dir,
    randomize_,
    save_engine_dir,
    save_plain_xlstm_dir,
    training_loss,
    xlstm_object,
)
from moxe_ref.blocks import ExpertBank
from moxe_ref.config import lm_model_config
from moxe_ref.export import engine_state_dict
from moxe_ref.gate import EntropyAwareGate, StandardRouter
from moxe_ref.model import MoxELayer


def make_cfg(**kw):
    x = xlstm_object(kw.pop("d", 28), kw.pop("v", 48), context_length=64, mlstm_heads=kw.pop("mh", 2),
                     slstm_heads=kw.pop("sh", 4), act_fn=kw.pop("act", "swish"), bias=kw.pop("bias", False),
                     conv1d_kernel_size=kw.pop("k", 4))
    base = dict(num_experts=4, top_k_experts=2, num_layers=2, router_type="conditioned_addition",
                expert_type="xlstm", modulation_bias="standard", gate_bias=True, gamma=1.0,
                difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False)
    base.update(kw)
    return MoxEConfig(xlstm=x, **base)


def make_model(seed=0, **kw):
    m = MoxEModel(make_cfg(**kw))
    return randomize_(m, seed).eval()


CONFIGS = {
    "xlstm_standard": dict(),
    "mlp_proportional_tied_norm": dict(expert_type="mlp", num_experts=8, top_k_experts=1, modulation_bias="proportional",
                                       gate_bias=False, tie_weights=True, post_layers_norm=True, bias=True),
    "xlstm_masked_gelu": dict(num_experts=8, modulation_bias="masked", act="gelu", gamma=1.5),
    "router_standard": dict(router_type="standard", top_k_experts=1, k=3),
    "mlstm_experts": dict(expert_type="mlstm", d=30, sh=3),
    "slstm_experts": dict(expert_type="slstm", d=30, sh=2, mh=1),
}


# ----------------------------------------------------------------------------- package identity

def test_blocks_are_the_package_classes():
    m = make_model()
    for layer in m.layers:
        mixer = layer.mixer
        assert type(mixer) is xlstm.xLSTMBlockStack
        assert type(mixer.blocks[0]) is xlstm.sLSTMBlock
        assert type(mixer.blocks[1]) is xlstm.mLSTMBlock
        assert type(mixer.blocks[0].xlstm) is xlstm.sLSTMLayer
        assert type(mixer.blocks[1].xlstm) is xlstm.mLSTMLayer
        assert type(mixer.blocks[0].xlstm.slstm_cell) is sLSTMCell_vanilla
        assert type(mixer.post_blocks_norm) is LayerNorm
        # the methods that run are the package's own functions, not overrides
        assert type(mixer).forward is xlstm.xLSTMBlockStack.forward
        assert type(mixer).step is xlstm.xLSTMBlockStack.step
        g = layer.experts.num_experts // 2
        for e, ex in enumerate(layer.experts):
            assert type(ex) is (xlstm.mLSTMBlock if e < g else xlstm.sLSTMBlock)
    # every module is either a package module or one of the few MoxE / torch containers we own
    ours = (MoxEModel, MoxELayer, EntropyAwareGate, StandardRouter, ExpertBank, SwiGLU,
            nn.ModuleList, nn.Embedding, nn.Linear)
    for name, mod in m.named_modules():
        if type(mod).__module__.startswith("xlstm."):
            continue
        if type(mod).__module__.startswith("torch.nn"):
            # torch modules inside package blocks (Linear, Conv1d, SiLU, Dropout, Identity) are fine
            continue
        assert isinstance(mod, ours), (name, type(mod))
    # package modules are used, not copies living in moxe_ref
    assert not any(type(mod).__module__.startswith("moxe_ref") and "LSTM" in type(mod).__name__
                   for _, mod in m.named_modules())


def test_dense_model_is_package_xlstm_lm_model():
    cfg = MoxEConfig(xlstm={**xlstm_object(24, 40), "num_blocks": 3, "slstm_at": [1]}, model_type="xlstm")
    m = DenseXLSTMModel(cfg)
    assert isinstance(m, xlstm.xLSTMLMModel)
    assert type(m).forward is xlstm.xLSTMLMModel.forward
    assert [type(b) for b in m.xlstm_block_stack.blocks] == [xlstm.mLSTMBlock, xlstm.sLSTMBlock, xlstm.mLSTMBlock]


def test_tensor_names_follow_model_md():
    m = make_model()
    names = set(m.state_dict())
    for n in ("token_embedding.weight", "lm_head.weight",
              "layers.0.mixer.blocks.0.xlstm.slstm_cell._recurrent_kernel_",
              "layers.0.mixer.blocks.0.xlstm.slstm_cell._bias_",
              "layers.0.mixer.blocks.0.ffn.proj_up.weight",
              "layers.0.mixer.blocks.1.xlstm.mlstm_cell.igate.weight",
              "layers.0.mixer.blocks.1.xlstm.learnable_skip",
              "layers.0.mixer.post_blocks_norm.weight",
              "layers.1.gate.router.weight", "layers.1.gate.router.bias",
              "layers.1.gate.entropy_predictor.weight", "layers.1.gate.entropy_predictor.bias",
              "layers.1.experts.0.xlstm.proj_up.weight", "layers.1.experts.3.xlstm.slstm_cell._bias_"):
        assert n in names, n
    m2 = make_model(**CONFIGS["mlp_proportional_tied_norm"])
    n2 = set(engine_state_dict(m2))
    assert "layers.0.experts.7.w2.weight" in n2 and "norm.weight" in n2
    assert "lm_head.weight" not in n2 and "layers.0.gate.router.bias" not in n2


# ----------------------------------------------------------------------------- forward == step

@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_forward_equals_step(name):
    m = make_model(seed=3, **CONFIGS[name])
    ids = torch.randint(0, m.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    logits, aux = m(ids)
    state, outs, routes = None, [], []
    for t in range(ids.shape[1]):
        lt, state, tels = m.step(ids[:, t], state, return_telemetry=True)
        outs.append(lt)
        routes.append(torch.stack([tel.topk_idx for tel in tels]))
    step_logits = torch.stack(outs, 1)
    diff = (logits - step_logits).abs().max().item()
    scale = logits.abs().max().item()
    print(f"{name}: max |forward - step| = {diff:.3g} (logit scale {scale:.3g})")
    assert diff <= 1e-5 * max(scale, 1.0) * 10
    # routing identical (same experts chosen on both paths)
    fwd_routes = torch.stack([t.topk_idx.reshape(2, 40, -1) for t in aux.layers])  # (L, B, S, k)
    assert torch.equal(fwd_routes.permute(2, 0, 1, 3), torch.stack(routes).reshape(40, len(m.layers), 2, -1))


@torch.no_grad()
def test_step_does_not_modify_state():
    m = make_model()
    ids = torch.tensor([1, 2])
    _, s1 = m.step(ids, None)
    snap = copy.deepcopy(s1)
    m.step(ids, s1)
    flat = lambda s: [t for l in s for b in l.values() for v in b.values() for t in (v if isinstance(v, tuple) else (v,))]
    assert all(torch.equal(a, b) for a, b in zip(flat(s1), flat(snap)))


def test_mlstm_parallel_vs_recurrent_eps_bound():
    """The package's parallel form starts from m = -inf, its step form from m = 0.  Both compute
    h~ = Num / (max(|N|, 1) + 1e-6 * exp(m)) for the same unnormalised Num, N; m_rec = max(m_par,
    sum log sigma(f)) differs from m_par only when m_par < 0, where both exp(m) <= 1: so
    |h_par - h_rec| <= 1e-6 * |h| (relative).  Checked in float64 where rounding is negligible,
    including a case where the difference is actually non-zero (very negative input gates)."""
    gen = torch.Generator().manual_seed(0)
    for ig_mean in (0.0, -8.0):
        b, nh, s, dh = 2, 2, 48, 8
        q, k, v = (torch.randn(b, nh, s, dh, generator=gen, dtype=torch.float64) for _ in range(3))
        ig = torch.randn(b, nh, s, 1, generator=gen, dtype=torch.float64) * 2 + ig_mean
        fg = torch.randn(b, nh, s, 1, generator=gen, dtype=torch.float64) * 2 + 1
        hp = parallel_stabilized_simple(q, k, v, ig, fg)
        c = torch.zeros(b, nh, dh, dh, dtype=torch.float64)
        n = torch.zeros(b, nh, dh, 1, dtype=torch.float64)
        mm = torch.zeros(b, nh, 1, 1, dtype=torch.float64)
        hs = []
        for t in range(s):
            h, (c, n, mm) = recurrent_step_stabilized_simple(c, n, mm, q[:, :, t:t + 1].clone(), k[:, :, t:t + 1].clone(),
                                                             v[:, :, t:t + 1].clone(), ig[:, :, t:t + 1], fg[:, :, t:t + 1])
            hs.append(h)
        hr = torch.cat(hs, 2)
        rel = ((hp - hr).abs() / hp.abs().clamp(min=1e-30)).max().item()
        print(f"i_pre mean {ig_mean}: max relative |h_par - h_rec| = {rel:.3g}")
        assert rel <= 1.01e-6
        if ig_mean < 0:
            assert rel > 1e-9  # the eps term is visible here


# ----------------------------------------------------------------------------- export / import

@pytest.mark.parametrize("layout", ["vanilla", "cuda"])
@pytest.mark.parametrize("name", ["xlstm_standard", "mlp_proportional_tied_norm", "router_standard"])
@torch.no_grad()
def test_export_import_roundtrip(tmp_path, name, layout):
    m = make_model(seed=5, **CONFIGS[name])
    save_engine_dir(m, tmp_path, slstm_layout=layout)
    cfgj = json.loads((tmp_path / "config.json").read_text())
    assert cfgj["xlstm"]["slstm_block"]["slstm"]["backend"] == layout
    m2 = load_engine_dir(tmp_path)
    a, b = m.state_dict(), m2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, m.cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    assert torch.equal(m(ids)[0], m2(ids)[0])


@torch.no_grad()
def test_cuda_layout_matches_model_md(tmp_path):
    m = make_model(seed=6, sh=2)
    van = engine_state_dict(m, "vanilla")
    cu = engine_state_dict(m, "cuda")
    name = "layers.0.mixer.blocks.0.xlstm.slstm_cell."
    rv, rc = van[name + "_recurrent_kernel_"], cu[name + "_recurrent_kernel_"]
    bv, bc = van[name + "_bias_"], cu[name + "_bias_"]
    nh, four_dh, dh = rv.shape
    d = nh * dh
    assert rc.shape == (nh, dh, four_dh)
    for h in range(nh):
        for g in range(4):
            for j in range(dh):
                assert torch.equal(rc[h, :, g * dh + j], rv[h, g * dh + j, :])
                assert bc[h * 4 * dh + g * dh + j] == bv[g * d + h * dh + j]
    assert not torch.equal(bv, bc)


@torch.no_grad()
def test_import_plain_xlstm_lm_model(tmp_path):
    x = {**xlstm_object(24, 40, act_fn="gelu"), "num_blocks": 3, "slstm_at": [1], "tie_weights": False}
    plain = xlstm.xLSTMLMModel(lm_model_config(x, tie_weights=False))
    randomize_(plain, 11).eval()
    sd = plain.state_dict()
    assert any(k.startswith("xlstm_block_stack.blocks.1.xlstm.slstm_cell") for k in sd)
    dense = import_xlstm_lm_state_dict(sd, x)
    ids = torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain(ids), dense(ids))
    # and through the directory formats
    save_engine_dir(dense, tmp_path / "engine")
    save_plain_xlstm_dir(dense, tmp_path / "plain")
    for sub in ("engine", "plain"):
        assert torch.equal(load_engine_dir(tmp_path / sub)(ids), plain(ids))


def test_config_json_roundtrip_and_validation():
    cfg = make_cfg()
    d = json.loads(cfg.to_json())
    d["moe_layer_type"] = "whatever"
    d["eps"] = 1e-5
    c2 = MoxEConfig.from_dict(d)
    assert c2.extra == {"moe_layer_type": "whatever", "eps": 1e-5}
    assert json.loads(c2.to_json()) == d
    for bad in ({"num_experts": 3}, {"top_k_experts": 9}, {"router_type": "x"}, {"modulation_bias": "soft"}):
        with pytest.raises(ValueError):
            MoxEConfig.from_dict({**d, **bad})


# ----------------------------------------------------------------------------- training API

def test_training_api_backward():
    m = make_model(seed=8)
    m.train()
    ids = torch.randint(0, m.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    logits, aux = m(ids[:, :-1])
    assert set(aux.losses) == {"L_d", "L_g", "L_z", "L_lb"}
    total, ce = training_loss(logits, ids[:, 1:], aux)
    assert torch.isfinite(total) and total > ce
    total.backward()
    g = m.layers[0].gate
    assert g.router.weight.grad is not None and g.router.weight.grad.abs().sum() > 0
    assert g.entropy_predictor.weight.grad.abs().sum() > 0
    assert m.layers[0].mixer.blocks[0].xlstm.slstm_cell._recurrent_kernel_.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in m.layers[1].experts[0].parameters() if p.grad is not None) > 0


def test_layer_output_is_weighted_sum_of_experts():
    """No extra residual: out = sum_j w_j Expert_j(u), each expert on a length-1 sequence."""
    m = make_model(seed=9)
    layer = m.layers[0]
    h = torch.randn(1, 7, m.cfg.embedding_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, u, tel = layer(h)
        for t in range(7):
            ref = sum(float(tel.topk_weight[t, j]) * layer.experts[int(tel.topk_idx[t, j])](u[:, t:t + 1])[0, 0]
                      for j in range(m.cfg.top_k_experts))
            assert torch.allclose(out[0, t], ref, atol=1e-5)
