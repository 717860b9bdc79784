"""Model FLOPs, counted by torch rather than by formula, and the peak a device can deliver (for MFU)."""

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 peak FLOP/s by device name substring (vendor datasheets, without sparsity).
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def train_flops_per_token(model: torch.nn.Module) -> float:
    """Forward + backward FLOPs per token of a full-length sequence (attention included), counted on the
    meta device: no memory, no time, and no formula to keep in sync with model.py."""
    meta = copy.deepcopy(model).to("meta")
    idx = torch.zeros(1, model.cfg.block_size, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        _, loss = meta(idx, idx)
        loss.backward()
    return counter.get_total_flops() / model.cfg.block_size
