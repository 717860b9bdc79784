"""LR schedule: linear warm-up, then cosine decay to a floor (or constant), as a factor of each group's
own base lr, so the per-tensor ratios of the scaling table survive scheduling."""

import math

from config import OptimConfig, min_lr_ratio


def lr_factor(step: int, o: OptimConfig, max_iters: int) -> float:
    if step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_iters) / max(1, max_iters - o.warmup_iters))
    floor = min_lr_ratio(o)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
