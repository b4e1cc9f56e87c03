#!/usr/bin/env bash
# Quantises the bundled model and two latent conversions of it to q8 and q4 and measures the
# validation perplexity of each at f16, q8 and q4 (the quality table of docs/QUANT_REPORT.md).
#
#   training/quant_sweep.sh [--latent-only]
#
# Needs data/valid.txt (training/prepare_corpus.py). Writes /tmp/moxe-quant-*/ and logs to
# /tmp/moxe-quant-sweep/.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=/tmp/moxe-quant-sweep
mkdir -p "$logs"
cargo build --release --quiet
moxe=target/release/moxe
models=(models/default)
[ "${1:-}" = "--latent-only" ] && models=()
for r in 128 64; do
    out=/tmp/moxe-quant-latent-r$r
    $moxe convert latent --rank "$r" --out "$out" --force > "$logs/convert-r$r.txt"
    models+=("$out")
done
for m in "${models[@]}"; do
    name=$(basename "$m" | sed 's/^moxe-quant-//')
    for q in q8 q4; do
        $moxe quantize --model "$m" --dtype "$q" --out "/tmp/moxe-quant-$name-$q" --force \
            | tee "$logs/quantize-$name-$q.txt"
    done
    for dir in "$m" "/tmp/moxe-quant-$name-q8" "/tmp/moxe-quant-$name-q4"; do
        echo "== $dir"
        $moxe perplexity --model "$dir" --text data/valid.txt 2>/dev/null | tail -3 \
            | tee "$logs/ppl-$(basename "$dir").txt"
    done
done
