"""LR schedule: linear warm-up, then cosine decay to a floor (or constant), as a factor of each group's
own base lr, so the per-tensor ratios of the scaling table survive scheduling."""

import math


def min_lr_ratio(o) -> float:
    """The schedule's floor as a fraction of each group's base lr: optim.min_lr is the floor at η_base."""
    return o.min_lr / o.lr


def lr_factor(step: int, o, max_iters: int) -> float:
    """The factor of 0-based step `step`; `o` is the config's optim section."""
    if step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_iters) / max(1, max_iters - o.warmup_iters))
    floor = min_lr_ratio(o)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
