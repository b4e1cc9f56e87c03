"""The engine's checkpoint format (MODEL.md section 7): a directory with ``config.json`` and
``model.safetensors``.  Tensor names are the reference's module tree (the package's own names
inside each block).  ``lm_head.weight`` is omitted when the weights are tied.

sLSTM recurrent kernel / bias layouts (the package's own conversions are used, never re-derived):
  "vanilla"  ``_recurrent_kernel_`` (NH, 4*DH, DH), ``_bias_`` (4*D,) gate-major b[g*D + h*DH + j]
  "cuda"     ``_recurrent_kernel_`` (NH, DH, 4*DH), ``_bias_`` (4*D,) head-major b[h*4*DH + g*DH + j]
The config's ``xlstm.slstm_block.slstm.backend`` names the layout stored in the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla

from .config import MoxEConfig
from .latent import fit_latent_shapes_
from .model import DenseXLSTMModel, build_model

RK = "_recurrent_kernel_"
BIAS = "_bias_"


def _slstm_cells(model: nn.Module) -> dict[str, sLSTMCell_vanilla]:
    return {n: m for n, m in model.named_modules() if isinstance(m, sLSTMCell_vanilla)}


_cuda_cache: dict = {}


def _cuda_twin(cell: sLSTMCell_vanilla) -> sLSTMCell_cuda:
    """A package ``sLSTMCell_cuda`` with the same dims, built WITHOUT compiling the kernel; only its
    layout conversion methods are used."""
    key = (cell.config.hidden_size, cell.config.num_heads)
    if key not in _cuda_cache:
        c = copy.deepcopy(cell.config)
        c.backend = "cuda"
        _cuda_cache[key] = sLSTMCell_cuda(c, skip_backend_init=True)
    return _cuda_cache[key]


def vanilla_to_cuda(cell: sLSTMCell_vanilla, name: str, t: torch.Tensor) -> torch.Tensor:
    cu = _cuda_twin(cell)
    if name == RK:
        return cu._recurrent_kernel_ext2int(cell._recurrent_kernel_int2ext(t)).contiguous()
    if name == BIAS:
        return cu._bias_ext2int(cell._bias_int2ext(t)).contiguous()
    raise KeyError(name)


def cuda_to_vanilla(cell: sLSTMCell_vanilla, name: str, t: torch.Tensor) -> torch.Tensor:
    cu = _cuda_twin(cell)
    if name == RK:
        return cell._recurrent_kernel_ext2int(cu._recurrent_kernel_int2ext(t)).contiguous()
    if name == BIAS:
        return cell._bias_ext2int(cu._bias_int2ext(t)).contiguous()
    raise KeyError(name)


def _convert_layout(model: nn.Module, sd: dict[str, torch.Tensor], to: str) -> dict[str, torch.Tensor]:
    cells = _slstm_cells(model)
    out = dict(sd)
    for name in list(sd):
        prefix, _, leaf = name.rpartition(".")
        if leaf in (RK, BIAS) and prefix in cells:
            fn = vanilla_to_cuda if to == "cuda" else cuda_to_vanilla
            out[name] = fn(cells[prefix], leaf, sd[name])
    return out


def engine_state_dict(model: nn.Module, slstm_layout: str = "vanilla", dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of the engine file (vanilla layout unless asked; tied lm_head omitted)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    tied = model.lm_head.weight is model.token_embedding.weight
    if tied:
        sd.pop("lm_head.weight", None)
    if slstm_layout != "vanilla":
        sd = _convert_layout(model, sd, slstm_layout)
    return {k: v.to(dtype).contiguous().clone() for k, v in sd.items()}


def save_engine_dir(model: nn.Module, out_dir, slstm_layout: str = "vanilla", dtype=torch.float32,
                    config: Optional[MoxEConfig] = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (MODEL.md section 7)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = (config or model.cfg).with_slstm_layout(slstm_layout)
    (out_dir / "config.json").write_text(cfg.to_json())
    save_file(engine_state_dict(model, slstm_layout, dtype), str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def load_state_into(model: nn.Module, tensors: dict[str, torch.Tensor], slstm_layout: str = "vanilla", strict: bool = True) -> None:
    sd = {k: v.float() for k, v in tensors.items()}
    if slstm_layout != "vanilla":
        sd = _convert_layout(model, sd, "vanilla")
    if getattr(model.cfg, "is_latent", False):
        fit_latent_shapes_(model, sd)  # checks docs/LATENT_FORMAT.md; ranks from the tensor shapes
    tied = model.lm_head.weight is model.token_embedding.weight
    if tied:
        emb = sd.get("token_embedding.weight")
        lm = sd.pop("lm_head.weight", None)
        if lm is not None and emb is not None and not torch.equal(lm, emb):
            raise ValueError("tie_weights is set but lm_head.weight differs from token_embedding.weight")
        sd["lm_head.weight"] = sd["token_embedding.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")


def load_engine_dir(path) -> nn.Module:
    """Read an engine model directory into a reference model (MoxEModel or DenseXLSTMModel)."""
    path = Path(path)
    cfg = MoxEConfig.from_json(path / "config.json")
    layout = cfg.slstm_layout
    model = build_model(cfg.with_slstm_layout("vanilla"))
    load_state_into(model, load_file(str(path / "model.safetensors")), layout)
    model.cfg = cfg.with_slstm_layout("vanilla")
    return model.eval()


# ----------------------------------------------------------------------------- plain xlstm import

def xlstm_object_from_package_config(pcfg) -> dict:
    """The package's own ``xLSTMLMModelConfig`` as an ``"xlstm"`` JSON object (all fields, incl.
    internal ones; the engine accepts and ignores what it does not use)."""
    return json.loads(json.dumps(dataclasses.asdict(pcfg)))


def import_xlstm_lm_state_dict(state_dict: dict[str, torch.Tensor], xlstm: dict, tie_weights: Optional[bool] = None) -> DenseXLSTMModel:
    """A plain ``xLSTMLMModel`` state_dict (token_embedding.weight, xlstm_block_stack.blocks.{i}.*,
    xlstm_block_stack.post_blocks_norm.weight, lm_head.weight; sLSTM in vanilla layout) -> dense
    reference model."""
    tw = bool(xlstm.get("tie_weights", False)) if tie_weights is None else tie_weights
    cfg = MoxEConfig(xlstm=copy.deepcopy(xlstm), model_type="xlstm", tie_weights=tw)
    model = DenseXLSTMModel(cfg)
    load_state_into(model, state_dict, "vanilla")
    return model.eval()


def save_plain_xlstm_dir(model: DenseXLSTMModel, out_dir) -> None:
    """A dense model saved the way a plain xlstm user has it: the package's own config dataclass
    dumped in full under ``xlstm`` (``model_type`` "xlstm") and the raw ``xLSTMLMModel.state_dict()``
    (``lm_head.weight`` present even when tied; sLSTM vanilla layout)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = xlstm_object_from_package_config(model.config)
    cfg = {"model_type": "xlstm", "xlstm": x}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    sd = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
