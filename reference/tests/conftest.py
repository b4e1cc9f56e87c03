import sys
from pathlib import Path

import torch

REF = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REF))
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
