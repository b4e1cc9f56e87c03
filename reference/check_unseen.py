#!/usr/bin/env python3
"""Oracle check of moxe against the official Python implementations on configurations that the
repository's fixtures do not cover (dense NeurIPS stacks, MoxE with dense and with latent (MoLAE)
experts, xLSTM-Large in the package's and transformers' layouts).

    .venv/bin/python reference/check_unseen.py [name ...]
    .venv/bin/python reference/check_unseen.py --random N [--seed S]

Without --random: the fixed configs below (CONFIGS), or the named ones.  With --random N: N
configs drawn at random (seeded by S, default 0) from the space the builders support, in all five
families (dense stacks; MoxE with dense experts; MoxE with latent experts; xLSTM-Large in the
package's and in transformers' layouts).  Every option the official configs expose and moxe reads
is drawn: embedding dim, vocabulary, block / layer counts, sLSTM positions (a list or "all", a
block object left out when unused), mLSTM and sLSTM head counts, conv kernels (sLSTM 0 = none),
qkv block size, proj factors with their round-up multiple and direction, FFN activation or no FFN,
bias, post-blocks norm, tied embeddings (MoxE also as the xlstm-object alias), sLSTM layout,
plain xLSTMLMModel dumps; experts, top-k, router, expert type, modulation, gate bias, gamma, tau,
post-layers norm; latent groups, default rank and per-(layer, group, kind) ranks from 1 to D + 3;
xLSTM-Large heads, qk / v dim factors, FFN factor and multiple, biases, out norm, soft caps (none
included, package layout only: transformers' config refuses a null cap), weight_mode single /
fused, norm_eps and eps, tied embeddings (transformers).  A value equal to the package's default
is sometimes left out of config.json, so that both sides apply their defaults.  Config i is
drawn from random.Random(f"moxe-oracle:{S}:{i}") alone and named rand_s{S}_i{i}_<arch>_<summary>;
passing such a name (the summary may be omitted) re-runs that one config.  Each random config's
directory also holds random_config.json (what was drawn); the results go to
results_random_s{S}.json instead of results.json.

For each config: build the official model (random, seeded, norms/biases perturbed), save
config.json + model.safetensors under $MOXE_ORACLE_DIR/<name>/ (default /tmp/moxe-oracle) in
the layout moxe reads.  Latent models are the reference's `MoxEConfig(latent=...)`: the package's
blocks with each factored matrix (mLSTM proj_up, sLSTM ffn.proj_up, SwiGLU w1 / w3) computed as
A_i (B_g x) (moxe_ref/latent.py), so their oracle is as independent of the engine as the others.
Two id sequences per config (the "cases"):

  short  the config's own `seq` (17 to 40 ids)
  long   LONG_SEQ = 383 ids, which `moxe logits` feeds in chunks of 128, 128, 64, 32, 16, 8, 4, 2
         and 1 (engine_chunks): every chunk length it uses, ending in a 1-token chunk, which runs
         the recurrent decode kernels (short odd lengths end in one too: 33 = 32 + 1)

For each case: run the official forward on the whole sequence (f32 and f64) and
`moxe logits --dtype f32` ($MOXE_BIN, default target/release/moxe), and compare them position by
position.  Files per case in the config's directory: ids_<case>.txt, reference_<case>.safetensors
(ref_f32, ref_f64), moxe_<case>.safetensors, moxe_cmd_<case>.txt.
rel = max|moxe - ref| / max|ref| over all positions (as the engine's own tests measure). A
position fails above 1e-4, or above 10 times the official f32 forward's own error within 4
positions of it where that is larger (an ill-conditioned position, which the row then names:
the recurrent state's rounding errors spike at the same few positions in both implementations,
not always at exactly the same one); a failing row names
the first failing position and its engine chunk.
Exits non-zero when a config fails, is refused or crashes (in either case).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import traceback
from pathlib import Path

REF = Path(__file__).resolve().parent
sys.path.insert(0, str(REF))

import torch  # noqa: E402

torch.set_num_threads(1)

from safetensors.torch import load_file, save_file  # noqa: E402

from moxe_ref import (  # noqa: E402
    DenseXLSTMModel, MoxEConfig, MoxEModel, randomize_, save_engine_dir, save_plain_xlstm_dir, xlstm_object,
)
from moxe_ref.golden import routing_margin  # noqa: E402
from moxe_ref.latent import set_ranks_  # noqa: E402

OUT = Path(os.environ.get("MOXE_ORACLE_DIR", "/tmp/moxe-oracle"))
MOXE = os.environ.get("MOXE_BIN", str(REF.parent / "target" / "release" / "moxe"))
FLAG_REL = 1e-4
# Where the official code's own f32 forward is far from its f64 one (an ill-conditioned
# position: e.g. an mLSTM normaliser whose terms cancel), moxe in f32 may be off by up to this
# many times that much before a position fails. The bound depends on the oracle only.
CONDITION_FACTOR = 10.0
# The official f32 error taken is the largest within this many positions either side: rounding
# errors of the recurrent state spike at the same few positions in both implementations (a
# near-tie of a top-1 router, a cancelling normaliser) but not always at exactly the same one.
CONDITION_WINDOW = 4
# LoadOptions::default().prefill_chunk (src/runtime/model.rs), which `moxe logits` uses.
PREFILL_CHUNK = 128
LONG_SEQ = 3 * PREFILL_CHUNK - 1
CASES = ("short", "long")
# Smallest gap p_(k) - p_(k+1) of the router probabilities accepted (make_fixtures.py's value): a
# top-k choice that f32 rounding could flip would fail the comparison for no fault of the engine.
ROUTING_MARGIN_MIN = 1e-4
SEED_TRIES = 20


def engine_chunks(n: int) -> list[int]:
    """The chunk lengths `moxe logits` cuts n ids into (src/runtime/session.rs `chunk_lens`):
    PREFILL_CHUNK while at least that many remain, then decreasing powers of two."""
    out = []
    while n > 0:
        out.append(PREFILL_CHUNK if n >= PREFILL_CHUNK else 1 << (n.bit_length() - 1))
        n -= out[-1]
    return out


# ----------------------------------------------------------------------------- configs

def X(**kw):
    """xlstm object with extra per-block overrides."""
    mlstm_extra = kw.pop("mlstm_extra", {})
    slstm_extra = kw.pop("slstm_extra", {})
    ffn_extra = kw.pop("ffn_extra", {})
    drop_mlstm = kw.pop("drop_mlstm", False)
    drop_slstm = kw.pop("drop_slstm", False)
    x = xlstm_object(**kw)
    x["mlstm_block"]["mlstm"].update(mlstm_extra)
    x["slstm_block"]["slstm"].update(slstm_extra)
    x["slstm_block"]["feedforward"].update(ffn_extra)
    if drop_mlstm:
        del x["mlstm_block"]
    if drop_slstm:
        del x["slstm_block"]
    return x


# context_length = LONG_SEQ: the package's parallel mLSTM forward needs S <= context_length
# (reference/README.md), which limits nothing else.
CONFIGS = [
    # ---------------------------------------------------------------- dense NeurIPS stacks
    dict(name="dense_d40_slstm02_relu_bias", arch="dense",
         xlstm=X(embedding_dim=40, vocab_size=101, context_length=LONG_SEQ, mlstm_heads=2, slstm_heads=5,
                 conv1d_kernel_size=2, qkv_proj_blocksize=8, ffn_proj_factor=1.7, act_fn="relu", bias=True),
         num_blocks=3, slstm_at=[0, 2], tie=False, layout="vanilla", seq=33, seed=11),
    dict(name="dense_d48_allmlstm_nopostnorm_tied", arch="dense",
         xlstm=X(embedding_dim=48, vocab_size=257, context_length=LONG_SEQ, mlstm_heads=8, slstm_heads=4,
                 conv1d_kernel_size=3, qkv_proj_blocksize=8, mlstm_proj_factor=1.5, act_fn="gelu",
                 add_post_blocks_norm=False, drop_slstm=True),
         num_blocks=2, slstm_at=[], tie=True, layout="vanilla", seq=29, seed=12),
    dict(name="dense_d36_allslstm_noconv_relu2_cuda", arch="dense",
         xlstm=X(embedding_dim=36, vocab_size=199, context_length=LONG_SEQ, slstm_heads=3, conv1d_kernel_size=0,
                 ffn_proj_factor=1.0, act_fn="relu^2", drop_mlstm=True),
         num_blocks=3, slstm_at="all", tie=False, layout="cuda", seq=27, seed=13),
    dict(name="dense_d20_plain_selu_k5", arch="dense", plain=True,
         xlstm=X(embedding_dim=20, vocab_size=61, context_length=LONG_SEQ, mlstm_heads=4, slstm_heads=4,
                 conv1d_kernel_size=5, qkv_proj_blocksize=2, mlstm_proj_factor=2.5, ffn_proj_factor=2.0, act_fn="selu"),
         num_blocks=3, slstm_at=[1, 2], tie=False, layout="vanilla", seq=40, seed=14),
    dict(name="dense_d24_roundup16_sigmoid", arch="dense",
         xlstm=X(embedding_dim=24, vocab_size=83, context_length=LONG_SEQ, mlstm_heads=2, slstm_heads=2,
                 conv1d_kernel_size=4, qkv_proj_blocksize=4, act_fn="sigmoid",
                 mlstm_extra={"round_proj_up_to_multiple_of": 16},
                 ffn_extra={"round_proj_up_to_multiple_of": 8}),
         num_blocks=2, slstm_at=[0], tie=False, layout="vanilla", seq=24, seed=15),
    # ---------------------------------------------------------------- MoxE
    dict(name="moxe_xlstm_e6_k3_ppln_tied_bias", arch="moxe",
         top=dict(num_experts=6, top_k_experts=3, num_layers=1, router_type="conditioned_addition",
                  expert_type="xlstm", modulation_bias="standard", gate_bias=True, gamma=0.3,
                  difficulty_threshold=0.5, post_layers_norm=True, tie_weights=True),
         xlstm=X(embedding_dim=44, vocab_size=333, context_length=LONG_SEQ, mlstm_heads=4, slstm_heads=11,
                 conv1d_kernel_size=2, qkv_proj_blocksize=16, ffn_proj_factor=2.0, act_fn="relu", bias=True),
         layout="vanilla", seq=31, seed=21),
    dict(name="moxe_mlstm_e2_k1_stdrouter_nobias", arch="moxe",
         top=dict(num_experts=2, top_k_experts=1, num_layers=2, router_type="standard",
                  expert_type="mlstm", modulation_bias="standard", gate_bias=False, gamma=0.7,
                  difficulty_threshold=0.5, post_layers_norm=False, tie_weights=False),
         xlstm=X(embedding_dim=24, vocab_size=97, context_length=LONG_SEQ, mlstm_heads=1, slstm_heads=3,
                 conv1d_kernel_size=5, qkv_proj_blocksize=2, mlstm_proj_factor=3.0, slstm_conv1d_kernel_size=0,
                 act_fn="gelu"),
         layout="vanilla", seq=26, seed=22),
    dict(name="moxe_slstm_e4_k4_proportional", arch="moxe",
         top=dict(num_experts=4, top_k_experts=4, num_layers=2, router_type="conditioned_addition",
                  expert_type="slstm", modulation_bias="proportional", gate_bias=True, gamma=3.0,
                  difficulty_threshold=0.3, post_layers_norm=False, tie_weights=False),
         xlstm=X(embedding_dim=52, vocab_size=211, context_length=LONG_SEQ, mlstm_heads=2, slstm_heads=4,
                 conv1d_kernel_size=3, ffn_proj_factor=1.0, act_fn="sigmoid"),
         layout="vanilla", seq=22, seed=23),
    dict(name="moxe_mlp_e10_k3_masked_nopbn_cuda", arch="moxe",
         top=dict(num_experts=10, top_k_experts=3, num_layers=3, router_type="conditioned_addition",
                  expert_type="mlp", modulation_bias="masked", gate_bias=False, gamma=2.5,
                  difficulty_threshold=0.6, post_layers_norm=True, tie_weights=False),
         xlstm=X(embedding_dim=60, vocab_size=509, context_length=LONG_SEQ, mlstm_heads=4, slstm_heads=6,
                 conv1d_kernel_size=4, qkv_proj_blocksize=8, act_fn="swish", add_post_blocks_norm=False),
         layout="cuda", seq=20, seed=24),
    dict(name="moxe_xlstm_e2_k2_masked_relu2", arch="moxe",
         top=dict(num_experts=2, top_k_experts=2, num_layers=2, router_type="conditioned_addition",
                  expert_type="xlstm", modulation_bias="masked", gate_bias=True, gamma=1.2,
                  difficulty_threshold=0.4, post_layers_norm=False, tie_weights=True),
         xlstm=X(embedding_dim=18, vocab_size=77, context_length=LONG_SEQ, mlstm_heads=2, slstm_heads=1,
                 conv1d_kernel_size=3, qkv_proj_blocksize=4, mlstm_proj_factor=1.3, ffn_proj_factor=1.5,
                 act_fn="relu^2"),
         layout="vanilla", seq=25, seed=25),
    dict(name="moxe_xlstm_e4_k1_biggates_d45", arch="moxe",
         top=dict(num_experts=4, top_k_experts=1, num_layers=2, router_type="conditioned_addition",
                  expert_type="xlstm", modulation_bias="proportional", gate_bias=True, gamma=0.9,
                  difficulty_threshold=0.2, post_layers_norm=True, tie_weights=False),
         xlstm=X(embedding_dim=45, vocab_size=131, context_length=LONG_SEQ, mlstm_heads=3, slstm_heads=5,
                 conv1d_kernel_size=4, qkv_proj_blocksize=4, mlstm_proj_factor=4.0, act_fn="gelu"),
         layout="cuda", seq=36, seed=26, gate_scale=6.0, rk_scale=2.0),
    dict(name="moxe_alias_tie_xlstm_object", arch="moxe", alias_tie=True,
         top=dict(num_experts=4, top_k_experts=2, num_layers=1, router_type="standard",
                  expert_type="mlp", modulation_bias="standard", gate_bias=True, gamma=0.7,
                  difficulty_threshold=0.5, post_layers_norm=False, tie_weights=True),
         xlstm=X(embedding_dim=22, vocab_size=91, context_length=LONG_SEQ, mlstm_heads=2, slstm_heads=2,
                 conv1d_kernel_size=4, act_fn="swish"),
         layout="vanilla", seq=19, seed=27),
    dict(name="dense_d45_single_slstm_block", arch="dense",
         xlstm=X(embedding_dim=45, vocab_size=53, context_length=LONG_SEQ, mlstm_heads=3, slstm_heads=9,
                 conv1d_kernel_size=3, mlstm_proj_factor=4.0, act_fn="swish"),
         num_blocks=1, slstm_at=[0], tie=True, layout="vanilla", seq=30, seed=16, gate_scale=4.0),
    # ---------------------------------------------------------------- MoxE with latent experts (MoLAE)
    # latent.rank is the default rank; "ranks" overrides single (layer, group, kind) slots (full rank D
    # and rank 1 included), so moxe must read each rank from the tensor shapes.
    dict(name="latent_mlp_e6_k3_g3_d28_tied_cuda", arch="latent",
         top=dict(num_experts=6, top_k_experts=3, num_layers=2, router_type="conditioned_addition",
                  expert_type="mlp", modulation_bias="proportional", gate_bias=True, gamma=1.5,
                  difficulty_threshold=0.5, post_layers_norm=True, tie_weights=True),
         latent={"groups": 3, "rank": 11},
         ranks={(0, 0, "w1"): 28, (0, 2, "w3"): 3, (1, 1, "w1"): 19, (1, 2, "w1"): 1},
         xlstm=X(embedding_dim=28, vocab_size=163, context_length=LONG_SEQ, mlstm_heads=4, slstm_heads=7,
                 conv1d_kernel_size=3, qkv_proj_blocksize=4, act_fn="gelu"),
         layout="cuda", seq=27, seed=51),
    dict(name="latent_xlstm_e8_k3_g4_d36_bias_masked", arch="latent",
         top=dict(num_experts=8, top_k_experts=3, num_layers=2, router_type="conditioned_addition",
                  expert_type="xlstm", modulation_bias="masked", gate_bias=False, gamma=0.8,
                  difficulty_threshold=0.4, post_layers_norm=False, tie_weights=False),
         latent={"groups": 4, "rank": 9},
         ranks={(0, 1, "xlstm.proj_up"): 36, (1, 3, "ffn.proj_up"): 2},
         xlstm=X(embedding_dim=36, vocab_size=119, context_length=LONG_SEQ, mlstm_heads=3, slstm_heads=3,
                 conv1d_kernel_size=4, qkv_proj_blocksize=6, ffn_proj_factor=1.5, act_fn="swish", bias=True,
                 mlstm_extra={"round_proj_up_to_multiple_of": 8}),
         layout="vanilla", seq=37, seed=52),
    # ---------------------------------------------------------------- xLSTM-Large (package layout)
    dict(name="large_single_d48_nh3_nocapout_noout", arch="large",
         cfg=dict(embedding_dim=48, num_heads=3, num_blocks=2, vocab_size=150, use_bias=False, add_out_norm=False,
                  qk_dim_factor=0.25, v_dim_factor=0.75, ffn_proj_factor=2.0, ffn_round_up_to_multiple_of=16,
                  gate_soft_cap=10.0, output_logit_soft_cap=20.0, weight_mode="single", norm_eps=1e-5, eps=1e-5),
         seq=30, seed=31),
    dict(name="large_fused_d36_bias_round8", arch="large",
         cfg=dict(embedding_dim=36, num_heads=2, num_blocks=3, vocab_size=123, use_bias=True, add_out_norm=True,
                  qk_dim_factor=0.5, v_dim_factor=1.0, ffn_proj_factor=1.5, ffn_round_up_to_multiple_of=8,
                  gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="fused"),
         seq=35, seed=32),
    dict(name="large_single_nocaps", arch="large",
         cfg=dict(embedding_dim=32, num_heads=4, num_blocks=1, vocab_size=99, use_bias=False, add_out_norm=True,
                  qk_dim_factor=1.0, v_dim_factor=2.0, ffn_proj_factor=1.0, ffn_round_up_to_multiple_of=32,
                  gate_soft_cap=None, output_logit_soft_cap=None, weight_mode="single"),
         seq=21, seed=33),
    dict(name="large_fused_d40_nh5_nobias_gatecap_only", arch="large",
         cfg=dict(embedding_dim=40, num_heads=5, num_blocks=2, vocab_size=117, use_bias=False, add_out_norm=False,
                  qk_dim_factor=0.25, v_dim_factor=0.5, ffn_proj_factor=2.667, ffn_round_up_to_multiple_of=64,
                  gate_soft_cap=5.0, output_logit_soft_cap=None, weight_mode="fused"),
         seq=38, seed=34),
    # ---------------------------------------------------------------- xLSTM-Large (transformers layout)
    dict(name="hf_fused_d64_nh4_tied", arch="hf",
         cfg=dict(vocab_size=301, hidden_size=64, num_blocks=2, num_heads=4, qk_dim_factor=1.0, v_dim_factor=1.0,
                  ffn_proj_factor=2.0, ffn_round_up_to_multiple_of=64, use_bias=False, add_out_norm=True,
                  gate_soft_cap=8.0, output_logit_soft_cap=12.0, weight_mode="fused", tie_word_embeddings=True),
         seq=28, seed=41),
    dict(name="hf_single_d128_bias_noout", arch="hf",
         cfg=dict(vocab_size=97, hidden_size=128, num_blocks=1, num_heads=2, qk_dim_factor=0.5, v_dim_factor=0.5,
                  ffn_proj_factor=1.3, ffn_round_up_to_multiple_of=64, use_bias=True, add_out_norm=False,
                  gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="single", tie_word_embeddings=False),
         seq=23, seed=42),
    dict(name="hf_single_d80_tied", arch="hf",
         cfg=dict(vocab_size=143, hidden_size=80, num_blocks=2, num_heads=2, qk_dim_factor=0.25, v_dim_factor=0.5,
                  ffn_proj_factor=2.0, ffn_round_up_to_multiple_of=32, use_bias=False, add_out_norm=True,
                  gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="single", tie_word_embeddings=True),
         seq=17, seed=43),
]


# ----------------------------------------------------------------------------- random configs
# `--random N --seed S` draws N configs from the space the builders above support.  Config i of
# seed S is drawn from its own generator, random.Random(f"moxe-oracle:{S}:{i}"), and named
# rand_s{S}_i{i}_<arch>_<summary>: a name with that prefix, given as an argument, rebuilds exactly
# that config (the summary after the prefix is only for the reader).

RANDOM_NAME = re.compile(r"^rand_s(\d+)_i(\d+)(?:_|$)")
ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
# The package's defaults (reference/README.md, "Defaults when a field is missing"): a drawn value
# equal to one of these is sometimes left out of config.json, so that both sides use their default.
MLSTM_DEFAULTS = {"num_heads": 4, "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "proj_factor": 2.0,
                  "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64}
SLSTM_DEFAULTS = {"num_heads": 4, "conv1d_kernel_size": 4}
FFN_DEFAULTS = {"proj_factor": 1.3, "act_fn": "gelu", "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64}


def _divisors(n: int, at_most: int) -> list[int]:
    return [k for k in range(1, min(n, at_most) + 1) if n % k == 0]


def _up_dim(factor: float, d: int, multiple: int, up: bool) -> int:
    """The package's UpProjConfigMixin rule (xlstm/utils.py)."""
    m = factor * d / multiple
    return int((math.ceil(m) if up else math.floor(m)) * multiple)


def _drop_defaults(rng: random.Random, obj: dict, defaults: dict, p: float = 0.3) -> None:
    for k, v in defaults.items():
        if k in obj and obj[k] == v and rng.random() < p:
            del obj[k]


def _rand_up(rng: random.Random, d: int, factors, max_dim: int) -> tuple[dict, int]:
    """An up-projection (proj_factor, rounding multiple and direction) of d giving 1..max_dim."""
    while True:
        f = rng.choice(factors)
        mult = rng.choice([1, 2, 4, 8, 16, 32, 64])
        up = rng.random() < 0.75
        di = _up_dim(f, d, mult, up)
        if 1 <= di <= max_dim:
            return {"proj_factor": f, "round_proj_up_to_multiple_of": mult, "round_proj_up_dim_up": up}, di


def _rand_xlstm(rng: random.Random, need_mlstm: bool, need_slstm: bool, need_ffn: bool) -> dict:
    """An "xlstm" object: both blocks with every option the package's configs expose and moxe reads.
    Conv kernels are 2..6 (and 0, no conv, for the sLSTM): the package's CausalConv1d with kernel 1
    has pad 0 and its forward returns y[..., :-0], an empty tensor."""
    while True:
        d = rng.randrange(8, 65)
        sh = _divisors(d, 16)
        if len(sh) > 1 or rng.random() < 0.2:
            break
    up, di = _rand_up(rng, d, [0.5, 1.0, 1.3, 1.5, 2.0, 2.5, 3.0, 4.0], 256)
    mlstm = {"num_heads": rng.choice(_divisors(di, 8)),
             "conv1d_kernel_size": rng.randrange(2, 7),
             "qkv_proj_blocksize": rng.choice(_divisors(di, 16)), **up}
    slstm = {"num_heads": rng.choice(sh), "conv1d_kernel_size": rng.choice([0, 2, 3, 4, 4, 5, 6]),
             "backend": "vanilla", "bias_init": "powerlaw_blockdependent"}
    ffn = None
    if need_ffn or rng.random() < 0.85:
        ffn_up, _ = _rand_up(rng, d, [0.5, 1.0, 1.3, 1.5, 1.7, 2.0, 2.667, 3.0], 256)
        ffn = {"act_fn": rng.choice(ACT_FNS), **ffn_up}
        _drop_defaults(rng, ffn, FFN_DEFAULTS)
    _drop_defaults(rng, mlstm, MLSTM_DEFAULTS)
    _drop_defaults(rng, slstm, SLSTM_DEFAULTS)
    x = {"embedding_dim": d, "vocab_size": rng.randrange(16, 600), "context_length": LONG_SEQ,
         "add_post_blocks_norm": rng.random() < 0.7, "bias": rng.random() < 0.5, "dropout": 0.0, "pad_token_id": 1,
         "mlstm_block": {"mlstm": mlstm}, "slstm_block": {"slstm": slstm, "feedforward": ffn}}
    if not need_mlstm and rng.random() < 0.5:
        del x["mlstm_block"]
    if not need_slstm and rng.random() < 0.5:
        del x["slstm_block"]
    return x


def _rand_top(rng: random.Random) -> dict:
    e = rng.choice([2, 2, 4, 4, 6, 8, 10, 12])
    return dict(num_experts=e, top_k_experts=rng.randrange(1, e + 1), num_layers=rng.randrange(1, 4),
                router_type=rng.choice(["conditioned_addition", "conditioned_addition", "standard"]),
                expert_type=rng.choice(["xlstm", "mlstm", "slstm", "mlp"]),
                modulation_bias=rng.choice(["standard", "proportional", "masked"]), gate_bias=rng.random() < 0.6,
                gamma=round(rng.uniform(0.1, 3.0), 3), difficulty_threshold=round(rng.uniform(0.1, 0.8), 3),
                post_layers_norm=rng.random() < 0.5, tie_weights=rng.random() < 0.5)


def _latent_kinds(expert_type: str, g: int, groups: int) -> list[str]:
    if expert_type == "mlp":
        return ["w1", "w3"]
    if expert_type == "mlstm" or (expert_type == "xlstm" and g < groups // 2):
        return ["xlstm.proj_up"]
    return ["ffn.proj_up"]


def _rand_large_cfg(rng: random.Random, hf: bool) -> dict:
    while True:
        d = rng.randrange(16, 129, 8) if hf else rng.randrange(8, 97, 2)
        nh = rng.choice(_divisors(d, 8))
        fs = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
        qk = [f for f in fs if int(d * f) > 0 and int(d * f) % nh == 0]
        v = [f for f in fs if int(d * f) > 0 and int(d * f) % nh == 0]
        if qk and v:
            break
    cfg = dict(num_heads=nh, num_blocks=rng.randrange(1, 4), vocab_size=rng.randrange(16, 600),
               use_bias=rng.random() < 0.5, add_out_norm=rng.random() < 0.6,
               qk_dim_factor=rng.choice(qk), v_dim_factor=rng.choice(v),
               ffn_proj_factor=rng.choice([1.0, 1.3, 1.5, 2.0, 2.667, 2.6667, 3.0]),
               ffn_round_up_to_multiple_of=rng.choice([1, 8, 16, 32, 64]),
               # transformers' xLSTMConfig types both caps as float and refuses None
               gate_soft_cap=rng.choice([3.0, 5.0, 10.0, 15.0, 30.0] + ([] if hf else [None])),
               output_logit_soft_cap=rng.choice([5.0, 12.0, 20.0, 30.0, 50.0] + ([] if hf else [None])),
               weight_mode=rng.choice(["single", "fused"]),
               norm_eps=rng.choice([1e-6, 1e-5, 1e-3]), eps=rng.choice([1e-6, 1e-5, 1e-3]))
    if hf:
        cfg.update(hidden_size=d, tie_word_embeddings=rng.random() < 0.5)
    else:
        cfg.update(embedding_dim=d)
    return cfg


def random_config(seed: int, index: int) -> dict:
    """Config `index` of `--random ... --seed seed`: a config of one of the five families, every
    option drawn.  The same (seed, index) always gives the same config (and the same weights)."""
    rng = random.Random(f"moxe-oracle:{seed}:{index}")
    arch = rng.choice(["dense", "moxe", "moxe", "latent", "large", "hf"])
    c = dict(arch=arch, seq=rng.randrange(17, 41), seed=seed * 1_000_000 + index * SEED_TRIES + 1)
    tag = ""
    if arch in ("dense", "moxe", "latent"):
        c.update(gate_scale=rng.choice([1.0, 1.0, 2.0, 4.0]), rk_scale=rng.choice([1.0, 1.0, 2.0]),
                 layout=rng.choice(["vanilla", "cuda"]))
    if arch == "dense":
        nb = rng.randrange(1, 5)
        kind = rng.choice(["mixed", "mixed", "mlstm", "slstm"])
        if kind == "mixed" and nb > 1:
            at = sorted(rng.sample(range(nb), rng.randrange(1, nb)))
        elif kind == "slstm" or (kind == "mixed" and rng.random() < 0.5):
            at = "all" if rng.random() < 0.5 else list(range(nb))
        else:
            at = []
        has_s, has_m = at != [], at != "all" and len(at) < nb
        c.update(xlstm=_rand_xlstm(rng, need_mlstm=has_m, need_slstm=has_s, need_ffn=False), num_blocks=nb,
                 slstm_at=at, tie=rng.random() < 0.5, plain=rng.random() < 0.3)
        tag = f"d{c['xlstm']['embedding_dim']}_nb{nb}_s{'all' if at == 'all' else ''.join(map(str, at))}"
    elif arch in ("moxe", "latent"):
        top = _rand_top(rng)
        e, et = top["num_experts"], top["expert_type"]
        c.update(top=top, xlstm=_rand_xlstm(rng, True, True, need_ffn=arch == "latent" and et in ("xlstm", "slstm")))
        c["alias_tie"] = top["tie_weights"] and rng.random() < 0.3
        d = c["xlstm"]["embedding_dim"]
        tag = f"{et}_e{e}_k{top['top_k_experts']}_l{top['num_layers']}_d{d}"
        if arch == "latent":
            gs = [g for g in range(1, e + 1) if e % g == 0 and (et != "xlstm" or g % 2 == 0)]
            groups = rng.choice(gs)
            c["latent"] = {"groups": groups, "rank": rng.randrange(1, d + 1)}
            slots = [(l, g, k) for l in range(top["num_layers"]) for g in range(groups)
                     for k in _latent_kinds(et, g, groups)]
            picked = rng.sample(slots, rng.randrange(0, min(len(slots), 4) + 1))
            # ranks 1 .. D, and now and then above D (r >= 1 is all that docs/LATENT_FORMAT.md asks)
            c["ranks"] = {s: rng.choice([1, d, d + 3, rng.randrange(1, d + 1), rng.randrange(1, d + 1)])
                          for s in picked}
            tag += f"_g{groups}"
    else:
        c["cfg"] = _rand_large_cfg(rng, arch == "hf")
        k = c["cfg"]
        d = k["hidden_size"] if arch == "hf" else k["embedding_dim"]
        tag = f"{k['weight_mode']}_d{d}_nh{k['num_heads']}_nb{k['num_blocks']}"
        if arch == "large":
            # leave out of config.json some fields whose value is the dataclass default
            c["omit"] = [f for f, v in (("use_bias", False), ("add_out_norm", True), ("norm_eps", 1e-6),
                                        ("eps", 1e-6), ("qk_dim_factor", 0.5), ("v_dim_factor", 1.0),
                                        ("ffn_proj_factor", 2.6667), ("ffn_round_up_to_multiple_of", 64),
                                        ("gate_soft_cap", 15.0), ("output_logit_soft_cap", 30.0),
                                        ("weight_mode", "single"))
                         if k[f] == v and rng.random() < 0.5]
    c["name"] = f"rand_s{seed}_i{index}_{arch}_{tag}"
    return c


# ----------------------------------------------------------------------------- helpers

def rand_ids(vocab, n, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed + 999))


def case_ids(vocab, c, seed):
    """The ids of each case: {"short": the config's seq ids, "long": LONG_SEQ ids}."""
    return {"short": rand_ids(vocab, c["seq"], seed), "long": rand_ids(vocab, LONG_SEQ, seed)}


def run_moxe(d: Path, case: str, ids: list[int]):
    out = d / f"moxe_{case}.safetensors"
    if out.exists():
        out.unlink()
    cmd = [MOXE, "logits", "--model", str(d), "--ids", ",".join(map(str, ids)), "--out", str(out),
           "--dtype", "f32", "--force"]
    env = dict(os.environ, LP_NUM_THREADS="1")
    p = subprocess.run(["timeout", "300"] + cmd, capture_output=True, text=True, env=env)
    (d / f"moxe_cmd_{case}.txt").write_text(" ".join(cmd) + "\n")
    if p.returncode != 0:
        return None, f"rc={p.returncode}: " + (p.stderr.strip() or p.stdout.strip())[-1500:]
    return load_file(str(out))["logits"], None


def compare(got, want):
    got, want = got.double(), want.double()
    if got.shape != want.shape:
        return None, None, f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
    diff = (got - want).abs()
    return float(diff.max()), float(diff.max() / want.abs().max()), None


def try_double(fn, *args):
    """fn(*args), or None where the official code fails in float64."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------- NeurIPS (dense / moxe / latent)

def build_neurips(c, seed):
    x = copy.deepcopy(c["xlstm"])
    if c["arch"] == "dense":
        x["num_blocks"] = c["num_blocks"]
        x["slstm_at"] = c["slstm_at"]
        x["tie_weights"] = c["tie"]
        cfg = MoxEConfig(xlstm=x, model_type="xlstm", tie_weights=c["tie"])
        model = DenseXLSTMModel(cfg)
    else:
        cfg = MoxEConfig(xlstm=x, model_type="moxe", latent=c.get("latent"), **c["top"])
        model = MoxEModel(cfg)
        if "ranks" in c:
            set_ranks_(model, c["ranks"])
    randomize_(model, seed, gate_scale=c.get("gate_scale", 1.0), rk_scale=c.get("rk_scale", 1.0))
    return model.eval()


@torch.no_grad()
def ref_neurips(model, ids):
    if isinstance(model, MoxEModel):
        logits, aux = model(ids[None])
        margin = min(routing_margin(t.router_probs, model.cfg.top_k_experts) for t in aux.layers)
        return logits[0], margin
    return model(ids[None])[0], None


def ref_neurips_f64(model, ids):
    return ref_neurips(copy.deepcopy(model).double(), ids)[0]


def check_neurips(c):
    d = OUT / c["name"]
    d.mkdir(parents=True, exist_ok=True)
    vocab = c["xlstm"]["vocab_size"]
    # pick a seed whose routing is not near a tie in either case (as the fixtures do), else the one
    # of SEED_TRIES seeds farthest from a tie (a dense model has no routing: its first seed)
    tries = []
    for seed in range(c["seed"], c["seed"] + SEED_TRIES):
        model = build_neurips(c, seed)
        ids = case_ids(vocab, c, seed)
        refs = {case: ref_neurips(model, x) for case, x in ids.items()}
        margin = min((m for _, m in refs.values() if m is not None), default=None)
        tries.append((margin, seed, model, ids, refs))
        if margin is None or margin > ROUTING_MARGIN_MIN:
            break
    margin, seed, model, ids, refs = max(tries, key=lambda t: t[0])
    if c.get("plain"):
        save_plain_xlstm_dir(model, d)
    else:
        save_engine_dir(model, d, slstm_layout=c["layout"])
    if c.get("alias_tie"):
        # tie_weights only as the xlstm-object alias (MODEL.md section 7), top-level key absent
        cj = json.loads((d / "config.json").read_text())
        cj.pop("tie_weights")
        cj["xlstm"]["tie_weights"] = True
        (d / "config.json").write_text(json.dumps(cj, indent=2) + "\n")
        from moxe_ref import load_engine_dir
        with torch.no_grad():
            re = load_engine_dir(d)(ids["short"][None])[0][0]
        assert torch.equal(re, refs["short"][0]), "reference reads the alias differently"
    cases = {case: (x, refs[case][0], try_double(ref_neurips_f64, model, x)) for case, x in ids.items()}
    return d, cases, {"seed": seed, "routing_margin": margin}


# ----------------------------------------------------------------------------- xLSTM-Large

def check_large(c):
    from make_large_fixtures import BACKEND, f64_state, randomize
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    d = OUT / c["name"]
    d.mkdir(parents=True, exist_ok=True)
    cfg = xLSTMLargeConfig(chunk_size=64, **BACKEND, **c["cfg"])
    model = xLSTMLarge(cfg).eval()
    randomize(model, c["seed"])
    sd = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    cj = dataclasses.asdict(cfg)
    for k in c.get("omit", ()):  # random mode: fields left to the dataclass default
        del cj[k]
    (d / "config.json").write_text(json.dumps(cj, indent=2) + "\n")
    m64 = xLSTMLarge(cfg).double().eval()
    f64_state(m64)
    m64.load_state_dict({k: v.double() for k, v in sd.items()})

    @torch.no_grad()
    def logits(m, x):
        o = m(x[None])
        return (o[0] if isinstance(o, tuple) else o)[0]

    ids = case_ids(c["cfg"]["vocab_size"], c, c["seed"])
    return d, {case: (x, logits(model, x), logits(m64, x)) for case, x in ids.items()}, {}


def check_hf(c):
    from make_large_fixtures import BACKEND, f64_state, randomize
    from transformers import xLSTMConfig, xLSTMForCausalLM
    from transformers.models.xlstm import modeling_xlstm as mx

    # transformers 5.x's _init_weights crashes for weight_mode "fused" (it copies a (2NH,) tensor into
    # the first NH entries of the fused [i|f] gate bias).  Every parameter is re-randomised below, so
    # skip the init where it fails.
    if not getattr(mx.xLSTMPreTrainedModel, "_oracle_patched", False):
        orig = mx.xLSTMPreTrainedModel._init_weights

        def _init_weights(self, module):
            try:
                orig(self, module)
            except (RuntimeError, TypeError):
                pass
        mx.xLSTMPreTrainedModel._init_weights = _init_weights
        mx.xLSTMPreTrainedModel._oracle_patched = True

    d = OUT / c["name"]
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(c["cfg"])
    kw["embedding_dim"] = kw["hidden_size"]
    kw["num_hidden_layers"] = kw["num_blocks"]
    cfg = xLSTMConfig(chunk_size=64, bos_token_id=0, pad_token_id=1, eos_token_id=2, **BACKEND, **kw)
    model = xLSTMForCausalLM(cfg).eval()
    randomize(model, c["seed"])
    # transformers' xLSTMForCausalLM declares no tied weights: with tie_word_embeddings true it still
    # has (and saves) its own lm_head.  Record what the official code does.
    tied_in_memory = model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    model.save_pretrained(str(d))
    from safetensors import safe_open
    keys = set()
    for f in d.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            keys |= set(fh.keys())
    loaded = xLSTMForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    l64 = xLSTMForCausalLM.from_pretrained(str(d), dtype=torch.float64).eval()
    f64_state(l64)

    @torch.no_grad()
    def logits(m, x):
        return m(input_ids=x[None], use_cache=False).logits[0]

    ids = case_ids(kw["vocab_size"], c, c["seed"])
    cases = {case: (x, logits(loaded, x), logits(l64, x)) for case, x in ids.items()}
    extra = {"loaded_vs_inmemory_maxabs": float((logits(model, ids["short"]) - cases["short"][1]).abs().max()),
             "official_tied_in_memory": tied_in_memory, "lm_head_in_file": "lm_head.weight" in keys}
    return d, cases, extra


# ----------------------------------------------------------------------------- driver

def check_case(d: Path, case: str, ids, ref32, ref64) -> dict:
    """Runs moxe on one case's ids and compares its logits with the reference's, position by position."""
    ids = [int(i) for i in ids]
    (d / f"ids_{case}.txt").write_text(",".join(map(str, ids)) + "\n")
    save_file({"ref_f32": ref32.float().contiguous(),
               **({"ref_f64": ref64.double().contiguous()} if ref64 is not None else {})},
              str(d / f"reference_{case}.safetensors"))
    res = {"len": len(ids), "logit_scale": float(ref32.abs().max())}
    if ref64 is not None:
        res["official_f32_vs_f64_rel"] = compare(ref32, ref64)[1]
    got, err = run_moxe(d, case, ids)
    if err:
        return {**res, "status": "REFUSED/CRASH", "error": err}
    want = ref64 if ref64 is not None else ref32
    a, r, e = compare(got, want)
    if e:
        return {**res, "status": "FAIL", "error": e}
    scale = want.double().abs().max()
    per_tok = ((got.double() - want.double()).abs().amax(-1) / scale).tolist()
    # Per position: FLAG_REL, or CONDITION_FACTOR times the official f32 forward's own error
    # around it (CONDITION_WINDOW).
    own = ((ref32.double() - want.double()).abs().amax(-1) / scale).tolist()
    near = [max(own[max(0, t - CONDITION_WINDOW):t + CONDITION_WINDOW + 1]) for t in range(len(own))]
    tol = [max(FLAG_REL, CONDITION_FACTOR * o) for o in near]
    bad = [t for t, (v, b) in enumerate(zip(per_tok, tol)) if v > b]
    res.update(max_abs=a, max_rel=r, vs="f64" if ref64 is not None else "f32", max_rel_vs_f32=compare(got, ref32)[1],
               argmax_agree=bool((got.argmax(-1) == want.argmax(-1)).all()), status="FAIL" if bad else "PASS")
    if r > FLAG_REL and not bad:
        pos = max(range(len(per_tok)), key=lambda t: per_tok[t])
        res["ill_conditioned"] = {"pos": pos, "rel": per_tok[pos], "official_f32_rel": near[pos]}
    if bad:
        pos = bad[0]
        starts = [0, *itertools.accumulate(engine_chunks(len(ids)))]
        k = next(k for k in range(len(starts) - 1) if pos < starts[k + 1])
        res["first_bad"] = {"pos": pos, "id": ids[pos], "rel": per_tok[pos], "chunk": [starts[k], starts[k + 1]]}
        res["per_token_rel"] = [round(v, 6) for v in per_tok]
    return res


def note(row) -> str:
    if "error" in row:
        return row["error"]
    notes = []
    for case in CASES:
        r = row[case]
        if "error" in r:
            notes.append(f"{case}: {r['error']}")
        elif "first_bad" in r:
            b = r["first_bad"]
            notes.append(f"{case}: first above its bound at pos {b['pos']} (id {b['id']}, rel {b['rel']:.2e}) "
                         f"in chunk [{b['chunk'][0]}, {b['chunk'][1]})")
        elif "ill_conditioned" in r:
            c = r["ill_conditioned"]
            notes.append(f"{case}: pos {c['pos']} ill-conditioned (rel {c['rel']:.2e}; the official f32 "
                         f"forward's own {c['official_f32_rel']:.2e})")
    return "; ".join(notes)


def select(names, n_random, seed):
    """The configs to run: the fixed list (or the named ones), or `n_random` drawn for `seed`; a
    name rand_s{S}_i{I}[_...] rebuilds that random config."""
    if n_random is not None:
        return [random_config(seed, i) for i in range(n_random)]
    out = []
    for name in names:
        m = RANDOM_NAME.match(name)
        if m:
            out.append(random_config(int(m.group(1)), int(m.group(2))))
    fixed = [c for c in CONFIGS if not names or c["name"] in names]
    return fixed + out


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="moxe vs the official code on configs no fixture has")
    ap.add_argument("names", nargs="*", help="fixed config names, or rand_s{S}_i{I}[_...] (default: every fixed config)")
    ap.add_argument("--random", type=int, metavar="N", help="check N configs drawn at random instead")
    ap.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --random (default 0)")
    args = ap.parse_args(argv)
    if args.random is not None and args.names:
        ap.error("--random takes no config names (re-run one random config by its name alone)")
    configs = select(args.names, args.random, args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"long case: {LONG_SEQ} ids, fed in chunks {engine_chunks(LONG_SEQ)}", flush=True)
    rows = []
    for c in configs:
        if c["name"].startswith("rand_"):
            shown = {**c, **({"ranks": [[*k, r] for k, r in c["ranks"].items()]} if "ranks" in c else {})}
            print("config " + json.dumps(shown), flush=True)
            (OUT / c["name"]).mkdir(parents=True, exist_ok=True)
            (OUT / c["name"] / "random_config.json").write_text(json.dumps(shown, indent=2) + "\n")
        row = {"name": c["name"], "arch": c["arch"]}
        try:
            fn = {"dense": check_neurips, "moxe": check_neurips, "latent": check_neurips,
                  "large": check_large, "hf": check_hf}[c["arch"]]
            d, cases, extra = fn(c)
            row.update(extra)
            for case, (ids, ref32, ref64) in cases.items():
                row[case] = check_case(d, case, ids, ref32, ref64)
            bad = {}
            for case in CASES:
                if row[case]["status"] != "PASS":
                    bad.setdefault(row[case]["status"], []).append(case)
            row["status"] = " ".join(f"{st}({','.join(cs)})" for st, cs in bad.items()) or "PASS"
        except Exception as e:  # noqa: BLE001
            row["status"] = "PY-ERROR"
            row["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    results = "results.json" if args.random is None else f"results_random_s{args.seed}.json"
    (OUT / results).write_text(json.dumps(rows, indent=2) + "\n")
    w = max([40] + [len(r["name"]) for r in rows])
    print("\n%-*s %-6s %-25s %10s %10s %s" % (w, "config", "arch", "status", "short_rel", "long_rel", "note"))
    for r in rows:
        rel = [f"{r[case]['max_rel']:.2e}" if "max_rel" in r.get(case, {}) else "-" for case in CASES]
        print("%-*s %-6s %-25s %10s %10s %s" % (w, r["name"], r["arch"], r["status"], *rel, note(r)[:200]))
    return int(any(r["status"] != "PASS" for r in rows))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
