"""Model FLOPs, counted by torch rather than by formula, and the peak a device can deliver (for MFU)."""

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peak FLOP/s (vendor datasheets, without sparsity), by a substring of
# torch.cuda.get_device_name; the first match in this order wins, so each form factor comes before its
# family's plain name. The H100s differ by form factor: SXM5 ("NVIDIA H100 80GB HBM3") 989 TF, NVL 835,
# PCIe 756. PEAK_BF16["H100"] is the SXM5 figure, the one the expected numbers assume.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5: "NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB"
    "H800 PCIe": 756e12,
    "H800": 989e12,
    "H200 NVL": 835e12,
    "H200": 989e12,  # SXM: "NVIDIA H200"
    "GH200": 989e12,
    "A100": 312e12,  # SXM4 and PCIe alike: "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,  # fp16: V100 has no bf16 (train.py refuses bf16 there)
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name`, or None for one not in the table (MFU is then not
    reported rather than wrong)."""
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Forward + backward FLOPs per token of a full-length sequence (attention included), counted on the
    meta device: no memory, no time, and no formula to keep in sync with model.py. Model FLOPs: the loss is
    taken from the full logits (the chunked loss does the same matmuls inside one opaque op, which the
    counter would not see), and the model runs in eval mode, so activation checkpointing's recomputation is
    not counted (MFU, not hardware FLOPs utilization); dropout adds no FLOPs the counter sees. The model is
    rebuilt from its config on the meta device: a copy of the live one was a transient of its size on its device
    (4 GiB at n=4096)."""
    with torch.device("meta"):
        meta = type(model)(model.cfg).eval()
    idx = torch.zeros(1, model.cfg.block_size, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        logits, _ = meta(idx)
        F.cross_entropy(logits.float().view(-1, logits.size(-1)), idx.view(-1)).backward()
    return counter.get_total_flops() / model.cfg.block_size
