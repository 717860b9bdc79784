"""The hybrid optimizer: one object that steps the optimizer of the hidden matrices (Muon(-Kimi), Shampoo,
SOAP, SSO) and AdamW for everything else, or one element-wise optimizer (AdamW, Lion, Sophia, SGD) for every
tensor, with param groups built straight from the scaling table (mup.scaling's records: name, lr, weight_decay,
eps, optimizer). Which update rules an optim.name combines, and their own defaults, are optim/registry.py's."""

from collections import defaultdict

import torch
import torch.distributed as dist

from optim import registry
from optim.muon import Muon
from optim.shampoo import Shampoo
from optim.sophia import SophiaG, sampled_label_backward
from optim.split import Split
from optim.sso import SSO


class Hybrid:
    """Several torch optimizers behind one step / zero_grad / state_dict / param_groups, and the curvature hook
    of the training loop (Sophia's Hessian estimate; a no-op for every other optimizer)."""

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

    def wants_curvature(self, step: int) -> bool:
        """Whether the loop should call `update_curvature` after 0-based step `step`: Sophia after every
        optim.hessian_interval-th step; never for the other optimizers."""
        return any(isinstance(opt, SophiaG) and opt.hessian_due(step) for opt in self.optimizers.values())

    def update_curvature(self, model: torch.nn.Module, micro_batches: list, autocast, tokens: int,
                         set_to_none: bool = True) -> None:
        """Sophia's Gauss-Newton-Bartlett estimate over an estimation batch of `tokens` tokens, of which this rank
        holds `micro_batches`, (x, label seeds of its sequences, dropout seed) each: a sampled-label backward of
        each through `model` (the bare GPT), the gradients summed over ranks, the Hessian EMA updated from them,
        the gradients zeroed (`set_to_none` as the loop's zero_grad). Called after step() and zero_grad()."""
        sophias = [opt for opt in self.optimizers.values() if isinstance(opt, SophiaG)]
        if not sophias:
            return
        for x, label_seeds, dropout_seed in micro_batches:
            sampled_label_backward(model, x, autocast, label_seeds, dropout_seed, weight=x.numel() / tokens)
        if dist.is_initialized() and dist.get_world_size() > 1:
            all_reduce_grads([p for g in self.param_groups for p in g["params"]])
        for opt in sophias:
            opt.update_hessian(tokens)
        self.zero_grad(set_to_none=set_to_none)

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

    def load_param_states(self, state: dict) -> None:
        """Each parameter's state (moments, momentum, preconditioners) from `state`, another Hybrid's state_dict over
        the same parameter names and rules, found by name; the hyperparameters stay this optimizer's own (a fork
        continues its parent's moments at its own lr, betas, ...). Parameters are matched by name, so the
        parent's param groups may be cut otherwise (another lr ratio merges or splits groups)."""
        self.load_state_dict({name: by_name(state[name], opt.param_groups) for name, opt in self.optimizers.items()})


def by_name(saved: dict, groups: list[dict]) -> dict:
    """torch.optim's state_dict of the optimizer whose param groups are `groups`, its state taken from `saved` (a
    state_dict over the same parameter names, grouped in any way) by each group's "names"."""
    names = [n for g in saved["param_groups"] for n in g["names"]]
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    states = {name: saved["state"][i] for name, i in zip(names, ids) if i in saved["state"]}
    ours = [n for g in groups for n in g["names"]]
    if sorted(ours) != sorted(names):
        raise ValueError(f"optimizer state of other parameters: {sorted(set(ours) ^ set(names))[:5]}")
    param_groups, start = [], 0
    for g in groups:
        param_groups.append({**{k: v for k, v in g.items() if k != "params"},
                             "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {i: states[n] for i, n in enumerate(ours) if n in states}, "param_groups": param_groups}


# Elements per flat buffer of all_reduce_grads: 256 MiB of float32, a bounded transient for a few collectives.
REDUCE_BUCKET = 2**26


@torch.no_grad()
def all_reduce_grads(params: list) -> None:
    """Sum the gradients of `params` over ranks, in flat buffers of at most REDUCE_BUCKET elements (a rank without
    a gradient for a tensor contributes zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads, bucket, size = [p.grad for p in params], [], 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel()
        if size >= REDUCE_BUCKET or i == len(grads) - 1:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            torch._foreach_copy_(bucket, [f.view_as(b) for f, b in zip(flat.split([b.numel() for b in bucket]), bucket)])
            bucket, size = [], 0


def ns_dtype(o, device: torch.device) -> torch.dtype:
    """The Newton-Schulz precision of the resolved optim section `o` on `device`."""
    if o.ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, o.ns_dtype)


def pytorch_optimizer():
    """The pytorch_optimizer package (Lion, SOAP), imported only when one of them is chosen: its import loads
    its whole collection of optimizers."""
    try:
        import pytorch_optimizer
    except ImportError as e:
        raise ImportError("optim.name lion and soap use the pytorch_optimizer package: "
                          "pip install pytorch_optimizer (it is in requirements.txt)") from e
    return pytorch_optimizer


def builders(o, device: torch.device) -> dict:
    """{update rule: a function of its param groups returning its torch optimizer}, for the resolved optim section
    `o` (a run config's cfg.optim, every optimizer-specific key filled in by its optimizer's own defaults)."""
    betas = tuple(o.betas) if o.betas is not None else None
    batched = o.ns_batched or device.type == "cuda"  # 164 kernel launches a step instead of 41,986 at L=256 (muon.py)
    return {
        "muon_kimi": lambda g: Muon(g, adjust_lr_fn="match_rms_adamw", momentum=o.momentum, nesterov=o.nesterov,
                                    ns_steps=o.ns_steps, ns_dtype=ns_dtype(o, device), ns_batched=batched),
        "muon": lambda g: Muon(g, adjust_lr_fn="original", momentum=o.momentum, nesterov=o.nesterov,
                               ns_steps=o.ns_steps, ns_dtype=ns_dtype(o, device), ns_batched=batched),
        "shampoo": lambda g: Shampoo(g, precondition_interval=o.precondition_interval),
        "soap": lambda g: pytorch_optimizer().SOAP(g, betas=betas, precondition_frequency=o.precondition_interval,
                                                   max_precondition_dim=o.max_precondition_dim),
        # msign inside lambda's bisection in float32 unless asked otherwise: the paper keeps it there
        "sso": lambda g: SSO(g, momentum=o.momentum, nesterov=o.nesterov, radius=o.sso_radius, ns_steps=o.ns_steps,
                             ns_dtype=torch.float32 if o.ns_dtype == "auto" else getattr(torch, o.ns_dtype)),
        "adamw": lambda g: torch.optim.AdamW(g, betas=betas, fused=device.type == "cuda"),
        "lion": lambda g: pytorch_optimizer().Lion(g, betas=betas),
        "sophia": lambda g: SophiaG(g, betas=betas, rho=o.sophia_rho, clip=o.sophia_clip,
                                    hessian_interval=o.hessian_interval),
        "sgd": lambda g: torch.optim.SGD(g, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0),
    }


def build_optimizer(cfg, model: torch.nn.Module, table: list, split: bool = True) -> Hybrid:
    """The Hybrid of a run config `cfg` over `model`'s parameters, one param group per distinct (rule, lr, weight
    decay, eps) of the scaling table `table`. Under torch.distributed with several ranks the hidden matrices'
    optimizer (Muon, Shampoo, SOAP, SSO: the hybrids' own rule) steps each matrix on one rank only (optim/split.py);
    `split=False` repeats it on every rank instead. The element-wise rules stay on every rank: O(params) work."""
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
    by_rule = defaultdict(list)
    for (rule, lr, wd, eps), names in groups.items():
        group = {"params": [params[n] for n in names], "names": names, "lr": lr, "base_lr": lr, "weight_decay": wd}
        if eps is not None:
            group["eps"] = eps
        by_rule[rule].append(group)
    make = builders(cfg.optim, next(model.parameters()).device)
    optimizers = {rule: make[rule](g) for rule, g in sorted(by_rule.items())}
    hidden, other = registry.rules_of(cfg.optim.name)
    if split and hidden != other and dist.is_initialized() and dist.get_world_size() > 1:
        flops = registry.RULES[hidden].step_flops
        optimizers[hidden] = Split(optimizers[hidden], lambda shape: flops(shape, cfg.optim))
    return Hybrid(optimizers)
