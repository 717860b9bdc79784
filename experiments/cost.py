"""What a run costs before it runs: training tokens, FLOPs counted by torch on the meta device, and the
GPU-hours they take at an assumed model FLOPs utilization (small models reach less: read as lower bounds)."""

import dataclasses
import functools

import torch

import perf
from config import Config, ModelConfig
from model import GPT

GPU, MFU = "H100", 0.4  # training FLOPs over an H100 (SXM5)'s dense bf16 peak at 40% MFU
PEAK = perf.peak_for_name(GPU)


@functools.cache
def flops_per_token(model: tuple) -> float:
    """Forward + backward FLOPs per token of a ModelConfig (as a tuple, to cache it), counted by torch:
    6 N for the matmuls (N with the LM head) plus 12 L n T for attention."""
    with torch.device("meta"):
        return perf.train_flops_per_token(GPT(ModelConfig(*model)))


def run_tokens(cfg: Config) -> int:
    return cfg.train.max_iters * cfg.train.batch_size * cfg.model.block_size


def train_flops(cfg: Config) -> float:
    """Evaluation is not counted."""
    return run_tokens(cfg) * flops_per_token(dataclasses.astuple(cfg.model))


def gpu_hours(flops: float) -> float:
    return flops / (PEAK * MFU) / 3600
