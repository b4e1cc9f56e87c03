"""Decode speed of transformers' xLSTMForCausalLM with random weights: the reference beside
`moxe bench --config ...` (scripts/gpu_bench.sh runs both on the same machine).

    python reference/bench_hf_decode.py --config configs/xlstm-7b.json --device cuda

On CUDA the config's kernels are used (with the `xlstm` and `mlstm_kernels` packages
installed: mlstm_kernels' Triton kernels; without them transformers falls back to its native
PyTorch code and says so here). On the CPU the native kernels are forced. Prints the prefill
and decode tokens/s at batch 1 (the best of --repeats), greedy, every token generated
(min_new_tokens = max_new_tokens).
"""

import argparse
import json
import time

import torch
from transformers import xLSTMConfig, xLSTMForCausalLM
from transformers.utils import import_utils


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--blocks", type=int, help="only the first N blocks")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = json.load(open(args.config))
    if args.blocks:
        cfg["num_blocks"] = cfg["num_hidden_layers"] = args.blocks
    if args.device == "cpu":
        cfg.update(
            chunkwise_kernel="chunkwise--native_autograd",
            sequence_kernel="native_sequence__native",
            step_kernel="native",
        )
    config = xLSTMConfig(**cfg)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(args.device):
        model = xLSTMForCausalLM(config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    xlstm_pkg = getattr(import_utils, "is_xlstm_available", lambda: False)()
    print(
        f"transformers xLSTMForCausalLM: {params / 1e9:.3f} B parameters, {args.dtype}, "
        f"{args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}), "
        f"kernels {config.chunkwise_kernel} / {config.step_kernel}, xlstm package "
        f"{'used' if xlstm_pkg else 'MISSING: native fallback'}, built in "
        f"{time.perf_counter() - start:.1f} s"
    )

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    prompt = torch.randint(3, config.vocab_size, (1, args.prompt_tokens), device=args.device)

    def run(new):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True
            )
        sync()
        assert out.shape[1] == args.prompt_tokens + new, out.shape
        return time.perf_counter() - t

    run(2)  # compile the kernels
    first = min(run(1) for _ in range(args.repeats))
    full = min(run(args.decode_tokens) for _ in range(args.repeats))
    decode = (args.decode_tokens - 1) / max(full - first, 1e-9)
    print(f"prefill: {args.prompt_tokens / first:.1f} tokens/s ({args.prompt_tokens} tokens + first token)")
    print(f"decode:  {decode:.1f} tokens/s (batch 1, {args.decode_tokens} tokens)")
    if args.device == "cuda":
        print(f"GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB peak allocated")


if __name__ == "__main__":
    main()
