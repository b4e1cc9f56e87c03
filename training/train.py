#!/usr/bin/env python3
"""Train the bundled default MoxE model with the PyTorch reference (reference/moxe_ref).

    nice -n -5 .venv/bin/python training/train.py            # the bundled default model (the defaults)
    .venv/bin/python training/train.py --calibrate 3 --dim 192 --layers 3   # s/step and tokens/s of a size

The defaults are exactly the run that produced models/default (2 data-parallel workers x 1 thread,
480 steps of 2 x 8 windows of 256 tokens; about 40 minutes on the shared 2-core build machine).
Note that the kernel's autogroup scheduling makes plain ``nice`` ineffective against processes of
other sessions; the bundled run also set its own autogroup's nice (``echo -5 > /proc/self/autogroup``
in the launching shell, see models/default/README.md).

The model is the reference's own ``MoxEModel`` (mixer = the xlstm package's sLSTM + mLSTM blocks,
entropy-aware gate, E experts: mLSTM group + sLSTM group) trained with the reference's own
objective ``training_loss``: CE + 0.001 L_z + 0.01 L_lb + 0.01 L_d + 0.01 L_g (aux losses
averaged over layers). Nothing of the model is re-implemented here.

Data: ``data/train.txt`` tokenized with ``models/default/tokenizer.json`` (the token stream with
an EOS after each book). Each step, every worker draws ``batch`` random windows of ``context+1`` tokens (start
positions uniform over the stream, from a generator seeded with (seed, worker rank)); inputs are the first ``context``
tokens, targets the last ``context``. context_length of the model = the training window.

Optimiser: AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup then cosine decay
to ``min_lr_ratio * lr``, gradient clipping. Deterministic: fixed seeds for init and data order,
a fixed thread count.

Logs (every ``--log-every`` steps, averaged over the interval) to ``training/logs/<name>.jsonl``:
loss, CE, the four aux losses, per-layer group shares P_m/P_s, per-layer expert token shares,
learning rate, tokens/s; every ``--eval-every`` steps also the CE on a fixed slice of the
validation text. At the end: the engine directory (config.json + model.safetensors, f16 by
default) and a full training checkpoint (outside git, under data/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "reference"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from xlstm.components.init import small_init_init_  # noqa: E402

from moxe_ref import MoxEConfig, MoxEModel, save_engine_dir, training_loss, xlstm_object  # noqa: E402
from moxe_ref.model import DEFAULT_AUX_WEIGHTS  # noqa: E402


def tokenize_file(path: Path, tokenizer: Path, cache_dir: Path) -> np.ndarray:
    """Token ids of a text file (cached as .npy next to the data, keyed by both files' sizes and
    mtimes so a changed corpus or tokenizer is re-tokenized)."""
    from tokenizers import Tokenizer

    st, tt = path.stat(), tokenizer.stat()
    key = f"{path.stem}.{st.st_size}.{int(st.st_mtime)}.{tt.st_size}.{int(tt.st_mtime)}.ids.npy"
    cache = cache_dir / key
    if cache.is_file():
        return np.load(cache)
    tok = Tokenizer.from_file(str(tokenizer))
    ids = np.asarray(tok.encode(path.read_text(encoding="utf-8")).ids, dtype=np.int32)
    try:
        np.save(cache, ids)
    except OSError:
        pass
    return ids


def build_config(a) -> MoxEConfig:
    x = xlstm_object(
        embedding_dim=a.dim, vocab_size=a.vocab, context_length=a.context,
        mlstm_heads=a.heads, slstm_heads=a.heads, conv1d_kernel_size=4, qkv_proj_blocksize=4,
        mlstm_proj_factor=2.0, ffn_proj_factor=1.3, act_fn=a.act_fn,
    )
    return MoxEConfig(
        xlstm=x, model_type="moxe", num_experts=a.experts, top_k_experts=a.top_k,
        num_layers=a.layers, router_type="conditioned_addition", expert_type="xlstm",
        modulation_bias="standard", gate_bias=True, gamma=0.7, difficulty_threshold=0.5,
        post_layers_norm=False, tie_weights=a.tie,
    ).validate()


def build_model(cfg: MoxEConfig, seed: int) -> MoxEModel:
    torch.manual_seed(seed)
    model = MoxEModel(cfg)
    # The package blocks initialise themselves (small_init / wang_init, powerlaw sLSTM biases).
    # MoxEModel leaves the embedding / head at torch defaults; use the package's own LM init
    # (xLSTMLMModel.reset_parameters: small_init on the embedding and on an untied head).
    small_init_init_(model.token_embedding.weight, dim=cfg.embedding_dim)
    if not cfg.tie_weights:
        small_init_init_(model.lm_head.weight, dim=cfg.embedding_dim)
    return model


def param_counts(model: MoxEModel) -> dict:
    """Total parameters, and the ones active per token (everything except the E-k experts that a
    token does not select; with equal-size groups: k experts of the mean expert size)."""
    cfg = model.cfg
    uniq = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in uniq.values())
    per_layer_experts = []
    for layer in model.layers:
        per_layer_experts.append([sum(p.numel() for p in layer.experts[e].parameters()) for e in range(len(layer.experts))])
    expert_total = sum(sum(x) for x in per_layer_experts)
    g = cfg.experts_per_group
    m_size = per_layer_experts[0][0]
    s_size = per_layer_experts[0][g]
    # active: the k selected experts; report both extremes (k mLSTM / k sLSTM) and the mean
    k = cfg.top_k_experts
    base = total - expert_total
    return {
        "total": total,
        "embedding": model.token_embedding.weight.numel(),
        "lm_head": 0 if cfg.tie_weights else model.lm_head.weight.numel(),
        "mixer_per_layer": sum(p.numel() for p in model.layers[0].mixer.parameters()),
        "gate_per_layer": sum(p.numel() for p in model.layers[0].gate.parameters()),
        "mlstm_expert": m_size,
        "slstm_expert": s_size,
        "experts_total": expert_total,
        "active_min": base + cfg.num_layers * k * min(m_size, s_size),
        "active_max": base + cfg.num_layers * k * max(m_size, s_size),
        "active_mean": base + cfg.num_layers * k * (m_size + s_size) // 2,
    }


def make_optimizer(model, lr, wd):
    decay, no_decay = [], []
    seen = set()
    for n, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and "token_embedding" not in n else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def quick_valid(model, valid_ids, context, n_windows):
    """Mean CE over the first n_windows consecutive non-overlapping windows of the validation
    stream (the evaluate.py protocol restricted to a prefix)."""
    model.eval()
    w = context
    n = min(n_windows, len(valid_ids) // w)
    x = torch.from_numpy(valid_ids[: n * w].astype(np.int64)).view(n, w)
    tot, cnt = 0.0, 0
    for i in range(0, n, 16):
        xb = x[i:i + 16]
        logits, _ = model(xb)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1), reduction="sum")
        tot += nll.item()
        cnt += xb[:, 1:].numel()
    model.train()
    return tot / cnt


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="default", help="run name (log file training/logs/<name>.jsonl)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--act-fn", default="gelu")
    ap.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True, help="tie embedding and lm_head")
    ap.add_argument("--batch", type=int, default=8, help="windows per worker and step")
    ap.add_argument("--steps", type=int, default=480)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=80)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--ckpt-every", type=int, default=40)
    ap.add_argument("--max-minutes", type=float, default=52.0,
                    help="safety stop: finish (and save) after this many minutes of training (0 = off)")
    ap.add_argument("--calibrate", type=int, default=0,
                    help="only time this many steps (after 1 warm-up step) and print tokens/s; saves nothing")
    ap.add_argument("--resume", action="store_true", help="continue from data/<name>.ckpt.pt")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "models" / "default" / "tokenizer.json")
    ap.add_argument("--world", type=int, default=2,
                    help="data-parallel worker processes (each --threads threads; gradients all-reduced "
                         "with torch.distributed/gloo every step). 2 x 1 thread beats 1 x 2 threads on a "
                         "shared 2-core machine (OpenMP barriers stall under contention)")
    return ap.parse_args(argv)


def main():
    a = parse_args()
    if a.world > 1 and not a.calibrate:
        import tempfile
        import torch.multiprocessing as mp
        fd, init_file = tempfile.mkstemp(prefix="moxe_train_dist_")
        os.close(fd)
        os.unlink(init_file)
        mp.spawn(worker, args=(a, init_file), nprocs=a.world, join=True)
    else:
        worker(0, a, None)


def worker(rank, a, init_file):
    dist = None
    if a.world > 1 and not a.calibrate:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=a.world)
    main_rank = rank == 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = build_config(a)
    model = build_model(cfg, a.seed)
    model.train()
    pc = param_counts(model)

    train_ids = tokenize_file(a.data_dir / "train.txt", a.tokenizer, a.data_dir)
    valid_ids = tokenize_file(a.data_dir / "valid.txt", a.tokenizer, a.data_dir)
    assert int(train_ids.max()) < a.vocab
    n_starts = len(train_ids) - (a.context + 1)
    # per-worker stream of windows: PCG64 seeded with (seed, rank); world 1 -> rank 0
    data_rng = np.random.Generator(np.random.PCG64([a.seed, rank]))
    offs = np.arange(a.context + 1)

    def batch():
        s = data_rng.integers(0, n_starts + 1, size=a.batch)
        return torch.from_numpy(train_ids[s[:, None] + offs].astype(np.int64))

    opt = make_optimizer(model, a.lr, a.wd)

    if a.calibrate:
        xb = batch()
        t_steps = []
        for i in range(a.calibrate + 1):
            t0 = time.perf_counter()
            logits, aux = model(xb[:, :-1])
            loss, ce = training_loss(logits, xb[:, 1:], aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t_steps.append(time.perf_counter() - t0)
            xb = batch()
        dt = sum(t_steps[1:]) / a.calibrate
        print(json.dumps({"dim": a.dim, "layers": a.layers, "heads": a.heads, "context": a.context,
                          "batch": a.batch, "tie": a.tie, "params_total": pc["total"],
                          "params_active_mean": pc["active_mean"], "s_per_step": round(dt, 3),
                          "tokens_per_s": round(a.batch * a.context / dt, 1),
                          "fp32_MB": round(pc["total"] * 4 / 2**20, 2), "fp16_MB": round(pc["total"] * 2 / 2**20, 2)}))
        return

    log_dir = REPO / "training" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{a.name}.jsonl"
    ckpt_path = a.data_dir / f"{a.name}.ckpt.pt"
    rng_path = a.data_dir / f"{a.name}.rng{rank}.pt"
    tokens_per_step = a.world * a.batch * a.context
    start_step, elapsed_before = 0, 0.0
    logf = None
    if a.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        rs = torch.load(rng_path, weights_only=False)
        assert rs["step"] == ck["step"], "rng state and checkpoint are from different steps"
        data_rng.bit_generator.state = rs["data_rng"]
        torch.set_rng_state(rs["torch_rng"])
        start_step, elapsed_before = ck["step"], ck["elapsed"]
        if main_rank:
            logf = open(log_path, "a")
            logf.write(json.dumps({"event": "resume", "step": start_step}) + "\n")
            print(f"resumed at step {start_step}", flush=True)
    elif main_rank:
        logf = open(log_path, "w")
        header = {"event": "start", "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                  "config": cfg.to_dict(), "params": pc, "aux_weights": DEFAULT_AUX_WEIGHTS,
                  "train_tokens": int(len(train_ids)), "valid_tokens": int(len(valid_ids)),
                  "tokens_per_step": tokens_per_step, "torch": torch.__version__, "threads": a.threads,
                  "world": a.world}
        logf.write(json.dumps(header) + "\n")
        logf.flush()
    if main_rank:
        print(f"params: {json.dumps(pc)}", flush=True)

    def save_ckpt(step, elapsed):
        torch.save({"step": step, "data_rng": data_rng.bit_generator.state, "torch_rng": torch.get_rng_state()},
                   rng_path)
        if main_rank:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "config": cfg.to_dict(), "args": {k: str(v) for k, v in vars(a).items()}}, tmp)
            os.replace(tmp, ckpt_path)

    params = [p for p in {id(p): p for p in model.parameters()}.values()]

    def allreduce_grads():
        """Average the gradients over the workers (a missing gradient counts as zero)."""
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= a.world
        o = 0
        for p in params:
            n = p.numel()
            p.grad = flat[o:o + n].view_as(p).clone()
            o += n

    L, E = cfg.num_layers, cfg.num_experts
    names = list(DEFAULT_AUX_WEIGHTS)

    def new_acc():
        # [loss, ce, grad_norm, aux..., P_m (L), P_s (L), counts (L*E)] summed over steps (and workers)
        return torch.zeros(3 + len(names) + 2 * L + L * E, dtype=torch.float64)

    acc, acc_n, acc_t = new_acc(), 0, 0.0
    t_start = time.perf_counter() - elapsed_before
    step = start_step
    stop_reason = "steps"
    while step < a.steps:
        t0 = time.perf_counter()
        lr = lr_at(step, a)
        for g in opt.param_groups:
            g["lr"] = lr
        xb = batch()
        logits, aux = model(xb[:, :-1])
        loss, ce = training_loss(logits, xb[:, 1:], aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist is not None:
            allreduce_grads()
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        step += 1
        acc_t += time.perf_counter() - t0
        with torch.no_grad():
            acc += torch.cat([
                torch.tensor([loss.item(), ce.item(), float(gnorm)], dtype=torch.float64),
                torch.tensor([aux.losses[n].item() for n in names], dtype=torch.float64),
                torch.stack([t.group_shares[0] for t in aux.layers]).double(),
                torch.stack([t.group_shares[1] for t in aux.layers]).double(),
                torch.stack([t.expert_counts for t in aux.layers]).double().reshape(-1)])
        acc_n += 1
        elapsed = time.perf_counter() - t_start
        stop = bool(a.max_minutes and elapsed > a.max_minutes * 60 and step < a.steps)
        if dist is not None:
            flag = torch.tensor([1.0 if stop else 0.0])
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if step % a.log_every == 0 or step == a.steps or stop:
            tot = acc.clone()
            if dist is not None:
                dist.all_reduce(tot)
            if main_rank:
                n = acc_n * a.world
                v = (tot / n).tolist()
                aux_v = dict(zip(names, v[3:3 + len(names)]))
                o = 3 + len(names)
                counts = tot[o + 2 * L:].view(L, E)
                rec = {"step": step, "lr": lr, "loss": v[0], "ce": v[1], **aux_v, "grad_norm": v[2],
                       "P_m": [round(x, 4) for x in v[o:o + L]], "P_s": [round(x, 4) for x in v[o + L:o + 2 * L]],
                       "expert_shares": [[round(float(c / counts[l].sum()), 4) for c in counts[l]] for l in range(L)],
                       "tokens_per_s": acc_n * tokens_per_step / acc_t, "tokens_seen": step * tokens_per_step,
                       "elapsed_s": round(elapsed, 1)}
                if a.eval_every and (step % a.eval_every == 0 or step == a.steps or stop):
                    rec["valid_ce_prefix"] = quick_valid(model, valid_ids, a.context, a.eval_windows)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                print(f"step {step:5d} lr {lr:.2e} loss {rec['loss']:.4f} ce {rec['ce']:.4f} "
                      f"Lz {rec['L_z']:.3f} Llb {rec['L_lb']:.4f} Ld {rec['L_d']:.4f} Lg {rec['L_g']:.4f} "
                      f"Pm {rec['P_m']} tok/s {rec['tokens_per_s']:.0f} t {elapsed / 60:.1f}m"
                      + (f" valid_ce {rec['valid_ce_prefix']:.4f}" if "valid_ce_prefix" in rec else ""), flush=True)
            acc, acc_n, acc_t = new_acc(), 0, 0.0
        if a.ckpt_every and step % a.ckpt_every == 0:
            save_ckpt(step, elapsed)
        if stop:
            stop_reason = "max_minutes"
            break

    elapsed = time.perf_counter() - t_start
    save_ckpt(step, elapsed)
    if main_rank:
        model.eval()
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[a.dtype]
        save_engine_dir(model, a.out, slstm_layout="vanilla", dtype=dtype)
        end = {"event": "end", "steps": step, "stop_reason": stop_reason, "train_wall_s": round(elapsed, 1),
               "tokens_seen": step * tokens_per_step,
               "saved": str(a.out.relative_to(REPO) if a.out.is_relative_to(REPO) else a.out),
               "dtype": a.dtype, "safetensors_bytes": (a.out / "model.safetensors").stat().st_size}
        logf.write(json.dumps(end) + "\n")
        logf.close()
        print(json.dumps(end), flush=True)
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
