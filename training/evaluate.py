#!/usr/bin/env python3
"""Evaluate an engine-format MoxE model directory with the PyTorch reference.

    .venv/bin/python training/evaluate.py                      # models/default
    .venv/bin/python training/evaluate.py --model DIR --json out.json

Validation perplexity protocol (the engine's `moxe perplexity` must reproduce it exactly):

1. Token stream: ``tokenizer.encode(open("data/valid.txt").read()).ids`` with the model's
   tokenizer.json (the prepared text holds an ``<|endoftext|>`` after each book, which encodes to
   the EOS id 0; no BOS is added, nothing is padded). 181,413 tokens for the bundled split.
2. Windows: the stream is cut into consecutive non-overlapping windows of W tokens,
   W = config ``xlstm.context_length``: tokens [0, W), [W, 2W), ...; the last window holds the
   remaining tokens and may be shorter than W (it is scored if it has at least 2 tokens).
3. Each window is evaluated from a fresh (all-zero) recurrent state, as one sequence.
4. Every token of a window except its first is scored: nll_i = -ln softmax(logits_{i-1})[t_i],
   where logits_{i-1} is the model's output after reading tokens 0..i-1 of the same window.
5. mean NLL = (sum of all scored nll_i) / (number of scored tokens), in nats;
   perplexity = exp(mean NLL). Computed in float32 (accumulated in float64).

The reference runs each window through ``MoxEModel.forward`` (the package's parallel mLSTM form),
which equals the recurrent ``step`` path up to the documented 1e-6 relative eps term.

Also printed: the unigram baseline (training/unigram_baseline.py), per-layer expert shares on the
validation text (the fraction of the k*N routing slots each expert receives, over every input
position of every window, N = all validation tokens), per-layer group shares P_m/P_s (mean router
probability mass of each group), and samples generated token by token with ``MoxEModel.step``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "reference"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from moxe_ref import load_engine_dir  # noqa: E402

PROMPTS = ["Once upon a time", "The old man said", "CHAPTER I"]


def windows(ids: list[int], w: int) -> list[list[int]]:
    out = [ids[i:i + w] for i in range(0, len(ids), w)]
    return [x for x in out if len(x) >= 2]


@torch.no_grad()
def evaluate(model, ids: list[int], w: int, batch: int = 16):
    cfg = model.cfg
    L, E, k = cfg.num_layers, cfg.num_experts, cfg.top_k_experts
    wins = windows(ids, w)
    nll_sum, n_scored, n_routed = 0.0, 0, 0
    counts = torch.zeros(L, E, dtype=torch.float64)
    pm = torch.zeros(L, dtype=torch.float64)
    ps = torch.zeros(L, dtype=torch.float64)
    diff = torch.zeros(L, dtype=torch.float64)
    # batch full-length windows together; the (possibly shorter) last window runs on its own
    groups, cur = [], []
    for x in wins:
        if cur and (len(x) != len(cur[0]) or len(cur) == batch):
            groups.append(cur)
            cur = []
        cur.append(x)
    if cur:
        groups.append(cur)
    for g in groups:
        xb = torch.tensor(g, dtype=torch.long)
        logits, aux = model(xb)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), xb[:, 1:].reshape(-1),
                              reduction="sum")
        nll_sum += float(nll.double())
        n_scored += xb[:, 1:].numel()
        nt = xb.numel()
        n_routed += nt
        for l, tel in enumerate(aux.layers):
            counts[l] += tel.expert_counts.double()
            pm[l] += float(tel.group_shares[0]) * nt
            ps[l] += float(tel.group_shares[1]) * nt
            diff[l] += float(tel.difficulty.double().sum())
    mean_nll = nll_sum / n_scored
    return {
        "windows": len(wins), "window_tokens": w, "last_window_tokens": len(wins[-1]),
        "tokens": len(ids), "scored_tokens": n_scored, "nll_sum": nll_sum,
        "mean_nll": mean_nll, "perplexity": math.exp(mean_nll),
        "expert_shares": (counts / (k * n_routed)).tolist(),
        "expert_slots": counts.long().tolist(),
        "P_m": (pm / n_routed).tolist(), "P_s": (ps / n_routed).tolist(),
        "mean_difficulty": (diff / n_routed).tolist(),
    }


@torch.no_grad()
def generate(model, tok, prompt: str, n_new: int, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> str:
    ids = tok.encode(prompt).ids
    gen = torch.Generator().manual_seed(seed)
    state = None
    logits = None
    for t in ids:
        logits, state = model.step(torch.tensor([t]), state)
    out = []
    for _ in range(n_new):
        lg = logits[0].float()
        if temperature <= 0:
            nxt = int(torch.argmax(lg))
        else:
            lg = lg / temperature
            if top_k:
                v, _ = torch.topk(lg, top_k)
                lg = torch.where(lg < v[-1], torch.full_like(lg, -float("inf")), lg)
            nxt = int(torch.multinomial(torch.softmax(lg, -1), 1, generator=gen))
        if nxt == 0:  # EOS
            break
        out.append(nxt)
        logits, state = model.step(torch.tensor([nxt]), state)
    return prompt + tok.decode(out)


def unigram_baseline(data_dir: Path, tokenizer: Path):
    r = subprocess.run([sys.executable, str(REPO / "training" / "unigram_baseline.py"), "--data-dir", str(data_dir),
                        "--tokenizer", str(tokenizer)], capture_output=True, text=True, check=True)
    m = re.search(r"validation perplexity: ([0-9.]+)", r.stdout)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--window", type=int, default=0, help="W (default: the config's context_length)")
    ap.add_argument("--max-windows", type=int, default=0, help="score only the first N windows (quick check)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=60, help="new tokens per sample (0 = no samples)")
    ap.add_argument("--seed", type=int, default=1234, help="sampling seed (per prompt: seed + prompt index)")
    ap.add_argument("--no-unigram", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from tokenizers import Tokenizer

    tok_path = a.model / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    model = load_engine_dir(a.model).float().eval()
    cfg = model.cfg
    w = a.window or int(cfg.xlstm["context_length"])
    text = (a.data_dir / "valid.txt").read_text(encoding="utf-8")
    ids = tok.encode(text).ids
    if a.max_windows:
        ids = ids[: a.max_windows * w]

    t0 = time.perf_counter()
    res = evaluate(model, ids, w, a.batch)
    res["eval_seconds"] = round(time.perf_counter() - t0, 1)
    res["model"] = str(a.model)
    if not a.no_unigram:
        res["unigram_perplexity"] = unigram_baseline(a.data_dir, tok_path)

    print(f"model {a.model}: L={cfg.num_layers} E={cfg.num_experts} k={cfg.top_k_experts} D={cfg.embedding_dim}")
    print(f"validation: {res['tokens']} tokens, {res['windows']} windows of W={w} "
          f"(last {res['last_window_tokens']}), {res['scored_tokens']} scored tokens")
    print(f"moxe perplexity (reference): mean NLL {res['mean_nll']:.4f} nats/token, perplexity {res['perplexity']:.2f}")
    if res.get("unigram_perplexity"):
        print(f"unigram baseline perplexity:  {res['unigram_perplexity']:.2f}")
    print("expert shares of the k*N routing slots (experts 0..G-1 mLSTM, G..E-1 sLSTM):")
    for l, sh in enumerate(res["expert_shares"]):
        print(f"  layer {l}: " + "  ".join(f"e{e} {s:.4f}" for e, s in enumerate(sh))
              + f"   P_m {res['P_m'][l]:.4f}  P_s {res['P_s'][l]:.4f}  mean d {res['mean_difficulty'][l]:.4f}")
    collapsed = [(l, e) for l, sh in enumerate(res["expert_slots"]) for e, c in enumerate(sh) if c == 0]
    print("routing collapsed: " + ("NO (every expert receives tokens in every layer)" if not collapsed
                                   else f"YES, experts without tokens: {collapsed}"))

    if a.samples:
        res["samples"] = []
        for i, p in enumerate(PROMPTS):
            g = generate(model, tok, p, a.samples)
            s = generate(model, tok, p, a.samples, temperature=0.8, top_k=40, seed=a.seed + i)
            res["samples"].append({"prompt": p, "greedy": g, "sampled_t0.8_k40": s, "seed": a.seed + i})
            print(f"\n--- prompt {p!r}, greedy:\n{g}\n--- prompt {p!r}, temperature 0.8, top-k 40, seed {a.seed + i}:\n{s}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
