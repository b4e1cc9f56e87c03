#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of the default MoxE model.

    .venv/bin/python training/train_tokenizer.py [--vocab-size 4096]

Reads only data/train.txt (made by training/prepare_corpus.py) and writes
models/default/tokenizer.json in the Hugging Face `tokenizers` JSON format, which
the Rust `tokenizers` crate loads with `Tokenizer::from_file`.

Design (see training/README.md for the reasons):
  * model: BPE over bytes (GPT-2 style byte-to-unicode alphabet, all 256 bytes in
    the base vocabulary, so any input encodes without an unknown token);
  * pre-tokenizer: ByteLevel with the GPT-2 splitting regex, no added prefix space
    (decode(encode(text)) == text exactly);
  * decoder: ByteLevel, so decoding gives readable UTF-8 text back;
  * no normalizer (the text is used byte for byte), no post-processor;
  * special tokens: <|endoftext|> (id 0, end of a book / document) and
    <|pad|> (id 1, padding only; never appears in the data).

Training is run single-threaded: deterministic and light on a shared machine.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

# Must be set before the tokenizers library starts its thread pool.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD]  # ids 0 and 1, in this order


def fail(msg):
    print(f"train_tokenizer: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_books(path):
    """Split a corpus file into books (the text between <|endoftext|> markers)."""
    if not path.is_file():
        fail(f"{path} not found; run training/prepare_corpus.py first")
    text = path.read_text(encoding="utf-8")
    if not text.endswith(EOS):
        fail(f"{path} does not end with {EOS}; was it made by training/prepare_corpus.py?")
    return text, text.split(EOS)[:-1]


def build(vocab_size, books):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The books are fed without their <|endoftext|> markers so that the marker's
    # characters do not take part in the merge statistics.
    tok.train_from_iterator(books, trainer=trainer, length=len(books))
    return tok


def main():
    from tokenizers import Tokenizer

    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--data-dir", type=Path, default=repo / "data")
    ap.add_argument("--out", type=Path, default=repo / "models" / "default" / "tokenizer.json")
    args = ap.parse_args()
    if not 2048 <= args.vocab_size <= 8192:
        fail("--vocab-size must be within 2048..8192")

    train_text, train_books = read_books(args.data_dir / "train.txt")
    tok = build(args.vocab_size, train_books)

    # Checks: size, special token ids, exact round trip, the EOS marker is one token.
    if tok.get_vocab_size() != args.vocab_size:
        fail(f"trained vocabulary has {tok.get_vocab_size()} tokens, asked for {args.vocab_size}")
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            fail(f"{s} got id {tok.token_to_id(s)}, expected {i}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tok.save(str(tmp), pretty=True)
    os.replace(tmp, args.out)
    tok = Tokenizer.from_file(str(args.out))  # check what was written, not what is in memory

    stats = {}
    for split in ("train", "valid"):
        path = args.data_dir / f"{split}.txt"
        if split == "train":
            text, books = train_text, train_books
        else:
            text, books = read_books(path)
        ids = tok.encode(text).ids
        if ids.count(0) != len(books):
            fail(f"{path}: {len(books)} books but {ids.count(0)} {EOS} tokens")
        if tok.decode(ids, skip_special_tokens=False) != text:
            fail(f"{path}: decode(encode(text)) differs from the text")
        nbytes = len(text.encode("utf-8"))
        stats[split] = {"bytes": nbytes, "tokens": len(ids), "bytes_per_token": nbytes / len(ids)}

    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} (sha256 {sha})")
    print(f"vocab size {tok.get_vocab_size()}: {EOS} = {tok.token_to_id(EOS)}, {PAD} = {tok.token_to_id(PAD)}, "
          f"256 byte tokens = 2..257, {args.vocab_size - 258} merges")
    for split, s in stats.items():
        print(f"{split}: {s['bytes']} bytes, {s['tokens']} tokens (incl. {EOS}), {s['bytes_per_token']:.3f} bytes/token")
    sample = "Alice was beginning to get very tired of sitting by her sister."
    enc = tok.encode(sample)
    print(f"example: {sample!r} -> {len(enc.ids)} tokens {enc.tokens}")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
