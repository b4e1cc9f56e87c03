"""PyTorch reference of MoxE built on the official ``xlstm`` package (2.0.6).

All xLSTM math (sLSTM / mLSTM blocks, conv, norms, FFN) is the package's own code; this package
adds the MoxE layer (mixer + entropy-aware gate + experts), telemetry / auxiliary losses, the
explicit-state step API and the engine checkpoint format.  CPU only, sLSTM backend "vanilla".
"""

from .blocks import EXPERT_FACTORIES, ExpertBank, SwiGLU, build_mixer, make_mlstm_block, make_slstm_block, register_expert_type
from .config import MoxEConfig, xlstm_object
from .export import (
    engine_state_dict,
    import_xlstm_lm_state_dict,
    load_engine_dir,
    save_engine_dir,
    save_plain_xlstm_dir,
)
from .latent import (
    LatentExpertBank,
    LatentFormatError,
    LatentLinear,
    SharedProjection,
    convert_to_latent,
    densify,
    format_report,
    latent_slots,
)
from .gate import EntropyAwareGate, Routing, StandardRouter, Telemetry, compute_telemetry
from .model import DEFAULT_AUX_WEIGHTS, DenseXLSTMModel, MoxEAux, MoxELayer, MoxEModel, build_model, step_fn, training_loss
from .randomize import randomize_
from .state import clone_state, zero_stack_state

__all__ = [n for n in dir() if not n.startswith("_")]
