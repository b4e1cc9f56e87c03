"""Latent experts (MoLAE, ../shared/spec/LATENT.md; checkpoint format: docs/LATENT_FORMAT.md).

An expert matrix W_i (out x D) is replaced by A_i B_g: B_g (r x D) is shared by the experts of
group g, A_i (out x r) belongs to expert i, so W_i x = A_i (B_g x).  Only the input-side matrices
are factored, one shared B per (layer, group, matrix kind):

  expert_type "mlp"     kinds ``w1``, ``w3``         (w2 unchanged)
  mLSTM experts         kind  ``xlstm.proj_up``      (proj_down unchanged)
  sLSTM experts         kind  ``ffn.proj_up``        (ffn.proj_down unchanged)

Everything else in an expert stays the xlstm package's own block (``mLSTMBlock`` / ``sLSTMBlock``);
only the factored ``nn.Linear`` is swapped for a :class:`LatentLinear`, which computes
``A (B_g x) + bias``.  Groups are contiguous expert ranges of size E/G: group g = experts
[g*E/G, (g+1)*E/G).  For xlstm experts G = 2 gives the mLSTM group (0) and the sLSTM group (1).

Where B_g x is shared.  The mlp experts all read the layer's u, so the latent bank computes
B_g u ONCE per token per group hit (:meth:`LatentExpertBank.combine`) and each selected expert
applies only its A_i.  In the xlstm blocks the factored matrix reads an expert-specific input
(the mLSTM block's own LayerNorm with its own gamma, or, for the sLSTM FFN, the output of the
expert's own sLSTM layer), so there B_g x is a per-expert product (still r*D + out*r instead of
out*D multiply-adds).  :class:`SharedProjection` counts the token rows it multiplied
(``rows``), which the tests use to check this.

Ranks are per (layer, group, kind) and come from the tensor shapes of a checkpoint
(:func:`fit_latent_shapes_`); ``latent.rank`` in the config is only the default for a freshly
built model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from xlstm import mLSTMBlock, sLSTMBlock
from xlstm.components.init import small_init_init_

from .blocks import EXPERT_FACTORIES, ExpertBank, SwiGLU, register_expert_type
from .config import MoxEConfig
from .gate import Routing

MLP_KINDS = ("w1", "w3")
MLSTM_KIND = "xlstm.proj_up"
SLSTM_KIND = "ffn.proj_up"


# ----------------------------------------------------------------------------- modules

class SharedProjection(nn.Module):
    """B_g (r, D): the shared projection of one (layer, group, kind).  ``forward(x) = x B^T``.
    ``rows`` counts the token rows multiplied (instrumentation, not state)."""

    def __init__(self, rank: int, dim: int):
        super().__init__()
        self.B = nn.Parameter(torch.empty(rank, dim))
        nn.init.normal_(self.B, std=1.0 / math.sqrt(dim))
        self.rows = 0

    @property
    def rank(self) -> int:
        return self.B.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.numel() // x.shape[-1]
        return F.linear(x, self.B)


class LatentLinear(nn.Module):
    """Drop-in for a factored ``nn.Linear(D, out)``: y = A (B_g x) + bias.  ``A`` (out, r) and the
    optional ``bias`` (out) are this expert's; B_g is held by reference only (it is a child of the
    bank's ``latent.{g}``, so it is stored once)."""

    def __init__(self, shared: SharedProjection, out_features: int, bias: bool = False):
        super().__init__()
        self.__dict__["shared"] = shared  # not registered as a child: no duplicate tensor names
        self.in_features = shared.B.shape[1]
        self.out_features = out_features
        self.A = nn.Parameter(torch.empty(out_features, shared.rank))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def from_latent(self, h: torch.Tensor) -> torch.Tensor:
        """A h (+ bias) for a precomputed h = B_g x."""
        return F.linear(h, self.A, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_latent(self.shared(x))

    def dense_weight(self) -> torch.Tensor:
        """W = A B_g (out, D)."""
        return self.A @ self.shared.B

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class LatentSwiGLU(SwiGLU):
    """The SwiGLU expert with w1, w3 as :class:`LatentLinear` (same forward); ``forward_latent``
    takes the shared products h1 = B_w1 u, h3 = B_w3 u."""

    def forward_latent(self, lat: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.w2(F.silu(self.w1.from_latent(lat["w1"])) * self.w3.from_latent(lat["w3"]))


class _Node(nn.Module):
    """Plain container giving the dotted names ``xlstm.proj_up`` / ``ffn.proj_up``."""


class LatentGroup(nn.Module):
    """The shared projections of one group: children at the kind's dotted path, each holding ``B``
    (tensor names ``latent.{g}.{kind}.B``)."""

    def __init__(self, kinds: dict[str, int], dim: int):
        super().__init__()
        self.kinds = list(kinds)
        for kind, r in kinds.items():
            parent = self
            *path, leaf = kind.split(".")
            for p in path:
                if not hasattr(parent, p):
                    parent.add_module(p, _Node())
                parent = getattr(parent, p)
            parent.add_module(leaf, SharedProjection(r, dim))

    def proj(self, kind: str) -> SharedProjection:
        return self.get_submodule(kind)


def expert_kinds(expert: nn.Module) -> list[str]:
    """The factored matrix kinds of one expert (dotted module paths inside the expert)."""
    if isinstance(expert, mLSTMBlock):
        return [MLSTM_KIND]
    if isinstance(expert, sLSTMBlock):
        return [SLSTM_KIND] if getattr(expert, "ffn", None) is not None else []
    if isinstance(expert, SwiGLU):
        return list(MLP_KINDS)
    raise TypeError(f"no latent form for expert {type(expert).__name__}")


def group_ranges(num_experts: int, groups: int) -> list[list[int]]:
    """Contiguous groups: group g = experts [g*E/G, (g+1)*E/G)."""
    if groups < 1 or num_experts % groups:
        raise ValueError(f"groups ({groups}) must divide num_experts ({num_experts})")
    s = num_experts // groups
    return [list(range(g * s, (g + 1) * s)) for g in range(groups)]


def _swap(expert: nn.Module, kind: str, new: nn.Module) -> nn.Module:
    parent_path, _, leaf = kind.rpartition(".")
    parent = expert.get_submodule(parent_path) if parent_path else expert
    old = getattr(parent, leaf)
    setattr(parent, leaf, new)
    return old


class LatentExpertBank(ExpertBank):
    """Experts "0".."E-1" (package blocks / SwiGLU with the factored Linear swapped) plus
    ``latent`` (a ModuleList of :class:`LatentGroup`, one per group)."""

    def __init__(self, experts: list[nn.Module], groups: int, dim: int, rank: int,
                 ranks: Optional[dict[tuple[int, str], int]] = None):
        super().__init__(experts)
        self.groups = group_ranges(len(experts), groups)
        ranks = ranks or {}
        lgroups = []
        self.group_kinds: list[list[str]] = []
        self.shared_input: list[bool] = []
        for g, members in enumerate(self.groups):
            kinds = expert_kinds(self[members[0]])
            for e in members:
                if expert_kinds(self[e]) != kinds or type(self[e]) is not type(self[members[0]]):
                    raise ValueError(f"latent group {g} mixes expert kinds ({members})")
            lg = LatentGroup({k: int(ranks.get((g, k), rank)) for k in kinds}, dim)
            for e in members:
                for k in kinds:
                    old = self[e].get_submodule(k)
                    assert isinstance(old, nn.Linear) and old.in_features == dim, (e, k, old)
                    new = LatentLinear(lg.proj(k), old.out_features, bias=old.bias is not None)
                    if isinstance(self[e], SwiGLU):
                        nn.init.kaiming_uniform_(new.A, a=math.sqrt(5))  # nn.Linear's own init, fan_in r
                    else:
                        small_init_init_(new.A, dim=new.rank)  # the package's proj_up init, fan_in r
                    if old.bias is not None:
                        with torch.no_grad():
                            new.bias.copy_(old.bias)
                    _swap(self[e], k, new)
            lgroups.append(lg)
            self.group_kinds.append(kinds)
            self.shared_input.append(all(isinstance(self[e], LatentSwiGLU) for e in members))
        self.latent = nn.ModuleList(lgroups)
        self.group_of = [g for g, m in enumerate(self.groups) for _ in m]

    # ------------------------------------------------------------------ structure
    def projection(self, g: int, kind: str) -> SharedProjection:
        return self.latent[g].proj(kind)

    def factored(self, e: int, kind: str) -> LatentLinear:
        return self[e].get_submodule(kind)

    def reset_row_counts(self) -> None:
        for m in self.latent.modules():
            if isinstance(m, SharedProjection):
                m.rows = 0

    # ------------------------------------------------------------------ dispatch
    def combine(self, u: torch.Tensor, r: Routing) -> torch.Tensor:
        """Same result as ``gate.combine`` (sparse dispatch, experts in index order), but for a
        group whose experts read u itself (mlp), B_g u is computed once for the tokens that hit
        the group, and each selected expert applies only its A_i."""
        n = u.shape[0]
        idx, wts = r.topk_idx, r.topk_weight
        out = torch.zeros_like(u)
        for g, members in enumerate(self.groups):
            in_g = ((idx >= members[0]) & (idx <= members[-1])).any(dim=-1)
            tok_g = in_g.nonzero(as_tuple=True)[0]
            if tok_g.numel() == 0:
                continue
            lat = None
            if self.shared_input[g]:
                ug = u.index_select(0, tok_g)
                lat = {k: self.projection(g, k)(ug) for k in self.group_kinds[g]}
                pos = torch.full((n,), -1, dtype=torch.long, device=u.device)
                pos[tok_g] = torch.arange(tok_g.numel(), device=u.device)
            for e in members:
                sel = idx == e
                tok = sel.any(dim=-1).nonzero(as_tuple=True)[0]
                if tok.numel() == 0:
                    continue
                w = (wts * sel.to(wts.dtype)).sum(dim=-1)[tok]
                if lat is not None:
                    p = pos.index_select(0, tok)
                    y = self[e].forward_latent({k: h.index_select(0, p) for k, h in lat.items()})
                else:
                    y = self.run(e, u.index_select(0, tok))
                out = out.index_add(0, tok, y * w.unsqueeze(-1))
        return out


# ----------------------------------------------------------------------------- factory

def default_rank(cfg: MoxEConfig) -> int:
    """``latent.rank`` if given, else D/2 (a placeholder: loading replaces it by the file's shapes)."""
    r = cfg.latent.get("rank") if cfg.latent else None
    return int(r) if r is not None else max(1, cfg.embedding_dim // 2)


def build_latent_bank(cfg: MoxEConfig, layer_idx: int, ranks: Optional[dict] = None) -> LatentExpertBank:
    d = cfg.embedding_dim
    if cfg.expert_type == "mlp":
        experts = [LatentSwiGLU(d, 2 * d) for _ in range(cfg.num_experts)]
    else:
        experts = list(EXPERT_FACTORIES[cfg.expert_type](cfg, layer_idx))  # the package blocks
    return LatentExpertBank(experts, cfg.latent_groups, d, default_rank(cfg), ranks)


def _latent_factory(cfg: MoxEConfig, layer_idx: int) -> LatentExpertBank:
    return build_latent_bank(cfg, layer_idx)


register_expert_type("latent", _latent_factory)


# ----------------------------------------------------------------------------- names / shapes

@dataclass
class LatentSlot:
    """One shared projection of a model: layer, group, kind, and its experts."""

    layer: int
    group: int
    kind: str
    experts: list[int]

    @property
    def b_name(self) -> str:
        return f"layers.{self.layer}.experts.latent.{self.group}.{self.kind}.B"

    def a_name(self, e: int) -> str:
        return f"layers.{self.layer}.experts.{e}.{self.kind}.A"

    def dense_name(self, e: int) -> str:
        return f"layers.{self.layer}.experts.{e}.{self.kind}.weight"


def latent_slots(model: nn.Module) -> list[LatentSlot]:
    """Every (layer, group, kind) of a latent MoxEModel, in order."""
    out = []
    for l, layer in enumerate(model.layers):
        bank = layer.experts
        for g, members in enumerate(bank.groups):
            for k in bank.group_kinds[g]:
                out.append(LatentSlot(l, g, k, list(members)))
    return out


class LatentFormatError(ValueError):
    pass


def check_latent_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[tuple[int, int, str], int]:
    """The load checks of docs/LATENT_FORMAT.md.  Returns the rank of every (layer, group, kind)."""
    d = model.cfg.embedding_dim
    ranks = {}
    for s in latent_slots(model):
        bank = model.layers[s.layer].experts
        if s.b_name not in tensors:
            raise LatentFormatError(f"latent checkpoint: missing {s.b_name}")
        b = tensors[s.b_name]
        if b.dim() != 2 or b.shape[1] != d or b.shape[0] < 1:
            raise LatentFormatError(f"{s.b_name}: shape {tuple(b.shape)}, expected (r, {d})")
        r = b.shape[0]
        for e in s.experts:
            if s.dense_name(e) in tensors:
                raise LatentFormatError(f"latent checkpoint holds the dense {s.dense_name(e)}; a factored matrix "
                                        f"is stored only as {s.a_name(e)} and {s.b_name}")
            if s.a_name(e) not in tensors:
                raise LatentFormatError(f"latent checkpoint: missing {s.a_name(e)}")
            a = tensors[s.a_name(e)]
            out = bank.factored(e, s.kind).out_features
            if tuple(a.shape) != (out, r):
                raise LatentFormatError(f"{s.a_name(e)}: shape {tuple(a.shape)}, expected ({out}, {r}) "
                                        f"(r = rows of {s.b_name})")
        ranks[(s.layer, s.group, s.kind)] = r
    return ranks


def fit_latent_shapes_(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Check the latent tensors and resize every A / B of ``model`` to the file's ranks (so each
    layer / group / kind may have its own rank)."""
    ranks = check_latent_tensors(model, tensors)
    for s in latent_slots(model):
        r = ranks[(s.layer, s.group, s.kind)]
        bank = model.layers[s.layer].experts
        proj = bank.projection(s.group, s.kind)
        if proj.rank != r:
            proj.B = nn.Parameter(torch.empty(r, proj.B.shape[1], dtype=proj.B.dtype, device=proj.B.device))
        for e in s.experts:
            lin = bank.factored(e, s.kind)
            if lin.rank != r:
                lin.A = nn.Parameter(torch.empty(lin.out_features, r, dtype=lin.A.dtype, device=lin.A.device))
    return model


def model_ranks(model: nn.Module) -> dict[tuple[int, int, str], int]:
    return {(s.layer, s.group, s.kind): model.layers[s.layer].experts.projection(s.group, s.kind).rank
            for s in latent_slots(model)}


def set_ranks_(model: nn.Module, ranks: dict[tuple[int, int, str], int]) -> nn.Module:
    """Resize A / B to the given ranks (fresh values from the default init rules)."""
    for s in latent_slots(model):
        r = ranks.get((s.layer, s.group, s.kind))
        if r is None:
            continue
        bank = model.layers[s.layer].experts
        proj = bank.projection(s.group, s.kind)
        proj.B = nn.Parameter(torch.randn(r, proj.B.shape[1]) / math.sqrt(proj.B.shape[1]))
        for e in s.experts:
            lin = bank.factored(e, s.kind)
            lin.A = nn.Parameter(torch.empty(lin.out_features, r))
            small_init_init_(lin.A, dim=r)
    return model


# ----------------------------------------------------------------------------- conversion

@dataclass
class SlotReport:
    layer: int
    group: int
    kind: str
    experts: list[int]
    out: int
    dim: int
    rank: int
    full_rank: int
    singular_values: list[float]
    rel_err: float  # ||M - M_r||_F / ||M||_F over the stacked group matrix
    expert_rel_err: list[float]  # ||W_i - A_i B_g||_F / ||W_i||_F per expert
    energy: float  # sum_{j<r} s_j^2 / sum s_j^2

    @property
    def dense_params(self) -> int:
        return len(self.experts) * self.out * self.dim

    @property
    def latent_params(self) -> int:
        return self.rank * self.dim + len(self.experts) * self.out * self.rank


@dataclass
class ConversionReport:
    slots: list[SlotReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    expert_params_before: int = 0
    expert_params_after: int = 0


def choose_rank(s: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None) -> int:
    """``rank``: min(rank, full); ``energy``: the smallest r with sum_{j<r} s_j^2 >= energy * sum s_j^2
    (float64), at least 1.  Exactly one of the two."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank / energy")
    full = s.numel()
    if rank is not None:
        if rank < 1:
            raise ValueError("rank must be >= 1")
        return min(int(rank), full)
    if not 0.0 < energy <= 1.0:
        raise ValueError("energy must be in (0, 1]")
    e2 = s.double() ** 2
    tot = float(e2.sum())
    if tot == 0.0:
        return 1
    cum = torch.cumsum(e2, 0) / tot
    r = int((cum < energy).sum()) + 1
    return max(1, min(r, full))


@torch.no_grad()
def factorize_group(ws: list[torch.Tensor], rank: Optional[int] = None, energy: Optional[float] = None):
    """LATENT.md: M = [W_1; ...; W_s] = U S V^T (float64), B = V_r^T, A_i = W_i B^T.
    Returns (B (r, D), [A_i (out, r)], singular values, r)."""
    m = torch.cat([w.double() for w in ws], 0)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = choose_rank(s, rank, energy)
    b = vh[:r].contiguous()
    a = [(w.double() @ b.T).contiguous() for w in ws]
    return b, a, s, r


def engine_param_count(model: nn.Module) -> tuple[int, int]:
    """(all parameters, expert parameters) as stored in the engine file (tied lm_head once)."""
    from .export import engine_state_dict
    sd = engine_state_dict(model)
    tot = sum(v.numel() for v in sd.values())
    exp = sum(v.numel() for k, v in sd.items() if ".experts." in k)
    return tot, exp


@torch.no_grad()
def convert_to_latent(model: nn.Module, rank: Optional[int] = None, energy: Optional[float] = None,
                      groups: Optional[int] = None) -> tuple[nn.Module, ConversionReport]:
    """Data-free conversion of a dense-expert MoxEModel: the stacked SVD per (layer, kind, group)
    (LATENT.md).  Returns the latent model (every other tensor copied) and the report."""
    from .export import load_state_into
    from .model import MoxEModel

    if getattr(model.cfg, "is_latent", False):
        raise ValueError("model is already latent")
    cfg = copy.deepcopy(model.cfg)
    cfg.latent = {"groups": int(groups if groups is not None else 2)}
    cfg.validate()
    dense_sd = {k: v.detach() for k, v in model.state_dict().items()}
    lat = MoxEModel(copy.deepcopy(cfg))
    tensors: dict[str, torch.Tensor] = {}
    factored = set()
    rep = ConversionReport()
    for s in latent_slots(lat):
        ws = [dense_sd[s.dense_name(e)] for e in s.experts]
        b, a_list, sv, r = factorize_group(ws, rank, energy)
        tensors[s.b_name] = b.float()
        err2 = []
        for e, w, a in zip(s.experts, ws, a_list):
            tensors[s.a_name(e)] = a.float()
            factored.add(s.dense_name(e))
            wd = w.double()
            err2.append(float(torch.linalg.norm(wd - a @ b) / torch.linalg.norm(wd).clamp_min(1e-300)))
        e2 = sv ** 2
        tot = float(e2.sum())
        rel = math.sqrt(float(e2[r:].sum()) / tot) if tot > 0 else 0.0
        rep.slots.append(SlotReport(s.layer, s.group, s.kind, s.experts, ws[0].shape[0], ws[0].shape[1], r, sv.numel(),
                                    [float(x) for x in sv], rel, err2, float(e2[:r].sum()) / tot if tot > 0 else 1.0))
    for k, v in dense_sd.items():
        if k not in factored:
            tensors[k] = v
    if lat.lm_head.weight is lat.token_embedding.weight:
        tensors.pop("lm_head.weight", None)
    load_state_into(lat, tensors)
    lat.eval()
    rep.params_before, rep.expert_params_before = engine_param_count(model)
    rep.params_after, rep.expert_params_after = engine_param_count(lat)
    return lat, rep


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """The dense-expert model with W_i = A_i B_g (float64 product, stored f32); everything else copied."""
    from .export import load_state_into
    from .model import MoxEModel

    cfg = copy.deepcopy(model.cfg)
    cfg.latent = None
    dense = MoxEModel(cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    for s in latent_slots(model):
        b = sd.pop(s.b_name).double()
        for e in s.experts:
            sd[s.dense_name(e)] = (sd.pop(s.a_name(e)).double() @ b).float()
    if dense.lm_head.weight is dense.token_embedding.weight:
        sd.pop("lm_head.weight", None)
    load_state_into(dense, sd)
    return dense.eval()


def format_report(rep: ConversionReport) -> str:
    lines = ["layer  group  kind            experts  out x D      rank/full  energy     rel_err   per-expert rel_err"]
    for s in rep.slots:
        lines.append(f"{s.layer:5d}  {s.group:5d}  {s.kind:14s}  {s.experts[0]}-{s.experts[-1]:<5d}  "
                     f"{s.out:4d} x {s.dim:<4d}  {s.rank:4d}/{s.full_rank:<4d}  {s.energy:.6f}  {s.rel_err:.3e}  "
                     + " ".join(f"{x:.3e}" for x in s.expert_rel_err))
    fb = sum(s.dense_params for s in rep.slots)
    fa = sum(s.latent_params for s in rep.slots)
    lines.append(f"factored matrices: {fb} -> {fa} parameters ({fa / max(fb, 1):.3f}x)")
    lines.append(f"expert parameters: {rep.expert_params_before} -> {rep.expert_params_after}")
    lines.append(f"all parameters:    {rep.params_before} -> {rep.params_after}")
    return "\n".join(lines)
