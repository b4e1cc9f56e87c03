"""Explicit recurrent state of a package ``xLSTMBlockStack`` (the MoxE mixer, or a dense model).

The state is the package's own structure, one entry per block:
  ``{"block_{i}": {"conv_state": (conv,), "slstm_state": s}}``           sLSTM block
      conv (B, K, D): the last K conv inputs, oldest first (the package's ``step`` format);
      s (4, B, D) = stacked [h, c, n, m]
  ``{"block_{i}": {"conv_state": (conv,), "mlstm_state": (C, n, m)}}``   mLSTM block
      conv (B, K, Di); C (B, NH, DH, DH); n (B, NH, DH, 1); m (B, NH, 1, 1)
All zeros at the start (the package's own default when no state is passed).

The package's ``CausalConv1d.step`` updates the conv state IN PLACE, so the helpers here always
clone a state before handing it to the package: a state passed to ``step`` is never modified.
"""

from __future__ import annotations

import torch
from xlstm import mLSTMLayer, sLSTMLayer, xLSTMBlockStack


def clone_state(s):
    if s is None:
        return None
    if isinstance(s, torch.Tensor):
        return s.clone()
    if isinstance(s, dict):
        return {k: clone_state(v) for k, v in s.items()}
    if isinstance(s, (tuple, list)):
        return type(s)(clone_state(v) for v in s)
    raise TypeError(type(s))


def zero_stack_state(stack: xLSTMBlockStack, batch: int, dtype=torch.float32, device=None) -> dict:
    st = {}
    for i, block in enumerate(stack.blocks):
        layer = block.xlstm
        if isinstance(layer, sLSTMLayer):
            c = layer.config
            k, d = c.conv1d_kernel_size, c.embedding_dim
            st[f"block_{i}"] = {
                "conv_state": (torch.zeros(batch, k, d, dtype=dtype, device=device),) if k > 0 else None,
                "slstm_state": torch.zeros(4, batch, d, dtype=dtype, device=device),
            }
        elif isinstance(layer, mLSTMLayer):
            c = layer.config
            di, nh, k = c._inner_embedding_dim, c.num_heads, c.conv1d_kernel_size
            dh = di // nh
            st[f"block_{i}"] = {
                "conv_state": (torch.zeros(batch, k, di, dtype=dtype, device=device),),
                "mlstm_state": (
                    torch.zeros(batch, nh, dh, dh, dtype=dtype, device=device),
                    torch.zeros(batch, nh, dh, 1, dtype=dtype, device=device),
                    torch.zeros(batch, nh, 1, 1, dtype=dtype, device=device),
                ),
            }
        else:
            raise TypeError(type(layer))
    return st


def stack_step(stack: xLSTMBlockStack, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
    """One token through the package's ``xLSTMBlockStack.step`` (x (B, 1, D)); returns the output
    and a NEW state (the input state is left untouched)."""
    if state is None:
        state = zero_stack_state(stack, x.shape[0], x.dtype, x.device)
    y, new = stack.step(x, state=clone_state(state))
    return y, new


def flatten_stack_state(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Named tensors of a stack state: ``{prefix}block_{i}.conv_state``, ``.slstm_state`` (4,B,D),
    ``.mlstm_state.C``/``.n``/``.m``."""
    out = {}
    for bk, bs in state.items():
        for k, v in bs.items():
            if v is None:
                continue
            if k == "conv_state":
                out[f"{prefix}{bk}.conv_state"] = v[0]
            elif k == "slstm_state":
                out[f"{prefix}{bk}.slstm_state"] = v
            elif k == "mlstm_state":
                for n, t in zip(("C", "n", "m"), v):
                    out[f"{prefix}{bk}.mlstm_state.{n}"] = t
    return out
