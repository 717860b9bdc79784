"""The scaling table: every named parameter's role and concrete hyperparameters at this (width, depth).

It is the single source for init (`init_parameters`), forward multipliers (`multipliers`) and optimizer
groups (optim/); nothing else in the code multiplies by a width or depth ratio.
"""

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from config import Config
from model import GPT
from mup import rules
from optim import registry


@dataclass
class TensorHP:
    name: str
    role: str  # input | hidden | hidden_vector | output | final_norm
    shape: list[int]
    init_std: float | None  # None: not drawn from a Gaussian
    multiplier: float  # block multiplier of the branch the tensor belongs to
    lr: float
    weight_decay: float
    eps: float | None  # None: its optimizer has no epsilon
    optimizer: str  # its update rule: one of optim.registry.RULES

    def to_json(self) -> dict:
        return asdict(self)


class Ratios(NamedTuple):
    r_n: float
    r_L: float
    depth_exponent: float  # alpha_d


def ratios(cfg: Config) -> Ratios:
    """(r_n, r_L, alpha_d) as the parameterization sees them; the one place where sp and mup_width differ from
    the rules. sp sees the base shape everywhere (the paper's SP baseline), mup_width sees r_L = 1; with r_L = 1
    alpha_d has no effect, and scaling.depth_exponent is not used."""
    s = cfg.scaling
    r_n, r_L = cfg.model.n_embd / s.base_width, cfg.model.n_layer / s.base_depth
    if s.parameterization == "sp":
        return Ratios(1.0, 1.0, 1.0)
    if s.parameterization == "mup_width":
        return Ratios(r_n, 1.0, 1.0)
    d = rules.DEPTH_EXPONENT[s.parameterization] if s.depth_exponent is None else s.depth_exponent
    return Ratios(r_n, r_L, d)


def _scale(exp: rules.Exp, r_n: float, r_L: float) -> float:
    width, depth = exp  # an Exp, or a plain (width, depth) pair
    return r_n**width * r_L**depth


def multipliers(cfg: Config) -> dict[str, float]:
    """Keyword arguments of model.GPT: the forward multipliers at this shape."""
    r_n, r_L, d = ratios(cfg)
    f, s = rules.forward(d), cfg.scaling
    return {
        "alpha_in": s.alpha_in * _scale(f["input"].multiplier, r_n, r_L),
        "alpha_attn": s.alpha_attn * _scale(f["hidden"].multiplier, r_n, r_L),
        "alpha_mlp": s.alpha_mlp * _scale(f["hidden"].multiplier, r_n, r_L),
        "alpha_out": s.alpha_out * _scale(f["output"].multiplier, r_n, r_L),
    }


def role_and_branch(name: str, param: torch.nn.Parameter) -> tuple[str, str]:
    """Role of a GPT parameter (see model.py's names) and the multiplier of its branch."""
    if name.startswith("embed."):
        return "input", "alpha_in"  # a tied LM head follows the input rules (SPEC: they coincide)
    if name.startswith("head."):
        return "output", "alpha_out"
    if name.startswith("ln_f."):
        return "final_norm", ""
    if name.startswith("blocks."):
        branch = "alpha_attn" if (".attn." in name or ".ln_1." in name) else "alpha_mlp"
        return ("hidden" if param.ndim == 2 else "hidden_vector"), branch
    raise ValueError(f"parameter {name!r} has no muP role; name it in mup/scaling.py:role_and_branch")


def rows(cfg: Config) -> dict[str, tuple[str, str]]:
    """{"hidden": (update rule, its row in rules.UPDATES), "other": ...} of the config's optimizer: the row is the
    rule's own unless scaling.paper_rows asks for the paper's."""
    spec = registry.get(cfg.optim.name)
    hidden_row = spec.paper_row if cfg.scaling.paper_rows else spec.hidden
    return {"hidden": (spec.hidden, hidden_row), "other": (spec.other, spec.other)}


def scaling_table(cfg: Config, model: torch.nn.Module) -> list[TensorHP]:
    """One record per trainable parameter (tied tensors once, under their first name). The AdamW half of a hybrid
    runs at optim.adamw_lr_ratio x its row's lr; the hidden matrices' Shampoo or SOAP scale optim.matrix_eps, every
    other epsilon optim.eps."""
    (r_n, r_L, d), o = ratios(cfg), cfg.optim
    forward = rules.forward(d)
    by_role = rows(cfg)
    alphas = multipliers(cfg)
    table = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role, branch = role_and_branch(name, p)
        opt, row = by_role["hidden" if role == "hidden" else "other"]
        update = rules.UPDATES[row](d)[role]
        half = o.adamw_lr_ratio if opt == "adamw" and o.adamw_lr_ratio is not None else 1.0
        base_eps = o.matrix_eps if role == "hidden" and o.matrix_eps is not None else o.eps
        var = forward[role].init_var
        table.append(TensorHP(
            name=name,
            role=role,
            shape=list(p.shape),
            init_std=None if var is None else cfg.scaling.init_std * math.sqrt(_scale(var, r_n, r_L)),
            multiplier=alphas[branch] if branch else 1.0,
            lr=o.lr * _scale(update.lr, r_n, r_L) * half,
            weight_decay=o.weight_decay * _scale(update.wd, r_n, r_L),
            eps=None if update.eps is None else base_eps * _scale(update.eps, r_n, r_L),
            optimizer=opt,
        ))
    return table


@torch.no_grad()
def init_parameters(model: torch.nn.Module, table: list[TensorHP], generator: torch.Generator | None = None):
    """Gaussian tensors get N(0, init_std^2); vectors: LayerNorm gains 1, biases 0."""
    params = dict(model.named_parameters())
    for rec in table:
        p = params[rec.name]
        if rec.init_std is not None:
            p.normal_(0.0, rec.init_std, generator=generator)
        elif rec.name.endswith(".weight"):
            p.fill_(1.0)
        else:
            p.zero_()


def table_for(cfg: Config) -> list[TensorHP]:
    """The scaling table of `cfg` from a model on the meta device: shapes only, no memory, any size."""
    with torch.device("meta"):
        model = GPT(cfg.model, **multipliers(cfg))
    return scaling_table(cfg, model)


def build_model(cfg: Config, device="cpu"):
    """The model with this config's multipliers and init, and its scaling table."""
    model = GPT(cfg.model, **multipliers(cfg)).to(device)
    table = scaling_table(cfg, model)
    init_parameters(model, table)
    return model, table
