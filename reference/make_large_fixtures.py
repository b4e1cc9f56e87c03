#!/usr/bin/env python3
"""Golden fixtures of the xLSTM-Large architecture (NX-AI's xLSTM-7B) in tests/fixtures/large/.

    .venv/bin/python reference/make_large_fixtures.py            # (re)write tests/fixtures/large/
    .venv/bin/python reference/make_large_fixtures.py --check    # regenerate into a temp dir and compare
    .venv/bin/python reference/make_large_fixtures.py --out DIR  # write elsewhere

Each case is a small model with random weights, saved exactly as the official code saves it:

* ``hf_*``: transformers' ``xLSTMForCausalLM.save_pretrained`` (config.json with
  ``"model_type": "xlstm"``, sharded ``model-0000i-of-0000n.safetensors`` with
  ``model.safetensors.index.json``, generation_config.json) plus a tokenizer saved by
  ``PreTrainedTokenizerFast.save_pretrained`` (tokenizer.json, tokenizer_config.json). The
  golden outputs come from ``xLSTMForCausalLM.from_pretrained`` of that directory.
* ``large_*``: the ``xlstm.xlstm_large`` package's own ``xLSTMLarge.state_dict()`` in
  model.safetensors, config.json = ``dataclasses.asdict(xLSTMLargeConfig)``. The golden
  outputs come from ``xLSTMLarge`` itself.

Both run the official native kernels on the CPU (``mode="inference"``: the prompt through the
chunkwise kernel, padded to the chunk size, then one ``step`` per decoded token) in f64 with f64
state: the exact math of the stored weights (bf16 weights are read back exactly), which the
engine's f32 must reproduce to f32 rounding. The same code in f32 is run too, and how far it
lands from the f64 outputs is recorded. Gate and head weights are scaled so that the soft caps bind (|pre-activation| well past
the cap for a share of the tokens).

golden.safetensors (f32 floats, i32 ids): prompt_ids (S), prompt_logits (S, V) of the forward
pass, decode_ids (16) = the greedy tokens fed one at a time after the prompt, decode_logits
(16, V) the logits after each. Its ``__metadata__["config"]`` (JSON) has the case, the prompt
text where a tokenizer made the ids, the shares of gate pre-activations beyond the gate cap
and of raw logits beyond the logit cap, the smallest top-2 logit margin of the greedy tokens,
and the official f32 code's relative error against the golden outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast, xLSTMConfig, xLSTMForCausalLM  # noqa: E402
from mlstm_kernels.torch.backend_module import mLSTMBackend  # noqa: E402
from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_DECODE = 16
SIZE_LIMIT = 3 * 1024 * 1024

# Kernels that run on the CPU; everything else as the official defaults.
BACKEND = dict(
    chunkwise_kernel="chunkwise--native_autograd",
    sequence_kernel="native_sequence__native",
    step_kernel="native",
    mode="inference",
    return_last_states=True,
    autocast_kernel_dtype="float32",
    inference_state_dtype="float32",
)

CASES = [
    # HF snapshot: single weights, bf16, sharded, tokenizer with BOS, DHQK 32 != DHV 64 (transformers needs
    # multiples of 64 for D * qk_dim_factor and D * v_dim_factor: its cache rounds them up).
    dict(name="hf_single_bf16", layout="hf", weight_mode="single", dtype="bfloat16",
         embedding_dim=128, num_heads=2, num_blocks=2, vocab_size=320, qk_dim_factor=0.5,
         v_dim_factor=1.0, ffn_proj_factor=2.667, use_bias=False, add_out_norm=True,
         prompt_len=None, seed=1),
    # The package's own state_dict: fused weights, biases, no out norm, f32, a prompt longer
    # than the engine's prefill chunk (64) and the package's chunk size; DHQK 16, DHV 48.
    dict(name="large_fused_bias_f32", layout="large", weight_mode="fused", dtype="float32",
         embedding_dim=64, num_heads=2, num_blocks=2, vocab_size=200, qk_dim_factor=0.5,
         v_dim_factor=1.5, ffn_proj_factor=1.3, use_bias=True, add_out_norm=False,
         prompt_len=150, seed=2),
    # The package's own state_dict: single weights, bf16, 4 heads with DHQK 10 (not a multiple
    # of 4), DHV 20; a prompt of 100 tokens.
    dict(name="large_single_bf16", layout="large", weight_mode="single", dtype="bfloat16",
         embedding_dim=80, num_heads=4, num_blocks=3, vocab_size=256, qk_dim_factor=0.5,
         v_dim_factor=1.0, ffn_proj_factor=2.6667, use_bias=False, add_out_norm=True,
         prompt_len=100, seed=3),
]

PROMPT_TEXT = (
    "The old lighthouse keeper climbed the stairs each night, counting the steps as his father "
    "had taught him, and every night the sea answered with the same slow breath against the rocks."
)

TRAINING_TEXT = """
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of
Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my
purse, and nothing particular to interest me on shore, I thought I would sail about a little and
see the watery part of the world. The old lighthouse keeper climbed the stairs each night.
"""


def make_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with BOS 0, pad 1, EOS 2; BOS added by its post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|padding|>", "<|eot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAINING_TEXT] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
        special_tokens=[("<|endoftext|>", 0)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", pad_token="<|padding|>", eos_token="<|eot|>",
    )
    fast.add_bos_token = True
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg["add_eos_token"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return fast


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: matrices N(0, 1/sqrt(fan_in)), norm weights U(0.5, 1.5), biases
    N(0, 0.3); gate weights 12x and the LM head 25x larger so that the soft caps bind.

    Token embeddings share one direction e0 and q and k read it (a rank-one term), so that q . n
    stays away from zero as in trained models: with fully random q and k, q . n cancels for some
    tokens and the cell's output becomes ill-conditioned (the official code's own f32 forward and
    step then disagree by 1e-3 of the largest logit), which would leave nothing to test at 1e-5.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    emb_name = next(n for n in params if n.endswith(("embedding.weight", "embeddings.weight")))
    dim = params[emb_name].shape[1]
    e0 = torch.randn(dim, generator=gen)
    e0 /= e0.norm()
    for name, p in params.items():
        if p.ndim == 2:
            std = p.shape[1] ** -0.5
            if "gate_preact" in name and "ogate" not in name:
                std *= 12.0
            if "lm_head" in name:
                std *= 25.0
            if name == emb_name:
                std = 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)
            if name == emb_name:
                p.add_(e0 * dim ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        elif "fgate" in name or name.endswith("ifgate_preact.bias"):
            p.copy_(torch.rand(p.shape, generator=gen) * 9.0 - 3.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    # q and k: a common offset of about 1.5 along e0 (x = RMSNorm(.) has norm ~ sqrt(D)).
    for name, p in params.items():
        rows = None
        if name.endswith((".q.weight", ".k.weight")):
            rows = slice(0, p.shape[0])
        elif name.endswith(".qkv_opreact.weight"):
            qk = int(dim * model.config.qk_dim_factor)
            rows = slice(0, 2 * qk)
        if rows is not None:
            p[rows] += 1.5 * dim ** -0.5 * e0


def round_to_dtype(model: torch.nn.Module, dtype: str) -> None:
    if dtype == "bfloat16":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))


def cap_shares(model, ids: torch.Tensor, case: dict) -> tuple[float, float]:
    """Shares of gate pre-activations beyond the gate cap and raw logits beyond the logit cap."""
    caught = {"gates": [], "logits": []}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("igate_preact", "fgate_preact", "ifgate_preact")):
            hooks.append(mod.register_forward_hook(lambda m, i, o: caught["gates"].append(o.detach())))
        if name == "lm_head":
            hooks.append(mod.register_forward_hook(lambda m, i, o: caught["logits"].append(o.detach())))
    model_forward(model, ids, case)
    for h in hooks:
        h.remove()
    gates = torch.cat([g.flatten() for g in caught["gates"]])
    logits = torch.cat([g.flatten() for g in caught["logits"]])
    return float((gates.abs() > 15.0).float().mean()), float((logits.abs() > 30.0).float().mean())


def model_forward(model, ids: torch.Tensor, case: dict, state=None):
    """(logits (B, S, V), state) of the official forward pass."""
    if case["layout"] == "hf":
        out = model(input_ids=ids, cache=state, use_cache=True)
        return out.logits, out.cache
    return model(ids, state)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (how the engine's tests measure)."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


@torch.no_grad()
def golden(model64, model32, ids: torch.Tensor, case: dict) -> tuple[dict, dict]:
    """The golden outputs from the model run in f64 (the exact math of the stored weights),
    and how far the same official code in f32 lands from them."""
    out = {"prompt_ids": ids[0]}
    logits, state = model_forward(model64, ids, case)
    out["prompt_logits"] = logits[0]
    nxt = int(logits[0, -1].argmax())
    dec_ids, dec_logits = [], []
    for _ in range(N_DECODE):
        dec_ids.append(nxt)
        lg, state = model_forward(model64, torch.tensor([[nxt]]), case, state)
        dec_logits.append(lg[0, 0])
        nxt = int(lg[0, 0].argmax())
    out["decode_ids"] = torch.tensor(dec_ids)
    out["decode_logits"] = torch.stack(dec_logits)
    # The official code in f32: the chunkwise forward and token-by-token steps.
    logits32, state32 = model_forward(model32, ids, case)
    steps32, st = [], None
    for t in range(ids.shape[1]):
        lg, st = model_forward(model32, ids[:, t:t + 1], case, st)
        steps32.append(lg[0, 0])
    dec32 = []
    for nid in dec_ids:
        lg, state32 = model_forward(model32, torch.tensor([[nid]]), case, state32)
        dec32.append(lg[0, 0])
    sorted_ = torch.sort(torch.cat([out["prompt_logits"][-1:], out["decode_logits"]]), dim=-1, descending=True).values
    info = {
        "prompt_len": int(ids.shape[1]),
        "official_f32_forward_rel_err": rel_err(logits32[0], out["prompt_logits"]),
        "official_f32_steps_rel_err": rel_err(torch.stack(steps32), out["prompt_logits"]),
        "official_f32_decode_rel_err": rel_err(torch.stack(dec32), out["decode_logits"]),
        "min_argmax_margin": float((sorted_[:, 0] - sorted_[:, 1]).min()),
    }
    return out, info


def write_golden(path: Path, tensors: dict, info: dict) -> None:
    t = {k: (v.to(torch.float32) if v.dtype.is_floating_point else v.to(torch.int32)).contiguous()
         for k, v in tensors.items()}
    save_file(t, str(path), metadata={"config": json.dumps(info, sort_keys=True)})


def large_config(case: dict) -> xLSTMLargeConfig:
    return xLSTMLargeConfig(
        embedding_dim=case["embedding_dim"], num_heads=case["num_heads"], num_blocks=case["num_blocks"],
        vocab_size=case["vocab_size"], use_bias=case["use_bias"], add_out_norm=case["add_out_norm"],
        qk_dim_factor=case["qk_dim_factor"], v_dim_factor=case["v_dim_factor"],
        ffn_proj_factor=case["ffn_proj_factor"], weight_mode=case["weight_mode"],
        gate_soft_cap=15.0, output_logit_soft_cap=30.0, chunk_size=64, **BACKEND,
    )


def f64_state(model: torch.nn.Module) -> None:
    """Rebuilds every mLSTM backend of `model` with f64 state (transformers' config only
    admits f32 and 16-bit state dtypes)."""
    for module in model.modules():
        if isinstance(module, mLSTMBackend):
            module.__init__(dataclasses.replace(module.config, inference_state_dtype="float64"))


def make_large(case: dict, out: Path) -> None:
    cfg = large_config(case)
    model = xLSTMLarge(cfg).eval()
    randomize(model, case["seed"])
    round_to_dtype(model, case["dtype"])
    sd = {k: v.to(getattr(torch, case["dtype"])).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    # Run what was saved, as the package's loader would: in f32, and in f64 with f64 state.
    saved = load_file(str(out / "model.safetensors"))
    model.load_state_dict({k: v.to(torch.float32) for k, v in saved.items()})
    model64 = xLSTMLarge(cfg).double().eval()
    f64_state(model64)
    model64.load_state_dict({k: v.to(torch.float64) for k, v in saved.items()})
    ids = torch.randint(0, case["vocab_size"], (1, case["prompt_len"]), generator=torch.Generator().manual_seed(case["seed"] + 100))
    tensors, info = golden(model64, model, ids, case)
    info["gate_cap_share"], info["logit_cap_share"] = cap_shares(model, ids, case)
    info["case"] = case
    write_golden(out / "golden.safetensors", tensors, info)


def make_hf(case: dict, out: Path) -> None:
    tokenizer = make_tokenizer(out)
    cfg = xLSTMConfig(
        vocab_size=case["vocab_size"], hidden_size=case["embedding_dim"], embedding_dim=case["embedding_dim"],
        num_hidden_layers=case["num_blocks"], num_blocks=case["num_blocks"], num_heads=case["num_heads"],
        use_bias=case["use_bias"], add_out_norm=case["add_out_norm"], qk_dim_factor=case["qk_dim_factor"],
        v_dim_factor=case["v_dim_factor"], ffn_proj_factor=case["ffn_proj_factor"],
        weight_mode=case["weight_mode"], gate_soft_cap=15.0, output_logit_soft_cap=30.0, chunk_size=64,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=False, **BACKEND,
    )
    model = xLSTMForCausalLM(cfg).eval()
    randomize(model, case["seed"])
    model.generation_config.temperature = 0.7
    model.generation_config.top_k = 40
    model.generation_config.top_p = 0.9
    model.generation_config.do_sample = True
    model.generation_config.max_new_tokens = 48
    model.to(getattr(torch, case["dtype"])).save_pretrained(str(out), max_shard_size="150KB")
    # The golden outputs of the snapshot as downloaded, run in f32.
    loaded = xLSTMForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    loaded64 = xLSTMForCausalLM.from_pretrained(str(out), dtype=torch.float64).eval()
    f64_state(loaded64)
    ids = torch.tensor([tokenizer(PROMPT_TEXT)["input_ids"]])
    assert int(ids[0, 0]) == 0, "the tokenizer adds BOS"
    tensors, info = golden(loaded64, loaded, ids, case)
    info["gate_cap_share"], info["logit_cap_share"] = cap_shares(loaded, ids, case)
    info["prompt_text"] = PROMPT_TEXT
    info["case"] = case
    write_golden(out / "golden.safetensors", tensors, info)


def make_all(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    for case in CASES:
        out = root / case["name"]
        out.mkdir(parents=True)
        (make_hf if case["layout"] == "hf" else make_large)(case, out)
        print(f"{case['name']}: {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KiB", file=sys.stderr)
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    if total > SIZE_LIMIT:
        raise SystemExit(f"fixtures are {total} bytes, above the {SIZE_LIMIT}-byte budget")


def compare(a: Path, b: Path) -> int:
    bad = 0
    for fa in sorted(p for p in a.rglob("*") if p.is_file()):
        rel = fa.relative_to(a)
        fb = b / rel
        if not fb.exists():
            print(f"missing: {rel}")
            bad += 1
            continue
        if fa.read_bytes() == fb.read_bytes():
            continue
        if fa.suffix == ".safetensors":
            ta, tb = load_file(str(fa)), load_file(str(fb))
            if ta.keys() != tb.keys() or any(
                not torch.allclose(ta[k].float(), tb[k].float(), rtol=1e-4, atol=1e-5) for k in ta
            ):
                print(f"differs: {rel}")
                bad += 1
            else:
                print(f"within tolerance (bytes differ): {rel}")
        else:
            print(f"differs: {rel}")
            bad += 1
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "large")
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    args = ap.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_all(Path(tmp) / "large")
            bad = compare(Path(tmp) / "large", args.out)
        print("OK" if bad == 0 else f"{bad} files differ")
        return 1 if bad else 0
    make_all(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
