"""What a run costs before it runs: training tokens, FLOPs counted by torch on the meta device, and the
GPU-hours they take at an assumed model FLOPs utilization (small models reach less: read as lower bounds);
and the peak GPU memory of one rank at the run's micro-batch, estimated from parameter counts and the
activation bytes that `python -m bench.memory` measures (peak_memory_gib)."""

import dataclasses
import functools

import torch

import model as model_module
import perf
from config import Config, ModelConfig
from model import GPT
from mup.scaling import table_for
from optim import registry

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


# Saved activation bytes per token per block, per unit of width n, in bf16 autocast (eager, no checkpointing),
# with and without LayerNorm: bench/memory.py's (c) measures them (40.1-40.2 and 32.1 at n = 128, 256; rounded).
ACTIVATION_BYTES = {"layernorm": 40, "none": 32}
# The configs' micro-batches divide batch / 8 and keep peak_memory_gib within CHOICE_GIB, half an 80 GB card (room
# for fragmentation, the CUDA context, NCCL, the estimate's error); tests/test_configs.py holds every GPU run to
# CARD_GIB, what torch sees of an 80 GB H100 (79.2 GiB) less 10%, and sweep.py --dry-run flags runs above it.
CHOICE_GIB, CARD_GIB = 40, 71


@functools.cache
def parameter_counts(model: tuple) -> dict:
    """Of a ModelConfig (as a tuple): all parameters and those of the blocks' matrices (the hidden ones), on the
    meta device."""
    with torch.device("meta"):
        gpt = GPT(ModelConfig(*model))
    hidden = [p.numel() for name, p in gpt.named_parameters() if name.startswith("blocks.") and p.ndim == 2]
    return {"total": sum(p.numel() for p in gpt.parameters()), "hidden": sum(hidden)}


def optimizer_bytes(cfg: Config) -> tuple[float, float]:
    """(state kept between steps, transient workspace of a step) in bytes: each tensor's update rule's state
    (optim/registry.py's RULES, counted from the optimizers' buffers) summed over the scaling table, and the
    largest workspace of any one tensor's step."""
    table = table_for(cfg)
    state = sum(registry.RULES[rec.optimizer].state_bytes(rec.shape, cfg.optim) for rec in table)
    workspace = max(registry.RULES[rec.optimizer].workspace_bytes(rec.shape, cfg.optim) for rec in table)
    return state, workspace


def optimizer_flops(cfg: Config) -> float:
    """FLOPs of one optimizer step over every tensor (RULES' count, refreshes amortized over their interval)."""
    return sum(registry.RULES[rec.optimizer].step_flops(rec.shape, cfg.optim) for rec in table_for(cfg))


def peak_memory_gib(cfg: Config, world: int) -> dict:
    """The peak GPU memory of one of `world` ranks training `cfg` at its micro-batch, by part, and their "total",
    in GiB: fp32 weights and gradients, optimizer state (optimizer_bytes), bf16 weight copies (autocast), DDP's
    gradient buckets (world > 1), the activations autograd saves (ACTIVATION_BYTES, measured by bench/memory.py;
    with model.activation_checkpointing, each block's fp32 input plus one block's activations while it is
    recomputed), and the chunked loss's working set. Bf16 eager; torch.compile only lowers it."""
    m, t = cfg.model, cfg.train
    counts = parameter_counts(dataclasses.astuple(m))
    total = counts["total"]
    state, transient = optimizer_bytes(cfg)
    tokens = t.micro_batch_size * m.block_size
    chunk = min(model_module.LOSS_CHUNK_LOGITS, tokens * m.vocab_size)
    block = ACTIVATION_BYTES[m.norm] * m.n_embd * tokens  # one block's saved activations
    parts = {
        "weights + grads": 8 * total,
        "optimizer": state + transient,
        "bf16 weight copies": 2 * total,
        "DDP buckets": 4 * total if world > 1 else 0,
        "activations": (4 * m.n_embd * tokens * m.n_layer + block) if m.activation_checkpointing
        else block * m.n_layer,
        # the chunk's logits in fp32 and bf16, the fp32 weight-gradient scratch, the input and its gradient
        "loss": 6 * chunk + 4 * m.vocab_size * m.n_embd + 12 * tokens * m.n_embd,
    }
    parts = {k: v / 2**30 for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}
