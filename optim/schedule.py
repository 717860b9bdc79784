"""LR schedule: linear warm-up, a constant stretch until the decay starts (at the warm-up's end unless
optim.decay_start says later), then cosine or linear decay to a floor at max_iters (or constant throughout), as
a factor of each group's own base lr, so the per-tensor ratios of the scaling table survive scheduling. A late
decay start is a warm-up-stable-decay schedule: a run forked at step S from a constant-LR run cools down from
the parent's LR with optim.schedule=linear optim.decay_start=S."""

import math


def min_lr_ratio(o) -> float:
    """The schedule's floor as a fraction of each group's base lr: optim.min_lr is the floor at η_base."""
    return o.min_lr / o.lr


def lr_factor(step: int, o, max_iters: int) -> float:
    """The factor of 0-based step `step`; `o` is the config's optim section."""
    if step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    start = o.warmup_iters if o.decay_start is None else o.decay_start
    if o.schedule == "constant" or step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, max_iters - start))
    floor = min_lr_ratio(o)
    decay = 1.0 - progress if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * decay
