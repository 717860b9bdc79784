"""Every optimizer the project runs, declared once.

`OPTIMIZERS[name]`, for each value of `optim.name`: the update rule of the hidden matrices and the one of every
other tensor, the optimizer's own defaults (the `optim.*` keys a config leaves null take them), and the row of
mup/rules.py it scales by. `RULES[rule]`, for each update rule: the bytes of state it keeps, the FLOPs of one
step and the bytes that step allocates, for a tensor of a given shape (what experiments/cost.py counts).
config.py takes its `optim.name` choices from here, mup/scaling.py the rule and row of each tensor,
optim/hybrid.py a builder per rule and the FLOPs optim/split.py balances ranks by, experiments/cost.py the
state, FLOPs and workspace; tests/test_registry.py checks that they all cover the same names.

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
            "hessian_interval", "hessian_batch_size", "sophia_rho", "sophia_clip", "sso_radius")

# The paper's AdamW (and AdamW half): beta = (0.9, 0.95), at eta_base (its Muon-Kimi runs) unless said otherwise
ADAMW_HALF = {"betas": [0.9, 0.95], "adamw_lr_ratio": 1.0}

OPTIMIZERS = {
    "muon_kimi": Optimizer("muon_kimi", "adamw", "Muon with Kimi's lr matching (torch.optim.Muon, match_rms_adamw)"
                           " for hidden matrices, AdamW for the rest: the paper's main recipe", ADAMW_HALF),
    # the paper's Muon-AdamW runs give the AdamW half eta / 10
    "muon": Optimizer("muon", "adamw", "Muon (original lr scaling) for hidden matrices, AdamW at eta/10 for the rest",
                      {**ADAMW_HALF, "adamw_lr_ratio": 0.1}),
    # Shampoo-AdamW as the paper's v2 runs it: the Muon-AdamW setting, AdamW half at eta / 10. eps relative to each
    # statistic's largest eigenvalue, 1e-5 (optim/shampoo.py: an absolute one is steered by rounding, 63-212 lr in
    # one step). Roots every 100 steps: precondition_frequency=100 in every example of Meta's distributed Shampoo
    # README (facebookresearch/optimizers; its default, like Google's preconditioning_compute_steps, is 1, Algorithm
    # 1); stale steps scaled to <= lr
    "shampoo": Optimizer("shampoo", "adamw", "Shampoo (Gupta et al. 2018, Algorithm 1) for hidden matrices, AdamW at"
                         " eta/10 for the rest", {**ADAMW_HALF, "adamw_lr_ratio": 0.1, "matrix_eps": 1e-5,
                                                  "precondition_interval": 100}),
    # SOAP's paper (Vyas et al. 2024): beta = (0.95, 0.95), eps 1e-8, eigenbases every 10 steps; every side of the
    # paper's widths preconditioned (the MLP's 4n = 16384 at n = 4096; pytorch_optimizer's 10,000 would stop at 2,500)
    "soap": Optimizer("soap", "adamw", "SOAP (Vyas et al. 2024: Adam in Shampoo's eigenbasis) for hidden matrices"
                      " under the row measured here (scaling.paper_rows=true: Table C), AdamW for the rest",
                      {"betas": [0.95, 0.95], "adamw_lr_ratio": 1.0, "matrix_eps": 1e-8, "precondition_interval": 10,
                       "max_precondition_dim": 16384},
                      paper_row="soap_table_c"),
    # SSO's hidden lr is width-constant as Muon's original (Table E): the Muon-AdamW setting, AdamW half at eta / 10
    "sso": Optimizer("sso", "adamw", "the Spectral Sphere Optimizer (Xie et al. 2026) for hidden matrices, AdamW at"
                     " eta/10 for the rest", {**ADAMW_HALF, "adamw_lr_ratio": 0.1, "sso_radius": 1.0}),
    "adamw": Optimizer("adamw", "adamw", "AdamW for every tensor", {"betas": [0.9, 0.95]}),
    # Lion's paper (Chen et al. 2023): beta = (0.9, 0.99)
    "lion": Optimizer("lion", "lion", "Lion (Chen et al. 2023; sign updates) for every tensor", {"betas": [0.9, 0.99]}),
    # Sophia's paper (Liu et al. 2023): beta = (0.965, 0.99), rho 0.04, clip 1, a Hessian estimate every 10 steps.
    # The estimate's sequences: the whole batch of every shipped Sophia run (their batches are 8, 16 and 240, so no
    # smaller fixed number fits them all), split across ranks: +10% compute at an interval of 10
    "sophia": Optimizer("sophia", "sophia", "SophiaG (Liu et al. 2023; Gauss-Newton-Bartlett curvature) for every"
                        " tensor", {"betas": [0.965, 0.99], "hessian_interval": 10, "hessian_batch_size": 240,
                                    "sophia_rho": 0.04, "sophia_clip": 1.0}),
    "sgd": Optimizer("sgd", "sgd", "SGD with momentum for every tensor"),
}


@dataclass(frozen=True)
class Rule:
    """What an update rule costs for one tensor of shape `shape`, given the resolved `optim` config section."""
    state_bytes: Callable  # (shape, optim) -> bytes kept between steps
    step_flops: Callable  # (shape, optim) -> FLOPs of one step, amortized over refresh intervals
    # (shape, optim) -> the most bytes a step of this tensor allocates above the state, in float32 on CPU, the
    # leftovers of the tensor stepped before it included (a loop's variables live until the next tensor replaces
    # them; taken as one of the same shape); torch.profiler's peaks on CPU, torch 2.13 (python -m bench.memory)
    workspace_bytes: Callable
    stacks: bool = False  # a step orthogonalizes a stack of same-shape matrices at once (Muon's batched path)
    foreach: bool = False  # a step makes its temporaries for every tensor at once (torch._foreach_* over all)
    fused_on_cuda: bool = False  # one fused kernel over every tensor on CUDA (optim/hybrid.py): no workspace there


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
    """In float32 (bfloat16 on CUDA needs less): the update, its normalized copy, the next iterate, X X^T and
    (bA + cA^2): 3 mn + 2 m^2 floats for m the shorter side (measured 5.0 x the matrix at 128^2 and 256^2, 3.5-3.7
    x at 4:1 and 3:1)."""
    return 4 * (3 * numel(shape) + 2 * min(sides(shape)) ** 2)


def elementwise(copies: int):
    """A rule whose step makes `copies` temporaries of the tensor: measured 3 for AdamW and Sophia and 2 for SGD in
    their loops on CPU (the previous tensor's last one included), 1 for pytorch_optimizer's Lion, of every tensor
    at once (its foreach path)."""
    return lambda shape, o: 4 * copies * numel(shape)


def shampoo_bytes(shape, o) -> int:
    """Statistics L (rows^2) and R (cols^2) in float64, and with an interval > 1 their inverse roots, kept for the
    steps that reuse them (optim/shampoo.py)."""
    r, c = sides(shape)
    return 8 * (r * r + c * c) * (2 if o.precondition_interval > 1 else 1)


def shampoo_flops(shape, o) -> float:
    """G G^T and G^T G, L^(-1/4) G R^(-1/4), both roots every precondition_interval steps, and on the steps between
    the stale step's power iteration (optim/shampoo.py POWER_ITERS = 20 products with it and its transpose)."""
    r, c = sides(shape)
    k = o.precondition_interval
    return 4 * r * c * (r + c) + (eigh_flops(r) + eigh_flops(c) + 2 * (r**3 + c**3)) / k + (k - 1) / k * 80 * r * c


def shampoo_workspace(shape, o) -> int:
    """A refresh, in float64: the gradient, and the largest of (i) L's eigendecomposition (eigenvectors and LAPACK's
    workspace, 3 r^2), (ii) L's root kept while R's is taken, (iii) both roots and the two products; with an
    interval of 1 the previous matrix's roots are still held (later ones keep theirs in the state). Measured
    14.2 x the float32 matrix at 128^2 and 256^2, 34.7-35.3 at 4:1 and 1:4, 26.8 at 3:1: within 1.4%."""
    r, c = sides(shape)
    held = 8 * (r * r + c * c) if o.precondition_interval == 1 else 0
    return 8 * numel(shape) + 8 * max(3 * r * r, r * r + 3 * c * c, r * r + c * c + 2 * numel(shape)) + held


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
    """A refresh of pytorch_optimizer's SOAP: rotated gradients and moments, and per preconditioned side its
    statistic's update, re-sorted basis, power-iteration product and QR. Fitted to torch.profiler's peaks (15.1-15.3
    x the float32 matrix at 128^2 and 256^2, 27.0-27.3 at 4:1 and 1:4, 22.1 at 3:1): 19 bytes per element and 21 per
    element of each side's square, within 1.5% there."""
    return 19 * numel(shape) + 21 * sum(s * s for s in soap_sides(shape, o))


def sso_flops(shape, o) -> float:
    """At most 1 + 10 + 20 orthogonalizations (h(0), bracketing, bisection of the multiplier) and 20 power
    iterations: an upper bound (optim/sso.py)."""
    return 31 * newton_schulz_flops(shape, o.ns_steps) + 20 * 4 * numel(shape)


def sso_workspace(shape, o) -> int:
    """Newton-Schulz's, and the normalized momentum, Theta = u v^T, M + lambda Theta and the previous matrix's last
    update (measured 8.0 x the matrix at 128^2 and 256^2, 6.5-6.75 at 4:1 and 3:1)."""
    return newton_schulz_workspace(shape, o) + 4 * 3 * numel(shape)


RULES = {
    "adamw": Rule(lambda s, o: 8 * numel(s), lambda s, o: 10 * numel(s), elementwise(3),  # two moments
                  fused_on_cuda=True),
    "lion": Rule(lambda s, o: 4 * numel(s), lambda s, o: 8 * numel(s), elementwise(1), foreach=True),  # one moment
    "sophia": Rule(lambda s, o: 8 * numel(s), lambda s, o: 10 * numel(s), elementwise(3)),  # moment, Hessian estimate
    "sgd": Rule(lambda s, o: 4 * numel(s) if o.momentum > 0 else 0, lambda s, o: 4 * numel(s), elementwise(2)),
    "muon_kimi": Rule(lambda s, o: 4 * numel(s), lambda s, o: newton_schulz_flops(s, o.ns_steps),  # momentum
                      newton_schulz_workspace, stacks=True),
    "muon": Rule(lambda s, o: 4 * numel(s), lambda s, o: newton_schulz_flops(s, o.ns_steps), newton_schulz_workspace,
                 stacks=True),
    "shampoo": Rule(shampoo_bytes, shampoo_flops, shampoo_workspace),
    "soap": Rule(soap_bytes, soap_flops, soap_workspace),
    # momentum and the right singular vector
    "sso": Rule(lambda s, o: 4 * numel(s) + 4 * s[1], sso_flops, sso_workspace),
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
