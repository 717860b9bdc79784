"""Every optimizer the project runs, declared once.

`OPTIMIZERS[name]`, for each value of `optim.name`: the update rule of the hidden matrices and the one of every
other tensor, the optimizer's own defaults (the `optim.*` keys a config leaves null take them), and the row of
mup/rules.py it scales by. `RULES[rule]`, for each update rule: the bytes of state it keeps and the FLOPs of one
step for a tensor of a given shape (what experiments/cost.py counts). config.py takes its `optim.name` choices from
here, mup/scaling.py the rule and row of each tensor, optim/hybrid.py a builder per rule, experiments/cost.py the
state and FLOPs; tests/test_registry.py checks that they all cover the same names.

This module imports nothing from the project (config.py reads it), nor torch (experiments/results.py, which
reads configs, runs without it).
"""

import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Optimizer:
    hidden: str  # the update rule of the hidden matrices: a RULES key, a row of mup/rules.py, a builder of optim/hybrid
    other: str  # the update rule of every other tensor (embeddings, head, biases, norms)
    doc: str  # one line: what runs and whose recipe it is
    # The optimizer's own value of every optimizer-specific key it reads (OWN_KEYS); the keys it does not read are
    # left null in a resolved config. Sources are in the comments of OPTIMIZERS.
    defaults: dict = field(default_factory=dict)
    # The paper's row for the hidden matrices where the project scales them by its own row instead (mup/rules.py
    # says why): scaling.paper_rows=true selects it.
    paper_row: str | None = None


# The optim.* keys whose default depends on the optimizer. A config leaves them null; they then take the
# chosen optimizer's `defaults`, or stay null if it does not read them (and setting one it does not read is an error).
OWN_KEYS = ("betas", "matrix_eps", "adamw_lr_ratio", "precondition_interval", "max_precondition_dim",
            "hessian_interval", "sophia_rho", "sophia_clip", "sso_radius")

# The paper's AdamW (and AdamW half): beta = (0.9, 0.95), at eta_base (its Muon-Kimi runs) unless said otherwise
ADAMW_HALF = {"betas": [0.9, 0.95], "adamw_lr_ratio": 1.0}

OPTIMIZERS = {
    "muon_kimi": Optimizer("muon_kimi", "adamw", "Muon with Kimi's lr matching (torch.optim.Muon, match_rms_adamw)"
                           " for hidden matrices, AdamW for the rest: the paper's main recipe", ADAMW_HALF),
    # the paper's Muon-AdamW runs give the AdamW half eta / 10
    "muon": Optimizer("muon", "adamw", "Muon (original lr scaling) for hidden matrices, AdamW at eta/10 for the rest",
                      {**ADAMW_HALF, "adamw_lr_ratio": 0.1}),
    # Shampoo-AdamW as the paper's v2 runs it: the Muon-AdamW setting, AdamW half at eta / 10
    "shampoo": Optimizer("shampoo", "adamw", "Shampoo (Gupta et al. 2018, Algorithm 1) for hidden matrices, AdamW at"
                         " eta/10 for the rest", {**ADAMW_HALF, "adamw_lr_ratio": 0.1, "matrix_eps": 1e-12,
                                                  "precondition_interval": 1}),
    # SOAP's paper (Vyas et al. 2024): beta = (0.95, 0.95), eps 1e-8, eigenbases every 10 steps; every side of the
    # paper's widths preconditioned (the MLP's 4n = 16384 at n = 4096; pytorch_optimizer's 10,000 would stop at 2,500)
    "soap": Optimizer("soap", "adamw", "SOAP (Vyas et al. 2024: Adam in Shampoo's eigenbasis) for hidden matrices,"
                      " AdamW for the rest", {"betas": [0.95, 0.95], "adamw_lr_ratio": 1.0, "matrix_eps": 1e-8,
                                             "precondition_interval": 10, "max_precondition_dim": 16384},
                      paper_row="soap_table_c"),
    # SSO's hidden lr is width-constant as Muon's original (Table E): the Muon-AdamW setting, AdamW half at eta / 10
    "sso": Optimizer("sso", "adamw", "the Spectral Sphere Optimizer (Xie et al. 2026) for hidden matrices, AdamW at"
                     " eta/10 for the rest", {**ADAMW_HALF, "adamw_lr_ratio": 0.1, "sso_radius": 1.0}),
    "adamw": Optimizer("adamw", "adamw", "AdamW for every tensor", {"betas": [0.9, 0.95]}),
    # Lion's paper (Chen et al. 2023): beta = (0.9, 0.99)
    "lion": Optimizer("lion", "lion", "Lion (Chen et al. 2023; sign updates) for every tensor", {"betas": [0.9, 0.99]}),
    # Sophia's paper (Liu et al. 2023): beta = (0.965, 0.99), rho 0.04, clip 1, a Hessian estimate every 10 steps
    "sophia": Optimizer("sophia", "sophia", "SophiaG (Liu et al. 2023; Gauss-Newton-Bartlett curvature) for every"
                        " tensor", {"betas": [0.965, 0.99], "hessian_interval": 10, "sophia_rho": 0.04,
                                    "sophia_clip": 1.0}),
    "sgd": Optimizer("sgd", "sgd", "SGD with momentum for every tensor"),
}


def nothing(shape, o) -> int:
    return 0


@dataclass(frozen=True)
class Rule:
    """What an update rule costs for one tensor of shape `shape`, given the resolved `optim` config section."""
    state_bytes: Callable  # (shape, optim) -> bytes kept between steps
    step_flops: Callable  # (shape, optim) -> FLOPs of one step, amortized over refresh intervals
    workspace_bytes: Callable = nothing  # (shape, optim) -> bytes a step of this tensor allocates and frees


def numel(shape) -> int:
    return math.prod(shape)


def sides(shape) -> tuple[int, int]:
    """(rows, cols) of a matrix."""
    return shape[0], shape[1]


def newton_schulz_flops(shape, steps: int) -> float:
    """The quintic iteration on an m x n matrix (m <= n): X X^T, A^2 and (bA + cA^2) X, 4 m^2 n + 2 m^3 a step."""
    m, n = sorted(sides(shape))
    return steps * (4 * m * m * n + 2 * m**3)


def eigh_flops(n: int) -> float:
    """A symmetric eigendecomposition with eigenvectors: about 9 n^3 (Golub and Van Loan's count)."""
    return 9 * n**3


# Elements per stack of Muon's batched Newton-Schulz (optim/muon.py; an n x n stack at n=4096 holds 4 matrices, at
# n=256 1,024): bounds the batched iteration's extra memory, a few copies of the stack.
MAX_STACK_ELEMENTS = 2**26


def newton_schulz_workspace(shape, o) -> int:
    """The iteration's copies in float32 (the larger dtype): the matrix and its next iterate, X X^T, its square and
    their combination."""
    m = min(sides(shape))
    return 4 * (2 * numel(shape) + 3 * m * m)


def shampoo_bytes(shape, o) -> int:
    """Statistics L (rows^2) and R (cols^2) in float64, and with an interval > 1 their inverse roots, kept for the
    steps that reuse them (optim/shampoo.py)."""
    r, c = sides(shape)
    return 8 * (r * r + c * c) * (2 if o.precondition_interval > 1 else 1)


def shampoo_flops(shape, o) -> float:
    """G G^T and G^T G, L^(-1/4) G R^(-1/4), and both roots every precondition_interval steps."""
    r, c = sides(shape)
    return 4 * r * c * (r + c) + (eigh_flops(r) + eigh_flops(c) + 2 * (r**3 + c**3)) / o.precondition_interval


def shampoo_workspace(shape, o) -> int:
    """The float64 gradient, and a float64 eigendecomposition of the longer side (matrix, eigenvectors, root)."""
    return 8 * numel(shape) + 24 * max(sides(shape)) ** 2


def soap_sides(shape, o) -> list[int]:
    """The sides SOAP preconditions (pytorch_optimizer's SOAP leaves a side above max_precondition_dim as is)."""
    return [s for s in sides(shape) if s <= o.max_precondition_dim]


def soap_bytes(shape, o) -> int:
    """Adam's two moments, and per preconditioned side its statistic and eigenbasis, in float32."""
    return 8 * numel(shape) + 8 * sum(s * s for s in soap_sides(shape, o))


def soap_flops(shape, o) -> float:
    """Three rotations a step (the gradient and the moment into the eigenbasis, the update back), the statistics,
    and a power-iteration step with a QR of each eigenbasis every precondition_interval steps."""
    per_side = sum(2 * numel(shape) * s for s in soap_sides(shape, o))
    refresh = sum(2 * s**3 + 4 * s**3 / 3 for s in soap_sides(shape, o))
    return 3 * per_side + per_side + refresh / o.precondition_interval


def soap_workspace(shape, o) -> int:
    """Rotated gradient and moments, and a float32 QR or eigendecomposition of the longer preconditioned side."""
    return 12 * numel(shape) + 12 * max(soap_sides(shape, o), default=0) ** 2


def sso_flops(shape, o) -> float:
    """At most 1 + 10 + 20 orthogonalizations (h(0), bracketing, bisection of the multiplier) and 20 power
    iterations: an upper bound (optim/sso.py)."""
    return 31 * newton_schulz_flops(shape, o.ns_steps) + 20 * 4 * numel(shape)


RULES = {
    "adamw": Rule(lambda s, o: 8 * numel(s), lambda s, o: 10 * numel(s)),  # two moments
    "lion": Rule(lambda s, o: 4 * numel(s), lambda s, o: 8 * numel(s)),  # one moment
    "sophia": Rule(lambda s, o: 8 * numel(s), lambda s, o: 10 * numel(s)),  # moment, Hessian estimate
    "sgd": Rule(lambda s, o: 4 * numel(s) if o.momentum > 0 else 0, lambda s, o: 4 * numel(s)),
    "muon_kimi": Rule(lambda s, o: 4 * numel(s), lambda s, o: newton_schulz_flops(s, o.ns_steps),  # momentum
                      newton_schulz_workspace),
    "muon": Rule(lambda s, o: 4 * numel(s), lambda s, o: newton_schulz_flops(s, o.ns_steps), newton_schulz_workspace),
    "shampoo": Rule(shampoo_bytes, shampoo_flops, shampoo_workspace),
    "soap": Rule(soap_bytes, soap_flops, soap_workspace),
    # momentum and the right singular vector; a step also holds the normalized momentum
    "sso": Rule(lambda s, o: 4 * numel(s) + 4 * s[1], sso_flops,
                lambda s, o: newton_schulz_workspace(s, o) + 4 * numel(s)),
}


def get(name: str) -> Optimizer:
    """OPTIMIZERS[name], or a KeyError listing the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; optim.name is one of {', '.join(OPTIMIZERS)}") from None


def rules_of(name: str) -> tuple[str, str]:
    """(update rule of the hidden matrices, of every other tensor) of optim.name `name`."""
    spec = get(name)
    return spec.hidden, spec.other


def own_default(name: str, key: str):
    """The value optim.<key> takes under optim.name `name` when a config leaves it null (None: not read)."""
    value = get(name).defaults.get(key)
    return list(value) if isinstance(value, list) else value


def reads(name: str, key: str) -> bool:
    """Whether optim.name `name` reads the optimizer-specific key optim.<key>."""
    return key in get(name).defaults
