"""The hybrid optimizer: one object that steps Muon(-Kimi) for hidden matrices and AdamW (or SGD) for
everything else, with param groups built straight from the scaling table."""

from collections import defaultdict

import torch

from config import Config
from mup.scaling import TensorHP
from optim.muon import Muon


class Hybrid:
    """Several torch optimizers behind one step / zero_grad / state_dict / param_groups."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr_factor(self, factor: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * factor

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def ns_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    if cfg.optim.ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.optim.ns_dtype)


def build_optimizer(cfg: Config, model: torch.nn.Module, table: list[TensorHP]) -> Hybrid:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    claimed = [rec.name for rec in table]
    unclaimed = sorted(set(params) - set(claimed))
    twice = sorted({n for n in claimed if claimed.count(n) > 1})
    if unclaimed or twice or set(claimed) - set(params):
        raise ValueError(
            f"scaling table and model disagree: unclaimed {unclaimed}, claimed twice {twice},"
            f" unknown {sorted(set(claimed) - set(params))}"
        )
    groups = defaultdict(list)  # tensors sharing all hyperparameters share a group
    for rec in table:
        groups[(rec.optimizer, rec.lr, rec.weight_decay, rec.eps)].append(rec.name)
    by_opt = defaultdict(list)
    for (opt, lr, wd, eps), names in groups.items():
        group = {"params": [params[n] for n in names], "names": names, "lr": lr, "base_lr": lr, "weight_decay": wd}
        if eps is not None:
            group["eps"] = eps
        by_opt[opt].append(group)

    o, device = cfg.optim, next(model.parameters()).device
    make = {
        "muon_kimi": lambda g: Muon(g, adjust_lr_fn="match_rms_adamw", momentum=o.momentum, nesterov=o.nesterov,
                                    ns_steps=o.ns_steps, ns_dtype=ns_dtype(cfg, device)),
        "muon": lambda g: Muon(g, adjust_lr_fn="original", momentum=o.momentum, nesterov=o.nesterov,
                               ns_steps=o.ns_steps, ns_dtype=ns_dtype(cfg, device)),
        "adamw": lambda g: torch.optim.AdamW(g, betas=tuple(o.betas), fused=device.type == "cuda"),
        "sgd": lambda g: torch.optim.SGD(g, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0),
    }
    return Hybrid({name: make[name](g) for name, g in sorted(by_opt.items())})
