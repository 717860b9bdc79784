"""One optimizer step and one evaluation: the computation shared by training and the coordinate check."""

from contextlib import nullcontext

import numpy as np
import torch

from config import Config
from data.loader import FixedWindows, TokenBatches
from optim.schedule import lr_factor
from trainer.runtime import Runtime

CURVATURE = 2**32 - 1  # the "micro-batch index" of the curvature pass's seeds: no batch has it


def seed_of(*keys: int) -> int:
    """A 64-bit seed that is a function of `keys` alone."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def dropout_seed(seed: int, step: int, micro_step: int) -> int:
    """The seed of a micro-batch's dropout masks. Like its tokens, they are a function of (seed, step, global
    micro-batch), not of a generator's history: ranks draw different masks, any number of ranks trains the
    same model, and a resumed run needs no RNG state from its checkpoint."""
    return seed_of(seed, step, micro_step)


def train_step(model, opt, batches: TokenBatches, step: int, cfg: Config, rt: Runtime, raw=None) -> torch.Tensor:
    """Forward and backward over this rank's micro-batches of global step `step` (0-based), clip, update.
    `raw` is the module inside a compiled or DDP `model`. Returns the step's mean loss on this rank as a
    device tensor: reading it is the caller's host sync.

    Under DDP the gradients stay DDP's bucket views (gradient_as_bucket_view, zero_grad(set_to_none=False)):
    set to None, every no_sync micro-step would allocate fresh gradients next to the buckets, a second fp32
    copy of every gradient (~3.7 GiB at n=4096)."""
    accum = cfg.train.batch_size // (cfg.train.micro_batch_size * rt.world)
    opt.set_lr_factor(lr_factor(step, cfg.optim, cfg.train.max_iters))
    total = torch.zeros((), device=rt.device)
    for micro in range(accum):
        # the global micro-batch index fixes each sample, so any number of ranks sees the same batch
        global_micro = rt.rank * accum + micro
        x, y = rt.to_device(batches.get(step, global_micro, cfg.train.micro_batch_size))
        if cfg.model.dropout > 0:
            torch.manual_seed(dropout_seed(cfg.train.seed, step, global_micro))
        sync = model.no_sync() if rt.ddp and micro < accum - 1 else nullcontext()
        with sync, rt.autocast:
            loss = model(x, y)[1] / accum
        loss.backward()
        total += loss.detach()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=not rt.ddp)
    if opt.wants_curvature(step):
        curvature(opt, raw or model, batches, step, cfg, rt)
    return total


def curvature(opt, raw, batches: TokenBatches, step: int, cfg: Config, rt: Runtime) -> None:
    """Sophia's Hessian estimate after step `step`, on the first optim.hessian_batch_size sequences of the step's
    batch (all of them if it is smaller), split across ranks: each rank takes a contiguous slice in micro-batches
    of at most train.micro_batch_size, and update_curvature sums the gradients over ranks. Labels are drawn per
    sequence from (seed, step, sequence), so any number of ranks and any micro-batch give the same estimate up to
    float rounding (dropout masks, when there is dropout, follow (seed, step, first sequence of a micro-batch),
    as training's follow its micro-batches)."""
    t = cfg.train
    count = min(cfg.optim.hessian_batch_size, t.batch_size)
    x, _ = batches.get(step, 0, count)
    first, last = rt.rank * count // rt.world, (rt.rank + 1) * count // rt.world
    micro_batches = []
    for i in range(first, last, t.micro_batch_size):
        end = min(i + t.micro_batch_size, last)
        labels = [seed_of(t.seed, step, CURVATURE, 0, k) for k in range(i, end)]
        micro_batches.append((rt.to_device((x[i:end],))[0], labels, seed_of(t.seed, step, CURVATURE, 1, i)))
    opt.update_curvature(raw, micro_batches, rt.autocast, count * x.size(1), set_to_none=not rt.ddp)


@torch.no_grad()
def evaluate(model, val: FixedWindows, micro_batch_size: int, rt: Runtime) -> float:
    """Mean token loss over the whole validation set. Each rank takes its share of the windows; loss sums and
    token counts are added over ranks, so the number is the same for any ranks and micro-batch. `model` is
    the uncompiled module: switching grad mode and train/eval would make a compiled one recompile."""
    model.eval()
    loss_sum, tokens = torch.zeros((), dtype=torch.float64, device=rt.device), 0
    for x, y in val.shard(rt.rank, rt.world, micro_batch_size):
        x, y = rt.to_device((x, y))
        with rt.autocast:
            loss_sum += model(x, y)[1].double() * y.numel()
        tokens += y.numel()
    model.train()
    totals = torch.stack([loss_sum, torch.tensor(float(tokens), dtype=torch.float64, device=rt.device)])
    loss_sum, tokens = rt.sum(totals).tolist()
    return loss_sum / tokens
