"""Model configuration: the engine's config.json (MODEL.md section 7) and its mapping onto the
official ``xlstm`` package's config dataclasses.

The JSON is kept as plain dicts (``MoxEConfig.xlstm`` is the ``"xlstm"`` object verbatim), so a
config read from a file is written back unchanged apart from the fields we own.  Package config
objects are always built fresh (the package mutates them in ``__post_init__``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from xlstm import (
    FeedForwardConfig,
    mLSTMBlockConfig,
    mLSTMLayerConfig,
    sLSTMBlockConfig,
    sLSTMLayerConfig,
    xLSTMBlockStackConfig,
    xLSTMLMModelConfig,
)

ROUTER_TYPES = ("conditioned_addition", "standard")
EXPERT_TYPES = ["xlstm", "mlstm", "slstm", "mlp"]  # extended by blocks.register_expert_type
LATENT_EXPERT_TYPES = ("xlstm", "mlstm", "slstm", "mlp")  # expert types that have a latent form
MODULATIONS = ("standard", "proportional", "masked")
ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
SLSTM_LAYOUTS = ("vanilla", "cuda")


class ConfigError(ValueError):
    pass


def _public_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}


# Fields of the xlstm object that are ours / computed by the package and must not be forwarded.
_NEVER_FORWARD = {"embedding_dim", "hidden_size", "dropout", "bias", "context_length", "backend"}


def _forward_known(cls, src: dict, overrides: dict) -> dict:
    """Keep only public dataclass fields of ``cls`` from ``src`` (unknown / internal fields are
    accepted and ignored, like the engine does), then apply ``overrides``."""
    keep = _public_fields(cls) - _NEVER_FORWARD
    out = {k: copy.deepcopy(v) for k, v in src.items() if k in keep}
    out.update(overrides)
    return out


def mlstm_block_config(x: dict) -> Optional[mLSTMBlockConfig]:
    mb = x.get("mlstm_block")
    if mb is None:
        return None
    m = mb.get("mlstm", {})
    return mLSTMBlockConfig(mlstm=mLSTMLayerConfig(**_forward_known(mLSTMLayerConfig, m, {})))


def slstm_block_config(x: dict) -> Optional[sLSTMBlockConfig]:
    sb = x.get("slstm_block")
    if sb is None:
        return None
    s = sb.get("slstm", {})
    layout = s.get("backend", "vanilla")
    if layout not in SLSTM_LAYOUTS:
        raise ConfigError(f"slstm backend must be one of {SLSTM_LAYOUTS}, got {layout!r}")
    # The reference always RUNS the vanilla backend (CPU); "backend" in a file only names the
    # layout of the stored recurrent kernel / bias (see export.py).
    scfg = sLSTMLayerConfig(**_forward_known(sLSTMLayerConfig, s, {"backend": "vanilla"}))
    ff = sb.get("feedforward", None)
    if ff is None and "feedforward" in sb:
        ffcfg = None
    else:
        ffcfg = FeedForwardConfig(**_forward_known(FeedForwardConfig, ff or {}, {}))
        if ffcfg.act_fn not in ACT_FNS:
            raise ConfigError(f"unknown act_fn {ffcfg.act_fn!r}")
    return sLSTMBlockConfig(slstm=scfg, feedforward=ffcfg)


def stack_config(x: dict, num_blocks: int, slstm_at, add_post_blocks_norm: Optional[bool] = None) -> xLSTMBlockStackConfig:
    """An ``xLSTMBlockStackConfig`` for the given xlstm object."""
    return xLSTMBlockStackConfig(
        mlstm_block=mlstm_block_config(x),
        slstm_block=slstm_block_config(x),
        context_length=int(x.get("context_length", -1)),
        num_blocks=num_blocks,
        embedding_dim=int(x["embedding_dim"]),
        add_post_blocks_norm=bool(x.get("add_post_blocks_norm", True) if add_post_blocks_norm is None else add_post_blocks_norm),
        bias=bool(x.get("bias", False)),
        dropout=float(x.get("dropout", 0.0)),
        slstm_at=copy.deepcopy(slstm_at),
    )


def lm_model_config(x: dict, tie_weights: bool) -> xLSTMLMModelConfig:
    """An ``xLSTMLMModelConfig`` (dense model) for the given xlstm object."""
    slstm_at = x.get("slstm_at", [])
    return xLSTMLMModelConfig(
        mlstm_block=mlstm_block_config(x),
        slstm_block=slstm_block_config(x),
        context_length=int(x.get("context_length", -1)),
        num_blocks=int(x.get("num_blocks", 1)),
        embedding_dim=int(x["embedding_dim"]),
        add_post_blocks_norm=bool(x.get("add_post_blocks_norm", True)),
        bias=bool(x.get("bias", False)),
        dropout=float(x.get("dropout", 0.0)),
        slstm_at=copy.deepcopy(slstm_at),
        vocab_size=int(x["vocab_size"]),
        tie_weights=bool(tie_weights),
    )


def proj_up_dim(factor: float, d: int, multiple: int = 64) -> int:
    """The package's ``UpProjConfigMixin`` rule: ceil(factor * d / 64) * 64."""
    return int(math.ceil(factor * d / multiple) * multiple)


@dataclass
class MoxEConfig:
    """config.json of MODEL.md section 7 (``model_type`` "moxe" or "xlstm")."""

    xlstm: dict
    model_type: str = "moxe"
    num_experts: int = 4
    top_k_experts: int = 2
    num_layers: int = 1
    router_type: str = "conditioned_addition"
    expert_type: str = "xlstm"
    modulation_bias: str = "standard"
    gate_bias: bool = True
    gamma: float = 0.7
    difficulty_threshold: float = 0.5
    post_layers_norm: bool = False
    tie_weights: bool = False
    # latent experts (LATENT.md, docs/LATENT_FORMAT.md): {"groups": G} marks a latent model; None = dense experts
    latent: Optional[dict] = None
    # fields we do not interpret (eps, moe_layer_type, training-only ...): kept for round-trips
    extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- derived
    @property
    def embedding_dim(self) -> int:
        return int(self.xlstm["embedding_dim"])

    @property
    def vocab_size(self) -> int:
        return int(self.xlstm["vocab_size"])

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // 2

    @property
    def slstm_layout(self) -> str:
        return self.xlstm.get("slstm_block", {}).get("slstm", {}).get("backend", "vanilla")

    @property
    def tied(self) -> bool:
        return bool(self.tie_weights)

    @property
    def is_latent(self) -> bool:
        return self.model_type == "moxe" and self.latent is not None

    @property
    def latent_groups(self) -> int:
        return int(self.latent["groups"])

    @property
    def expert_factory_name(self) -> str:
        """Key into ``blocks.EXPERT_FACTORIES``: the expert_type, or "latent" for a latent model."""
        return "latent" if self.is_latent else self.expert_type

    # ---------------------------------------------------------------- validation
    def validate(self) -> "MoxEConfig":
        x = self.xlstm
        for key in ("embedding_dim", "vocab_size"):
            if key not in x:
                raise ConfigError(f"xlstm.{key} is required")
        if self.model_type == "xlstm":
            return self
        if self.model_type != "moxe":
            raise ConfigError(f"model_type must be 'moxe' or 'xlstm', got {self.model_type!r}")
        if self.num_experts < 2 or self.num_experts % 2:
            raise ConfigError("num_experts must be even and >= 2")
        if not 1 <= self.top_k_experts <= self.num_experts:
            raise ConfigError("top_k_experts must be in 1..num_experts")
        if self.num_layers < 1:
            raise ConfigError("num_layers must be >= 1")
        if self.router_type not in ROUTER_TYPES:
            raise ConfigError(f"router_type must be one of {ROUTER_TYPES}")
        if self.expert_type not in EXPERT_TYPES:
            raise ConfigError(f"expert_type must be one of {EXPERT_TYPES}")
        if self.modulation_bias not in MODULATIONS:
            raise ConfigError(f"modulation_bias must be one of {MODULATIONS}")
        if "mlstm_block" not in x or "slstm_block" not in x:
            raise ConfigError("a MoxE model needs xlstm.mlstm_block and xlstm.slstm_block (the mixer uses both)")
        if self.expert_type == "latent":
            raise ConfigError("latent experts are selected by the top-level 'latent' object, not by expert_type")
        if self.latent is not None:
            self._validate_latent()
        return self

    def _validate_latent(self) -> None:
        lat = self.latent
        if not isinstance(lat, dict) or "groups" not in lat:
            raise ConfigError("'latent' must be an object with 'groups'")
        g = lat["groups"]
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"latent.groups must be an integer >= 1, got {g!r}")
        if self.num_experts % g:
            raise ConfigError(f"latent.groups ({g}) must divide num_experts ({self.num_experts})")
        if self.expert_type not in LATENT_EXPERT_TYPES:
            raise ConfigError(f"latent experts exist for expert_type {LATENT_EXPERT_TYPES}, not {self.expert_type!r}")
        if self.expert_type == "xlstm" and g % 2:
            raise ConfigError("latent xlstm experts: a group may not mix mLSTM and sLSTM experts, so groups must be even")
        r = lat.get("rank")
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise ConfigError(f"latent.rank must be an integer >= 1, got {r!r}")

    # ---------------------------------------------------------------- json
    _TOP = (
        "model_type", "num_experts", "top_k_experts", "num_layers", "router_type", "expert_type",
        "modulation_bias", "gate_bias", "gamma", "difficulty_threshold", "post_layers_norm",
        "tie_weights",
    )

    @classmethod
    def from_dict(cls, d: dict) -> "MoxEConfig":
        d = copy.deepcopy(d)
        if "xlstm" not in d:
            raise ConfigError("config needs an 'xlstm' object")
        kw: dict[str, Any] = {"xlstm": d.pop("xlstm")}
        mt = d.get("model_type", "moxe")
        if mt != "xlstm" and "latent" in d:
            kw["latent"] = d.pop("latent")
        for k in cls._TOP:
            if k in d:
                kw[k] = d.pop(k)
        if mt == "xlstm" and "tie_weights" not in kw:
            kw["tie_weights"] = bool(kw["xlstm"].get("tie_weights", False))
        elif "tie_weights" not in kw and "tie_weights" in kw["xlstm"]:
            kw["tie_weights"] = bool(kw["xlstm"]["tie_weights"])  # alias
        kw["extra"] = d
        return cls(**kw).validate()

    @classmethod
    def from_json(cls, path) -> "MoxEConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        if self.model_type == "xlstm":
            out = {"model_type": "xlstm"}
        else:
            out = {k: getattr(self, k) for k in self._TOP}
            if self.latent is not None:
                out["latent"] = copy.deepcopy(self.latent)
        out.update(copy.deepcopy(self.extra))
        out["xlstm"] = copy.deepcopy(self.xlstm)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def with_slstm_layout(self, layout: str) -> "MoxEConfig":
        c = copy.deepcopy(self)
        c.xlstm.setdefault("slstm_block", {}).setdefault("slstm", {})["backend"] = layout
        return c


def xlstm_object(
    embedding_dim: int,
    vocab_size: int,
    context_length: int = 64,
    mlstm_heads: int = 2,
    slstm_heads: int = 2,
    conv1d_kernel_size: int = 4,
    qkv_proj_blocksize: int = 4,
    mlstm_proj_factor: float = 2.0,
    ffn_proj_factor: float = 1.3,
    act_fn: str = "swish",
    add_post_blocks_norm: bool = True,
    bias: bool = False,
    slstm_conv1d_kernel_size: Optional[int] = None,
    **extra,
) -> dict:
    """Helper building an ``"xlstm"`` object in the MODEL.md section 7 layout."""
    x = {
        "embedding_dim": embedding_dim,
        "vocab_size": vocab_size,
        "context_length": context_length,
        "add_post_blocks_norm": add_post_blocks_norm,
        "bias": bias,
        "dropout": 0.0,
        "pad_token_id": 1,
        "mlstm_block": {"mlstm": {
            "num_heads": mlstm_heads, "conv1d_kernel_size": conv1d_kernel_size,
            "qkv_proj_blocksize": qkv_proj_blocksize, "proj_factor": mlstm_proj_factor}},
        "slstm_block": {
            "slstm": {"num_heads": slstm_heads,
                      "conv1d_kernel_size": conv1d_kernel_size if slstm_conv1d_kernel_size is None else slstm_conv1d_kernel_size,
                      "backend": "vanilla", "bias_init": "powerlaw_blockdependent"},
            "feedforward": {"proj_factor": ffn_proj_factor, "act_fn": act_fn}},
    }
    x.update(extra)
    return x
