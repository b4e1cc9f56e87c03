#!/usr/bin/env bash
# Converts the bundled model to latent experts at several ranks and measures each:
# conversion errors and parameter counts (moxe convert latent), validation perplexity
# (moxe perplexity) and decode speed (moxe bench). The figures of docs/LATENT_REPORT.md.
#
#   training/latent_sweep.sh [RANK ...]      (default: 128 96 64 32; the exact rank is 128)
#
# Needs data/valid.txt (training/prepare_corpus.py). Writes /tmp/moxe-latent-r*/ and logs
# to /tmp/moxe-latent-sweep/.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(128 96 64 32)
logs=/tmp/moxe-latent-sweep
mkdir -p "$logs"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/moxe-xdg}
mkdir -p "$XDG_RUNTIME_DIR"
cargo build --release --quiet
moxe=target/release/moxe
for r in "${ranks[@]}"; do
    out=/tmp/moxe-latent-r$r
    echo "== rank $r"
    $moxe convert latent --rank "$r" --out "$out" | tee "$logs/convert-r$r.txt"
    $moxe perplexity --model "$out" --text data/valid.txt 2>/dev/null | tail -3 | tee "$logs/ppl-r$r.txt"
    $moxe bench --model "$out" --no-reference --profile-tokens 0 --batch 1 2>/dev/null \
        | grep -E "parameters|decode|prefill|lavapipe" | tee "$logs/bench-r$r.txt"
done
echo "== dense"
$moxe bench --no-reference --profile-tokens 0 --batch 1 2>/dev/null \
    | grep -E "parameters|decode|prefill|lavapipe" | tee "$logs/bench-dense.txt"
