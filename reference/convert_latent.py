#!/usr/bin/env python3
"""Data-free conversion of a dense-expert MoxE checkpoint into latent experts (LATENT.md), the
reference's cross-check of the engine's ``moxe convert latent``.

    .venv/bin/python reference/convert_latent.py IN_DIR [OUT_DIR] --rank R   [--groups G]
    .venv/bin/python reference/convert_latent.py IN_DIR [OUT_DIR] --energy E [--groups G]

For every layer, factored matrix kind (mlp: w1, w3; mLSTM experts: xlstm.proj_up; sLSTM experts:
ffn.proj_up) and group g (contiguous experts, G groups, default 2), the experts' matrices are
stacked, M = [W_1; ...; W_s] = U S V^T in float64, B_g = V_r^T and A_i = W_i B_g^T.
``--rank R`` uses r = min(R, full rank); ``--energy E`` the smallest r with
sum_{j<r} s_j^2 >= E * sum_j s_j^2 (per layer / kind / group, so ranks may differ).

Prints, per (layer, group, kind): the rank, the kept energy, the relative Frobenius error of
the stacked matrix ||M - M_r||_F / ||M||_F and of each expert ||W_i - A_i B_g||_F / ||W_i||_F;
then the parameter counts before / after.  With OUT_DIR it writes the latent checkpoint
(docs/LATENT_FORMAT.md; the input's sLSTM layout is kept).  ``--logits`` also compares the
logits of the two models on a prompt (golden.safetensors' prompt_ids when IN_DIR has one).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

torch.set_num_threads(1)

from safetensors.torch import load_file  # noqa: E402

from moxe_ref import MoxEConfig, convert_to_latent, format_report, load_engine_dir, save_engine_dir  # noqa: E402


def prompt_for(in_dir: Path, vocab: int) -> torch.Tensor:
    gold = in_dir / "golden.safetensors"
    if gold.exists():
        return load_file(str(gold))["prompt_ids"].long()
    return torch.randint(0, vocab, (32,), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits_error(dense, latent, ids: torch.Tensor) -> tuple[float, float]:
    a = dense(ids[None])[0][0]
    b = latent(ids[None])[0][0]
    err = float((a - b).abs().max())
    return err, err / float(a.abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("in_dir", type=Path)
    ap.add_argument("out_dir", type=Path, nargs="?")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int)
    g.add_argument("--energy", type=float)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--logits", action="store_true", help="compare the logits of the dense and latent models")
    ap.add_argument("--json", type=Path, help="also write the report as JSON")
    args = ap.parse_args(argv)

    in_cfg = MoxEConfig.from_json(args.in_dir / "config.json")
    dense = load_engine_dir(args.in_dir)
    latent, rep = convert_to_latent(dense, rank=args.rank, energy=args.energy, groups=args.groups)
    print(format_report(rep))
    out = {"report": asdict(rep)}
    if args.logits:
        err, rel = logits_error(dense, latent, prompt_for(args.in_dir, dense.cfg.vocab_size))
        print(f"logits: max abs err {err:.4g} = {rel:.4g} x max|logit|")
        out["logits_max_abs_err"], out["logits_rel_err"] = err, rel
    if args.out_dir is not None:
        save_engine_dir(latent, args.out_dir, slstm_layout=in_cfg.slstm_layout)
        tok = args.in_dir / "tokenizer.json"
        if tok.exists():
            (args.out_dir / "tokenizer.json").write_bytes(tok.read_bytes())
        print(f"wrote {args.out_dir}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
