"""Weight reconstruction error of the two 4-bit variants considered for q4 (docs/QUANT_REPORT.md):
symmetric int4 (q in [-8, 7], scale = absmax / 7) against q4 as shipped (q in [0, 15] with the
block minimum, scale and min rounded to bf16), blocks of 32 along each row, over every weight
matrix of a model (rows of 32 or more weights).

    .venv/bin/python training/q4_error.py [models/default/model.safetensors]
"""
import sys

import numpy as np
import torch
from safetensors.torch import load_file as lt
w = lt(sys.argv[1] if len(sys.argv) > 1 else "models/default/model.safetensors")
def bf16(x): return torch.tensor(x, dtype=torch.float32).to(torch.bfloat16).to(torch.float32).numpy()
tot = {"sym": [0,0], "min": [0,0]}
for name, t in w.items():
    if t.ndim < 2 or t.shape[-1] < 32: continue
    a = t.float().numpy().reshape(-1, t.shape[-1])
    K = a.shape[1]; pad = (-K) % 32
    a = np.pad(a, ((0,0),(0,pad))).reshape(-1, 32)
    # symmetric int4: q in [-8,7] (scale = absmax/7), round to nearest
    s = np.abs(a).max(1, keepdims=True) / 7; s = bf16(s); s[s==0] = 1
    q = np.clip(np.round(a / s), -8, 7); sym = q * s
    mn = bf16(a.min(1, keepdims=True)); sc = bf16((a.max(1, keepdims=True) - a.min(1, keepdims=True)) / 15); sc2 = np.where(sc==0, 1, sc)
    q = np.clip(np.round((a - mn) / sc2), 0, 15); am = q * sc + mn
    for k, r in (("sym", sym), ("min", am)):
        tot[k][0] += ((r - a)**2).sum(); tot[k][1] += (a**2).sum()
for k, (e, n) in tot.items(): print(k, "relative Frobenius error", (e/n)**0.5)
