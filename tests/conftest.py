import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # the repo runs from its root
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
