"""Golden outputs of a whole model (tests/fixtures/models/<name>/golden.safetensors)."""

from __future__ import annotations

import torch

from .model import DenseXLSTMModel, MoxEModel

N_DECODE = 16


def _telemetry_tensors(prefix: str, tel) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.difficulty": tel.difficulty,
        f"{prefix}.entropy": tel.entropy,
        f"{prefix}.router_probs": tel.router_probs,
        f"{prefix}.topk_idx": tel.topk_idx,
        f"{prefix}.topk_weight": tel.topk_weight,
        f"{prefix}.group_shares": tel.group_shares,
        f"{prefix}.expert_counts": tel.expert_counts,
        f"{prefix}.expert_loads": tel.expert_loads,
        f"{prefix}.losses": tel.losses,
    }


def routing_margin(probs: torch.Tensor, k: int) -> float:
    """Smallest gap p_(k) - p_(k+1) over tokens (how far the top-k choice is from a flip)."""
    if k >= probs.shape[-1]:
        return float("inf")
    s = torch.sort(probs, dim=-1, descending=True).values
    return float((s[:, k - 1] - s[:, k]).min())


def argmax_margin(logits: torch.Tensor) -> float:
    s = torch.sort(logits, dim=-1, descending=True).values
    return float((s[:, 0] - s[:, 1]).min())


@torch.no_grad()
def make_golden(model, prompt_ids: torch.Tensor, n_decode: int = N_DECODE) -> tuple[dict[str, torch.Tensor], dict]:
    """prompt_ids (S,) -> (tensors, info).  See tests/fixtures/README.md for the contents."""
    model.eval()
    ids = prompt_ids.reshape(1, -1)
    s = ids.shape[1]
    out: dict[str, torch.Tensor] = {"prompt_ids": prompt_ids}
    info: dict = {"prompt_len": s, "decode_len": n_decode}
    is_moxe = isinstance(model, MoxEModel)
    route_margins = []

    if is_moxe:
        logits, aux = model(ids, return_hidden=True)
        for l, (tr, tel) in enumerate(zip(aux.hidden, aux.layers)):
            out[f"hidden.{l}.mixer"] = tr.mixer[0]
            out[f"hidden.{l}.out"] = tr.out[0]
            out.update(_telemetry_tensors(f"telemetry.{l}", tel))
            route_margins.append(routing_margin(tel.router_probs, model.cfg.top_k_experts))
        step = model.step
    else:
        assert isinstance(model, DenseXLSTMModel)
        logits = model(ids)
        logits2, hs = model.forward_hidden(ids)
        assert torch.equal(logits, logits2)
        for i, h in enumerate(hs):
            out[f"hidden.{i}.out"] = h[0]
        step = model.step_tokens
    out["prompt_logits"] = logits[0]

    # token by token through step() from the zero state
    state, step_logits, step_routes = None, [], []
    for t in range(s):
        res = model.step(ids[:, t], state, return_telemetry=True) if is_moxe else step(ids[:, t], state)
        step_logits.append(res[0][0])
        state = res[1]
        if is_moxe:
            step_routes.append([tel.topk_idx[0] for tel in res[2]])
            route_margins.extend(routing_margin(tel.router_probs, model.cfg.top_k_experts) for tel in res[2])
    out["prompt_logits_step"] = torch.stack(step_logits)
    if is_moxe:
        for l in range(len(model.layers)):
            fwd = out[f"telemetry.{l}.topk_idx"]
            stp = torch.stack([r[l] for r in step_routes])
            info.setdefault("routing_forward_equals_step", True)
            if not torch.equal(fwd, stp):
                info["routing_forward_equals_step"] = False

    # greedy decode continuing from the prompt's (step) state
    nxt = int(out["prompt_logits_step"][-1].argmax())
    info["forward_step_last_argmax_agree"] = nxt == int(out["prompt_logits"][-1].argmax())
    dec_ids, dec_logits = [], []
    for _ in range(n_decode):
        dec_ids.append(nxt)
        res = model.step(torch.tensor([nxt]), state, return_telemetry=True) if is_moxe else step(torch.tensor([nxt]), state)
        state = res[1]
        if is_moxe:
            route_margins.extend(routing_margin(tel.router_probs, model.cfg.top_k_experts) for tel in res[2])
        dec_logits.append(res[0][0])
        nxt = int(res[0][0].argmax())
    out["decode_ids"] = torch.tensor(dec_ids)
    out["decode_logits"] = torch.stack(dec_logits)

    info["max_abs_diff_prompt_logits_forward_vs_step"] = float((out["prompt_logits"] - out["prompt_logits_step"]).abs().max())
    info["min_argmax_margin"] = min(argmax_margin(out["prompt_logits_step"][-1:]), argmax_margin(out["decode_logits"]))
    if is_moxe:
        info["min_routing_margin"] = min(route_margins)
    return out, info
