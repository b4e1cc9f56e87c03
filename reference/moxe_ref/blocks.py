"""Building blocks: every xLSTM block used here is the official ``xlstm`` package's own class
(``xLSTMBlockStack``, ``mLSTMBlock``, ``sLSTMBlock``); only the MoxE pieces (SwiGLU expert, the
expert bank) are ours.

Expert banks are built by a factory registry (``EXPERT_FACTORIES``) so new expert kinds
(e.g. latent experts, LATENT.md) can be added without touching the layer: a bank is an
``nn.Module`` whose children ``"0".."E-1"`` are the experts (tensor names
``experts.{e}.*``), which may hold extra shared children (e.g. ``latent``), and which applies
expert ``e`` to a batch of tokens with :meth:`ExpertBank.run`.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from xlstm import mLSTMBlock, sLSTMBlock, xLSTMBlockStack

from .config import EXPERT_TYPES, MoxEConfig, stack_config


# ----------------------------------------------------------------------------- mixer

def build_mixer(cfg: MoxEConfig) -> xLSTMBlockStack:
    """The sequence mixer: the package's block stack with blocks [sLSTM, mLSTM] and its
    post_blocks_norm (tensor names ``blocks.0.*``, ``blocks.1.*``, ``post_blocks_norm.weight``)."""
    return xLSTMBlockStack(stack_config(cfg.xlstm, num_blocks=2, slstm_at=[0]))


# ----------------------------------------------------------------------------- experts

class SwiGLU(nn.Module):
    """MLP expert (MODEL.md section 6): y = w2(silu(w1 x) * (w3 x)), no bias, no residual."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def make_mlstm_block(cfg: MoxEConfig, block_idx: int = 0, num_blocks: int = 1) -> mLSTMBlock:
    """A package ``mLSTMBlock`` configured like the model's mLSTM blocks."""
    sc = stack_config(cfg.xlstm, num_blocks=max(num_blocks, 1), slstm_at=[])
    bc = copy.deepcopy(sc.mlstm_block)
    bc._block_idx = block_idx
    bc.__post_init__()
    return mLSTMBlock(config=bc)


def make_slstm_block(cfg: MoxEConfig, block_idx: int = 0, num_blocks: int = 1) -> sLSTMBlock:
    """A package ``sLSTMBlock`` (with its gated FFN) configured like the model's sLSTM blocks."""
    sc = stack_config(cfg.xlstm, num_blocks=max(num_blocks, 1), slstm_at=list(range(max(num_blocks, 1))))
    bc = copy.deepcopy(sc.slstm_block)
    bc._block_idx = block_idx
    bc.__post_init__()
    return sLSTMBlock(config=bc)


class ExpertBank(nn.Module):
    """E experts, children named "0".."E-1".  ``run(e, x)`` applies expert e to a batch of tokens
    x (n, D), each token on its own as a length-1 sequence with zero initial state."""

    def __init__(self, experts: list[nn.Module]):
        super().__init__()
        for i, e in enumerate(experts):
            self.add_module(str(i), e)
        self.num_experts = len(experts)

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, e: int) -> nn.Module:
        return self._modules[str(e)]

    def __iter__(self):
        return (self[e] for e in range(self.num_experts))

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        expert = self[e]
        if isinstance(expert, (mLSTMBlock, sLSTMBlock)):
            # (n, D) -> (n, 1, D): n independent sequences of length 1 through the package's
            # forward (parallel mLSTM form / vanilla sLSTM), zero state.
            return expert(x.unsqueeze(1)).squeeze(1)
        return expert(x)


ExpertFactory = Callable[[MoxEConfig, int], ExpertBank]


def _xlstm_experts(cfg: MoxEConfig, layer_idx: int) -> ExpertBank:
    g = cfg.experts_per_group
    experts = [make_mlstm_block(cfg) for _ in range(g)] + [make_slstm_block(cfg) for _ in range(g)]
    return ExpertBank(experts)


def _mlstm_experts(cfg: MoxEConfig, layer_idx: int) -> ExpertBank:
    return ExpertBank([make_mlstm_block(cfg) for _ in range(cfg.num_experts)])


def _slstm_experts(cfg: MoxEConfig, layer_idx: int) -> ExpertBank:
    return ExpertBank([make_slstm_block(cfg) for _ in range(cfg.num_experts)])


def _mlp_experts(cfg: MoxEConfig, layer_idx: int) -> ExpertBank:
    d = cfg.embedding_dim
    return ExpertBank([SwiGLU(d, 2 * d) for _ in range(cfg.num_experts)])


EXPERT_FACTORIES: dict[str, ExpertFactory] = {
    "xlstm": _xlstm_experts,
    "mlstm": _mlstm_experts,
    "slstm": _slstm_experts,
    "mlp": _mlp_experts,
}


def register_expert_type(name: str, factory: ExpertFactory) -> None:
    """Add an expert kind (e.g. latent experts); ``factory(cfg, layer_idx)`` returns an ExpertBank."""
    EXPERT_FACTORIES[name] = factory
    if name not in EXPERT_TYPES:
        EXPERT_TYPES.append(name)
