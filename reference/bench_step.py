"""Speed of the PyTorch reference on this machine, for `moxe bench` to print beside the engine.

Measures, for a model directory in the engine format:
  decode:  tokens/s of the reference's token-by-token step() (batch 1), after a short prompt;
  prefill: tokens/s of the reference's full-sequence forward over a prompt (batch 1).
Prints one JSON object. Torch uses its default thread count (all cores), like the engine.

    .venv/bin/python reference/bench_step.py models/default --decode 32 --prompt 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from moxe_ref import load_engine_dir, step_fn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", help="model directory (config.json, model.safetensors)")
    ap.add_argument("--decode", type=int, default=32, help="decode steps to time")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens for the prefill timing")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs of each measurement; the fastest is reported")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_engine_dir(args.model).eval()
    vocab = model.token_embedding.weight.shape[0]
    step = step_fn(model)
    ids = torch.randint(0, vocab, (args.prompt,))
    with torch.no_grad():
        # Decode: a few warm-up steps, then timed steps continuing the same state.
        state = None
        tok = ids[:1]
        for _ in range(3):
            logits, state = step(tok, state)
            tok = logits.argmax(-1)
        decode = 0.0
        for _ in range(max(args.repeats, 1)):
            t = time.perf_counter()
            for _ in range(args.decode):
                logits, state = step(tok, state)
                tok = logits.argmax(-1)
            decode = max(decode, args.decode / (time.perf_counter() - t))
        # Prefill: the full-sequence forward (parallel form), limited by the mLSTM's
        # context_length in the package.
        n = args.prompt
        model(ids[None, :8])
        prefill = 0.0
        for _ in range(max(args.repeats, 1)):
            t = time.perf_counter()
            model(ids[None, :n])
            prefill = max(prefill, n / (time.perf_counter() - t))
    print(json.dumps({"decode_tokens_per_s": decode, "prefill_tokens_per_s": prefill,
                      "prompt_tokens": n, "decode_steps": args.decode, "repeats": args.repeats,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
