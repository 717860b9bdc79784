"""What a run costs before it runs: training tokens, FLOPs counted by torch on the meta device, and the
GPU-hours they take at an assumed model FLOPs utilization (small models reach less: read as lower bounds);
and the peak memory of one rank at the run's micro-batch (on a GPU, or on CPU in float32), estimated from
parameter counts, the optimizers' state and workspace (optim/registry.py) and the activation bytes that
`python -m bench.memory` measures (peak_memory_gib)."""

import collections
import dataclasses
import functools
import math

import torch

import model as model_module
import perf
from config import Config, ModelConfig
from model import GPT
from mup.scaling import table_for
from optim import registry, split
from optim.hybrid import REDUCE_BUCKET

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


# Saved activation bytes per token per block, per unit of width n, eager, no checkpointing, in bf16 autocast (GPUs)
# and in float32 (CPUs), with and without LayerNorm: bench/memory.py's (c) measures them (bf16 40.1-40.2 and 32.1,
# float32 64.1-64.2 and 56.1, at n = 128, 256; rounded).
ACTIVATION_BYTES = {"bfloat16": {"layernorm": 40, "none": 32}, "float32": {"layernorm": 64, "none": 56}}
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


def owners(cfg: Config, table: list, world: int) -> dict:
    """{hidden matrix: its rank} where `world` ranks split the hidden matrices' optimizer (optim/split.py; a
    hybrid on several ranks), else {}."""
    hidden, other = registry.rules_of(cfg.optim.name)
    if world == 1 or hidden == other:
        return {}
    flops = registry.RULES[hidden].step_flops
    return split.assign([(r.name, tuple(r.shape), flops(r.shape, cfg.optim)) for r in table if r.optimizer == hidden],
                        world)


def optimizer_bytes(cfg: Config, world: int = 1, device: str = "cuda") -> tuple[float, float]:
    """(state kept between steps, transient workspace of a step) in bytes on the most loaded of `world` ranks: each
    tensor's update rule's state (optim/registry.py's RULES, counted from the optimizers' buffers) summed over the
    tensors the rank steps (under a split, its own hidden matrices), and the largest workspace of any one step of
    it: a tensor's (a stack's of same-shape matrices where Muon batches: on CUDA, or optim.ns_batched; all of a
    foreach rule's tensors), or the split's gather (its padded share and the all-gathered shares, float32)."""
    table = table_for(cfg)
    owner = owners(cfg, table, world)
    batched = device == "cuda" or cfg.optim.ns_batched
    state = [0] * world
    shapes = [collections.defaultdict(collections.Counter) for _ in range(world)]  # {rule: {shape: tensors}}
    shares = [0] * world
    for r in table:
        ranks = [owner[r.name]] if r.name in owner else range(world)
        for rank in ranks:
            state[rank] += registry.RULES[r.optimizer].state_bytes(r.shape, cfg.optim)
            shapes[rank][r.optimizer][tuple(r.shape)] += 1
        if r.name in owner:
            shares[owner[r.name]] += math.prod(r.shape)
    workspace = 0
    for rank in range(world):
        for rule, counts in shapes[rank].items():
            spec = registry.RULES[rule]
            each = {shape: spec.workspace_bytes(shape, cfg.optim) for shape in counts}
            if spec.fused_on_cuda and device == "cuda":
                continue
            if spec.foreach:
                workspace = max(workspace, sum(counts[shape] * b for shape, b in each.items()))
            elif spec.stacks and batched:
                workspace = max(workspace, *(min(counts[s], max(1, registry.MAX_STACK_ELEMENTS // math.prod(s))) * b
                                             for s, b in each.items()))
            else:
                workspace = max(workspace, *each.values())
    if owner:  # the padded share and the gathered shares; gloo (CPU) gathers through a copy of its own
        workspace = max(workspace, 4 * (world + 1 + (world if device == "cpu" else 0)) * max(shares))
    return max(state), workspace


def optimizer_flops(cfg: Config) -> float:
    """FLOPs of one optimizer step over every tensor (RULES' count, refreshes amortized over their interval)."""
    return sum(registry.RULES[rec.optimizer].step_flops(rec.shape, cfg.optim) for rec in table_for(cfg))


def peak_memory_gib(cfg: Config, world: int, device: str = "cuda") -> dict:
    """The peak memory of one of `world` ranks training `cfg` at its micro-batch on `device` ("cuda": bf16 autocast
    unless train.dtype says float32; "cpu": its train.dtype, float32 by default), by part, and their "total", in
    GiB. Eager; torch.compile only lowers it.

    Kept throughout: the fp32 weights and the optimizer state (optimizer_bytes; under a split, the rank's own
    matrices'). On top, the largest of three phases:
    - forward and backward: the activations autograd saves (ACTIVATION_BYTES, measured by bench/memory.py; with
      model.activation_checkpointing, each block's fp32 input plus one block's activations while it is
      recomputed), the embedding's and the chunked loss's working sets, the bf16 weight copies under autocast, and
      the gradients: under DDP they are its buckets, kept (trainer/step.py); one process frees them between
      steps and rebuilds them as backward frees the activations, so there they count against the rest;
    - the optimizer step: gradients and the step's workspace;
    - Sophia's Hessian pass: the forward and backward's, one sequence's logits and float32 softmax, and the flat
      buffer its gradients are summed over ranks in.
    Measured against torch.profiler's peaks on CPU for every optimizer (tests/test_memory.py)."""
    m, t = cfg.model, cfg.train
    autocast = t.dtype == "bfloat16" or (t.dtype == "auto" and device == "cuda")
    total = parameter_counts(dataclasses.astuple(m))["total"]
    state, workspace = optimizer_bytes(cfg, world, device)
    tokens = t.micro_batch_size * m.block_size
    chunk = min(model_module.LOSS_CHUNK_LOGITS, tokens * m.vocab_size)
    block = ACTIVATION_BYTES["bfloat16" if autocast else "float32"][m.norm] * m.n_embd * tokens
    parts = {
        "weights": 4 * total,
        "optimizer state": state,
        "gradients": 4 * total,
        "bf16 weight copies": 2 * total if autocast else 0,
        "activations": (4 * m.n_embd * tokens * m.n_layer + block) if m.activation_checkpointing
        else block * m.n_layer,
        # a chunk's logits (4 bytes each in float32; measured 10.8 under bf16 autocast: the bf16 logits, their
        # fp32 copy, softmax and gradient), the fp32 weight-gradient scratch, the head's input and its gradient,
        # the embedding's two lookups
        "loss": (11 if autocast else 4) * chunk + 4 * m.vocab_size * m.n_embd + 20 * tokens * m.n_embd,
        "optimizer step": workspace,
        # one sequence's logits and their float32 softmax, drawn from while the activations are kept
        "Sophia's pass": m.block_size * m.vocab_size * (6 if autocast else 8) if cfg.optim.name == "sophia" else 0,
    }
    passes = parts["bf16 weight copies"] + parts["activations"] + parts["loss"]
    if world > 1:
        passes += parts["gradients"]
    else:
        passes = max(passes, parts["gradients"])
    phases = [passes, parts["gradients"] + workspace]
    if parts["Sophia's pass"]:  # and after its backward, the flat buffer its gradients are summed over ranks in
        phases += [passes + parts["Sophia's pass"], parts["gradients"] + 4 * min(total, REDUCE_BUCKET) * (world > 1)]
    parts = {k: v / 2**30 for k, v in parts.items()}
    return {**parts, "total": (4 * total + state + max(phases)) / 2**30}
