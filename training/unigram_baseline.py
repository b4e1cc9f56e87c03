#!/usr/bin/env python3
"""Unigram baseline: validation perplexity of a context-free token model.

    .venv/bin/python training/unigram_baseline.py

Estimates p(t) = (count_train(t) + 1) / (N_train + V) from the token counts of
data/train.txt under models/default/tokenizer.json (add-one smoothing over the
full vocabulary of V tokens, special tokens included), then reports on
data/valid.txt

    perplexity = exp( -(1/N_valid) * sum_i ln p(t_i) )   (per token, natural log)

over every token of valid.txt, the <|endoftext|> after each book included
(exactly the token stream a language model is scored on). Also prints bits per
byte, which does not depend on the tokenizer. Any trained model of this
tokenizer must do clearly better than this number.
"""

import argparse
import math
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fail(msg):
    print(f"unigram_baseline: error: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    from tokenizers import Tokenizer

    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=repo / "data")
    ap.add_argument("--tokenizer", type=Path, default=repo / "models" / "default" / "tokenizer.json")
    args = ap.parse_args()

    if not args.tokenizer.is_file():
        fail(f"{args.tokenizer} not found; run training/train_tokenizer.py first")
    tok = Tokenizer.from_file(str(args.tokenizer))
    texts = {}
    for split in ("train", "valid"):
        path = args.data_dir / f"{split}.txt"
        if not path.is_file():
            fail(f"{path} not found; run training/prepare_corpus.py first")
        texts[split] = path.read_text(encoding="utf-8")

    vocab = tok.get_vocab_size(with_added_tokens=True)
    train_ids = tok.encode(texts["train"]).ids
    valid_ids = tok.encode(texts["valid"]).ids
    counts = Counter(train_ids)
    n_train = len(train_ids)

    log_denominator = math.log(n_train + vocab)
    nll = 0.0
    for t, c in Counter(valid_ids).items():
        nll -= c * (math.log(counts.get(t, 0) + 1) - log_denominator)
    n_valid = len(valid_ids)
    valid_bytes = len(texts["valid"].encode("utf-8"))
    ppl = math.exp(nll / n_valid)
    unseen = sum(1 for t in valid_ids if t not in counts)

    print(f"tokenizer {args.tokenizer.name}: V = {vocab}")
    print(f"train: {n_train} tokens, {len(counts)} distinct token ids seen")
    print(f"valid: {n_valid} tokens ({unseen} of them unseen in train), {valid_bytes} bytes")
    print(f"unigram (add-one) cross-entropy: {nll / n_valid:.4f} nats/token, "
          f"{nll / math.log(2) / valid_bytes:.4f} bits/byte")
    print(f"unigram (add-one) validation perplexity: {ppl:.2f}")


if __name__ == "__main__":
    main()
