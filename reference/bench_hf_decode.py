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
import transformers
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
    ap.add_argument("--chunkwise-kernel", help="override the config's (prefill) chunkwise kernel")
    ap.add_argument("--sequence-kernel", help="override the config's sequence kernel")
    ap.add_argument("--step-kernel", help="override the config's (decode) step kernel")
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
    for key in ("chunkwise_kernel", "sequence_kernel", "step_kernel"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    config = xLSTMConfig(**cfg)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(args.device):
        model = xLSTMForCausalLM(config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    xlstm_pkg = getattr(import_utils, "is_xlstm_available", lambda: False)()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"transformers xLSTMForCausalLM: {params / 1e9:.3f} B parameters, {args.dtype}, "
        f"{args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}), "
        f"kernels {config.chunkwise_kernel} / {config.sequence_kernel} / {config.step_kernel}, xlstm package "
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
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        print(
            f"weights: {weights / 2**20:.1f} MiB read per decode token: "
            f"{weights * decode / 1e9:.1f} GB/s"
        )
        del model
        torch.cuda.empty_cache()
        print(f"CUDA read bandwidth: {read_bandwidth():.1f} GB/s (torch.sum over 4 GiB, best of 20)")


def read_bandwidth():
    """GB/s of a read-bound reduction over 4 GiB: the memory bandwidth the GPU delivers."""
    x = torch.ones(2**31, dtype=torch.bfloat16, device="cuda")
    x.sum()
    best = float("inf")
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        x.sum()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return x.numel() * x.element_size() / best / 1e9


if __name__ == "__main__":
    main()
