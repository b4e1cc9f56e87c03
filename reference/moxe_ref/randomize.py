"""Re-randomise ALL parameters to non-trivial values (for fixtures).

The package's own init leaves sLSTM recurrent kernels, mLSTM gate weights and every LayerNorm
offset at zero and the skip weights at one, which would hide layout and formula bugs.  Rules
(by parameter name; ``std(fan_in)`` = 1/sqrt(fan_in)):

  *norm*.weight (LayerNorm / MultiHeadLayerNorm offsets)      N(0, 0.2)
  learnable_skip                                              U(0.5, 1.5)
  conv1d.conv.weight (F, 1, K)                                N(0, 1/sqrt(K))
  conv1d.conv.bias                                            N(0, 0.2)
  slstm_cell._recurrent_kernel_ (NH, 4DH, DH)                 N(0, 1/sqrt(DH)) * rk_scale
  slstm_cell._bias_ (vanilla, gate-major i|f|z|o)             i N(0,1.5), f U(-3,5), z N(0,0.5), o N(0.5,1)
  headwise weights (NH, O, I) (sLSTM gates, q/k/v_proj)       N(0, 1/sqrt(I))
  mLSTM cell igate.weight / fgate.weight (NH, 3Di)            N(0, 1/sqrt(3Di)) * gate_scale
  mLSTM cell igate.bias                                       N(0, 1.5) * gate_scale
  mLSTM cell fgate.bias                                       U(-2, 5) * gate_scale
  gate.router.weight (E, D)                                   N(0, router_scale/sqrt(D))
  gate.entropy_predictor.weight                               N(0, 1/sqrt(D))
  token_embedding.weight                                      N(0, 1)
  any other 2-D weight (Linear)                               N(0, 1/sqrt(fan_in))
  any other 1-D bias                                          N(0, 0.3)
``gate_scale`` multiplies the sLSTM bias and mLSTM gate biases / weights to reach large gate
pre-activations (stabiliser tests).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _normal(shape, std, gen, mean=0.0):
    return torch.randn(shape, generator=gen) * std + mean


def _uniform(shape, lo, hi, gen):
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def randomize_(module: nn.Module, seed: int, router_scale: float = 1.5, rk_scale: float = 1.0,
               gate_scale: float = 1.0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():  # shared (tied) parameters appear once
            leaf = name.rsplit(".", 1)[-1]
            shape = p.shape
            if name.endswith("_recurrent_kernel_"):
                v = _normal(shape, rk_scale / math.sqrt(shape[-1]), gen)
            elif name.endswith("_bias_"):
                q = shape[0] // 4
                v = torch.cat([
                    _normal((q,), 1.5, gen),
                    _uniform((q,), -3.0, 5.0, gen),
                    _normal((q,), 0.5, gen),
                    _normal((q,), 1.0, gen, 0.5),
                ]) * gate_scale
            elif "norm" in name and leaf == "weight":
                v = _normal(shape, 0.2, gen)
            elif leaf == "learnable_skip":
                v = _uniform(shape, 0.5, 1.5, gen)
            elif name.endswith("conv1d.conv.weight"):
                v = _normal(shape, 1.0 / math.sqrt(shape[-1]), gen)
            elif name.endswith("conv1d.conv.bias"):
                v = _normal(shape, 0.2, gen)
            elif name.endswith("igate.bias"):  # mLSTM cell (the sLSTM gates have no bias)
                v = _normal(shape, 1.5, gen) * gate_scale
            elif name.endswith("fgate.bias"):
                v = _uniform(shape, -2.0, 5.0, gen) * gate_scale
            elif name.endswith(("igate.weight", "fgate.weight")) and p.dim() == 2:  # mLSTM cell
                v = _normal(shape, 1.0 / math.sqrt(shape[-1]), gen) * gate_scale
            elif name.endswith("router.weight"):
                v = _normal(shape, router_scale / math.sqrt(shape[-1]), gen)
            elif name.endswith("token_embedding.weight"):
                v = _normal(shape, 1.0, gen)
            elif p.dim() == 3:  # headwise (NH, O, I)
                v = _normal(shape, 1.0 / math.sqrt(shape[-1]), gen)
            elif p.dim() == 2:
                v = _normal(shape, 1.0 / math.sqrt(shape[-1]), gen)
            elif p.dim() == 1:
                v = _normal(shape, 0.3, gen)
            else:
                raise ValueError(f"no rule for {name} {tuple(shape)}")
            p.copy_(v.to(p.dtype))
    return module
