"""MoxE layer and model (MODEL.md sections 1-3), and the dense xLSTM model (model_type "xlstm").

Full-sequence ``forward`` uses the package's forward (parallel mLSTM form, vanilla sLSTM loop);
``step`` runs one token with explicit state through the package's ``step`` methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from xlstm import xLSTMLMModel
from xlstm.components.ln import LayerNorm

from .blocks import EXPERT_FACTORIES, ExpertFactory, build_mixer
from .config import MoxEConfig, lm_model_config
from .gate import LOSS_NAMES, Routing, Telemetry, build_gate, combine, compute_telemetry
from .state import clone_state, stack_step, zero_stack_state

# Training objective: CE + 0.001 L_z + 0.01 L_lb + 0.01 L_d + 0.01 L_g (each averaged over layers)
DEFAULT_AUX_WEIGHTS = {"L_z": 0.001, "L_lb": 0.01, "L_d": 0.01, "L_g": 0.01}


@dataclass
class LayerTrace:
    mixer: torch.Tensor  # (B, S, D) u
    out: torch.Tensor  # (B, S, D)


@dataclass
class MoxEAux:
    """Auxiliary output of a MoxE forward."""

    losses: dict[str, torch.Tensor]  # L_d, L_g, L_z, L_lb averaged over layers (scalars)
    layers: list[Telemetry]  # per-layer telemetry (over all B*S tokens)
    hidden: list[LayerTrace] = field(default_factory=list)  # only with return_hidden

    def weighted(self, weights: dict[str, float] = DEFAULT_AUX_WEIGHTS) -> torch.Tensor:
        return sum(w * self.losses[n] for n, w in weights.items())


def training_loss(logits: torch.Tensor, targets: torch.Tensor, aux: Optional[MoxEAux],
                  weights: dict[str, float] = DEFAULT_AUX_WEIGHTS, ignore_index: int = -100):
    """CE (mean over tokens) + weighted aux losses.  Returns (total, ce)."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)
    total = ce if aux is None else ce + aux.weighted(weights)
    return total, ce


class MoxELayer(nn.Module):
    """u = mixer(h); routing on u; out = sum_k w_k Expert_k(u) (no extra residual)."""

    def __init__(self, cfg: MoxEConfig, layer_idx: int = 0, expert_factory: Optional[ExpertFactory] = None):
        super().__init__()
        self.cfg = cfg
        self.mixer = build_mixer(cfg)
        self.gate = build_gate(cfg)
        factory = expert_factory or EXPERT_FACTORIES[cfg.expert_factory_name]
        self.experts = factory(cfg, layer_idx)

    def route_and_combine(self, u: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """u (N, D) -> (out (N, D), routing)."""
        r: Routing = self.gate(u)
        bank_combine = getattr(self.experts, "combine", None)  # a bank may dispatch itself (latent: B_g x per group)
        if bank_combine is not None:
            out = bank_combine(u, r)
        else:
            out = combine(u, r, self.experts.run, len(self.experts))
        return out, r

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Telemetry]:
        """h (B, S, D) -> (out (B, S, D), u (B, S, D), telemetry over the B*S tokens)."""
        b, s, d = h.shape
        u = self.mixer(h)
        out, r = self.route_and_combine(u.reshape(b * s, d))
        tel = compute_telemetry(r, has_predictor=self.gate.has_predictor)
        return out.reshape(b, s, d), u, tel

    def step(self, h: torch.Tensor, state: Optional[dict]) -> tuple[torch.Tensor, dict, torch.Tensor, Telemetry]:
        """h (B, 1, D) one token per sequence -> (out (B, 1, D), new mixer state, u, telemetry)."""
        b, _, d = h.shape
        u, new_state = stack_step(self.mixer, h, state)
        out, r = self.route_and_combine(u.reshape(b, d))
        tel = compute_telemetry(r, has_predictor=self.gate.has_predictor)
        return out.reshape(b, 1, d), new_state, u, tel


class MoxEModel(nn.Module):
    """embedding -> L MoxE layers -> optional LayerNorm (norm.weight) -> lm_head."""

    def __init__(self, cfg: MoxEConfig, expert_factory: Optional[ExpertFactory] = None):
        super().__init__()
        cfg.validate()
        assert cfg.model_type == "moxe"
        self.cfg = cfg
        d, v = cfg.embedding_dim, cfg.vocab_size
        self.token_embedding = nn.Embedding(v, d)
        self.layers = nn.ModuleList(MoxELayer(cfg, l, expert_factory) for l in range(cfg.num_layers))
        self.norm = LayerNorm(ndim=d) if cfg.post_layers_norm else None
        self.lm_head = nn.Linear(d, v, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return self.lm_head(x)

    def forward(self, ids: torch.Tensor, return_hidden: bool = False) -> tuple[torch.Tensor, MoxEAux]:
        """ids (B, S) -> (logits (B, S, V), aux).  Full sequence (package forward)."""
        x = self.token_embedding(ids)
        tels, hidden = [], []
        for layer in self.layers:
            out, u, tel = layer(x)
            tels.append(tel)
            if return_hidden:
                hidden.append(LayerTrace(mixer=u, out=out))
            x = out
        logits = self._head(x)
        losses = {n: torch.stack([t.losses[i] for t in tels]).mean() for i, n in enumerate(LOSS_NAMES)}
        return logits, MoxEAux(losses=losses, layers=tels, hidden=hidden)

    def init_state(self, batch: int, dtype=torch.float32, device=None) -> list[dict]:
        return [zero_stack_state(l.mixer, batch, dtype, device) for l in self.layers]

    def step(self, ids: torch.Tensor, state: Optional[list] = None, return_telemetry: bool = False):
        """One token per sequence: ids (B,) -> (logits (B, V), new state[, per-layer telemetry]).
        The input state is not modified."""
        x = self.token_embedding(ids.reshape(-1, 1))
        if state is None:
            state = self.init_state(x.shape[0], x.dtype, x.device)
        new_state, tels = [], []
        for layer, st in zip(self.layers, state):
            x, ns, _, tel = layer.step(x, st)
            new_state.append(ns)
            tels.append(tel)
        logits = self._head(x)[:, 0]
        return (logits, new_state, tels) if return_telemetry else (logits, new_state)


class DenseXLSTMModel(xLSTMLMModel):
    """model_type "xlstm": the package's ``xLSTMLMModel`` itself (same forward, same tensor names
    ``token_embedding.weight``, ``xlstm_block_stack.blocks.{i}.*``,
    ``xlstm_block_stack.post_blocks_norm.weight``, ``lm_head.weight``), plus the explicit-state
    step API shared with MoxEModel."""

    def __init__(self, cfg: MoxEConfig):
        cfg.validate()
        super().__init__(lm_model_config(cfg.xlstm, cfg.tie_weights))
        self.cfg = cfg

    def forward_hidden(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Package forward, also returning each block's output (before post_blocks_norm)."""
        x = self.token_embedding(ids)
        hs = []
        for block in self.xlstm_block_stack.blocks:
            x = block(x)
            hs.append(x)
        x = self.xlstm_block_stack.post_blocks_norm(x)
        return self.lm_head(x), hs

    def init_state(self, batch: int, dtype=torch.float32, device=None) -> dict:
        return zero_stack_state(self.xlstm_block_stack, batch, dtype, device)

    def step_tokens(self, ids: torch.Tensor, state: Optional[dict] = None):
        """ids (B,) -> (logits (B, V), new state); input state untouched (package ``step``)."""
        ids = ids.reshape(-1, 1)
        if state is None:
            state = self.init_state(ids.shape[0])
        logits, new = xLSTMLMModel.step(self, ids, state=clone_state(state))
        return logits[:, 0], new


def build_model(cfg: MoxEConfig, expert_factory: Optional[ExpertFactory] = None) -> nn.Module:
    if cfg.model_type == "xlstm":
        return DenseXLSTMModel(cfg)
    return MoxEModel(cfg, expert_factory)


def step_fn(model: nn.Module) -> Callable:
    """(ids (B,), state) -> (logits (B, V), state) for either model kind."""
    return model.step_tokens if isinstance(model, DenseXLSTMModel) else model.step
