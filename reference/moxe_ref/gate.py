"""Entropy-aware gate, standard router, top-k routing, telemetry and the auxiliary losses
(MODEL.md section 3).  All functions work on flattened tokens: u is (N, D).

The modulation names follow MODEL.md exactly:
  standard      sigma_t = gamma * d
  proportional  sigma_t = gamma * relu(d - tau)
  masked        sigma_t = gamma * d * [d > tau]
(The authors' JAX code selects the modulation function by an index into a list, and its
name->index map swaps "masked" and "proportional"; we implement the names as written.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ENTROPY_CLAMP = 1e-6  # H~ = -sum q log(max(q, 1e-6)) / log E
GROUP_LOSS_EPS = 1e-8  # L_g = P_m log(2 P_m + 1e-8) + P_s log(2 P_s + 1e-8)
LOSS_NAMES = ("L_d", "L_g", "L_z", "L_lb")


def modulation(d: torch.Tensor, mode: str, gamma: float, tau: float) -> torch.Tensor:
    if mode == "standard":
        return gamma * d
    if mode == "proportional":
        return gamma * torch.relu(d - tau)
    if mode == "masked":
        return gamma * d * (d > tau).to(d.dtype)
    raise ValueError(f"unknown modulation {mode!r}")


def condition_logits(z: torch.Tensor, sigma: torch.Tensor, experts_per_group: int) -> torch.Tensor:
    """zc = z + [+sigma repeated G times, -sigma repeated G times] (mLSTM group first)."""
    g = experts_per_group
    s = sigma.unsqueeze(-1)
    bias = torch.cat([s.expand(*s.shape[:-1], g), (-s).expand(*s.shape[:-1], g)], dim=-1)
    return z + bias


def topk_route(p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of p (N, E); ties broken by the lower expert index (stable descending sort).
    Returns (idx (N,k) long, raw probs (N,k), renormalised weights (N,k))."""
    vals, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    idx = idx[..., :k]
    raw = vals[..., :k]
    w = raw / raw.sum(dim=-1, keepdim=True)
    return idx, raw, w


@dataclass
class Routing:
    """Per-token routing of one layer (N tokens, E experts, top-k k)."""

    z: torch.Tensor  # (N, E) unconditioned router logits (incl. router bias)
    difficulty: torch.Tensor  # (N,) d_t (zeros for the standard router)
    sigma: torch.Tensor  # (N,) modulation sigma_t (zeros for the standard router)
    zc: torch.Tensor  # (N, E) conditioned logits
    probs: torch.Tensor  # (N, E) p = softmax(zc)
    topk_idx: torch.Tensor  # (N, k) int64
    topk_prob: torch.Tensor  # (N, k) raw p of the selected experts
    topk_weight: torch.Tensor  # (N, k) renormalised


@dataclass
class Telemetry:
    """Per-layer telemetry and auxiliary losses (MODEL.md section 3)."""

    difficulty: torch.Tensor  # (N,)
    entropy: torch.Tensor  # (N,) normalised entropy of softmax(z)
    router_probs: torch.Tensor  # (N, E)
    topk_idx: torch.Tensor  # (N, k)
    topk_weight: torch.Tensor  # (N, k)
    group_shares: torch.Tensor  # (2,) [P_m, P_s]
    expert_counts: torch.Tensor  # (E,) int64, tokens routed to e
    expert_loads: torch.Tensor  # (E,) u_e
    losses: torch.Tensor  # (4,) [L_d, L_g, L_z, L_lb]

    def loss_dict(self) -> dict[str, torch.Tensor]:
        return {n: self.losses[i] for i, n in enumerate(LOSS_NAMES)}


def normalised_entropy(z: torch.Tensor) -> torch.Tensor:
    q = torch.softmax(z, dim=-1)
    e = z.shape[-1]
    return -(q * torch.log(torch.clamp(q, min=ENTROPY_CLAMP))).sum(dim=-1) / math.log(e)


def compute_telemetry(r: Routing, has_predictor: bool = True) -> Telemetry:
    """Telemetry and the four losses over all N tokens of ``r``.

    For the standard router (no difficulty predictor) d_t is reported as 0 and L_d as 0."""
    n, e = r.probs.shape
    k = r.topk_idx.shape[-1]
    g = e // 2
    ent = normalised_entropy(r.z)
    if has_predictor:
        l_d = ((r.difficulty - ent) ** 2).mean()
    else:
        l_d = torch.zeros((), dtype=r.z.dtype, device=r.z.device)
    p_m = r.probs[:, :g].sum(dim=-1).mean()
    p_s = r.probs[:, g:].sum(dim=-1).mean()
    l_g = p_m * torch.log(2 * p_m + GROUP_LOSS_EPS) + p_s * torch.log(2 * p_s + GROUP_LOSS_EPS)
    l_z = (torch.logsumexp(r.zc, dim=-1) ** 2).mean()
    flat_idx = r.topk_idx.reshape(-1)
    counts = torch.bincount(flat_idx, minlength=e)
    load_sum = torch.zeros(e, dtype=r.probs.dtype, device=r.probs.device).index_add(0, flat_idx, r.topk_prob.reshape(-1))
    loads = load_sum / (n * k)
    l_lb = e * ((loads - 1.0 / e) ** 2).mean()
    return Telemetry(
        difficulty=r.difficulty,
        entropy=ent,
        router_probs=r.probs,
        topk_idx=r.topk_idx,
        topk_weight=r.topk_weight,
        group_shares=torch.stack([p_m, p_s]),
        expert_counts=counts,
        expert_loads=loads,
        losses=torch.stack([l_d, l_g, l_z, l_lb]),
    )


class EntropyAwareGate(nn.Module):
    """router_type "conditioned_addition".  Tensor names: router.weight (E, D),
    router.bias (E, only with gate_bias), entropy_predictor.weight (1, D), entropy_predictor.bias (1)."""

    has_predictor = True

    def __init__(self, dim: int, num_experts: int, top_k: int, gate_bias: bool = True,
                 modulation_bias: str = "standard", gamma: float = 0.7, difficulty_threshold: float = 0.5):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.mode, self.gamma, self.tau = modulation_bias, float(gamma), float(difficulty_threshold)
        self.router = nn.Linear(dim, num_experts, bias=gate_bias)
        self.entropy_predictor = nn.Linear(dim, 1, bias=True)

    def forward(self, u: torch.Tensor) -> Routing:
        d = torch.sigmoid(self.entropy_predictor(u)).squeeze(-1)
        sigma = modulation(d, self.mode, self.gamma, self.tau)
        z = self.router(u)
        zc = condition_logits(z, sigma, self.num_experts // 2)
        p = torch.softmax(zc, dim=-1)
        idx, raw, w = topk_route(p, self.top_k)
        return Routing(z, d, sigma, zc, p, idx, raw, w)


class StandardRouter(nn.Module):
    """router_type "standard": p = softmax(z), no difficulty predictor.  Tensor names:
    router.weight (E, D), router.bias (E, only with gate_bias)."""

    has_predictor = False

    def __init__(self, dim: int, num_experts: int, top_k: int, gate_bias: bool = True, **_):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=gate_bias)

    def forward(self, u: torch.Tensor) -> Routing:
        z = self.router(u)
        zero = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        p = torch.softmax(z, dim=-1)
        idx, raw, w = topk_route(p, self.top_k)
        return Routing(z, zero, zero, z, p, idx, raw, w)


def combine(u: torch.Tensor, r: Routing, run_expert, num_experts: int) -> torch.Tensor:
    """Sparse dispatch: out_t = sum_j w_tj * Expert_{idx_tj}(u_t).  Each expert sees only the
    tokens routed to it (gathered into one batch); tokens with no route cost it nothing.
    ``run_expert(e, x (n, D)) -> (n, D)``.  No residual."""
    out = torch.zeros_like(u)
    for e in range(num_experts):
        sel = r.topk_idx == e  # (N, k)
        tok = sel.any(dim=-1).nonzero(as_tuple=True)[0]
        if tok.numel() == 0:
            continue
        w = (r.topk_weight * sel.to(r.topk_weight.dtype)).sum(dim=-1)[tok]
        y = run_expert(e, u.index_select(0, tok))
        out = out.index_add(0, tok, y * w.unsqueeze(-1))
    return out


def combine_given_outputs(expert_out: torch.Tensor, r: Routing) -> torch.Tensor:
    """Same weighted sum given all experts' outputs expert_out (E, N, D)."""
    n = expert_out.shape[1]
    ar = torch.arange(n, device=expert_out.device)
    out = torch.zeros_like(expert_out[0])
    for j in range(r.topk_idx.shape[-1]):
        out = out + r.topk_weight[:, j:j + 1] * expert_out[r.topk_idx[:, j], ar]
    return out


def build_gate(cfg) -> nn.Module:
    kw = dict(dim=cfg.embedding_dim, num_experts=cfg.num_experts, top_k=cfg.top_k_experts,
              gate_bias=cfg.gate_bias, modulation_bias=cfg.modulation_bias, gamma=cfg.gamma,
              difficulty_threshold=cfg.difficulty_threshold)
    if cfg.router_type == "conditioned_addition":
        return EntropyAwareGate(**kw)
    if cfg.router_type == "standard":
        return StandardRouter(**kw)
    raise ValueError(cfg.router_type)
