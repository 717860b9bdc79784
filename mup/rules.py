"""The parameterization rules of Zheng et al. (2026), "Spectral Condition for muP under Width-Depth
Scaling", as exponents: every hyperparameter is its base value x r_n^a x r_L^b with r_n = n / n_base and
r_L = L / L_base, and each entry below is the pair (a, b). Hold this file next to docs/SPEC-mup.md.

`d` is the depth exponent alpha_d: 1 for blocks of k >= 2 transformations (attention, MLP: `mup`),
1/2 for one-transformation blocks (`mup_k1`). One formula in d reproduces both the k >= 2 tables
(A-D) and the k = 1 table exactly.
"""

from dataclasses import dataclass

ROLES = ("input", "hidden", "hidden_vector", "output", "final_norm")

# d for each parameterization; `sp` and `mup_width` are these rules evaluated at r_n = r_L = 1 and at
# r_L = 1 respectively (see `ratios` in mup/scaling.py), so they need no tables of their own.
DEPTH_EXPONENT = {"sp": 1.0, "mup": 1.0, "mup_k1": 0.5, "mup_width": 1.0}

Exp = tuple[float, float]  # (exponent of r_n, exponent of r_L)


@dataclass(frozen=True)
class Forward:
    init_var: Exp | None  # None: not Gaussian (biases 0, LayerNorm gains 1)
    # The multiplier of the branch a matrix belongs to (embedding, a block's attention or MLP, head). None:
    # no branch of its own; a hidden vector is scaled with the block branch it sits in (Table B's alpha / r_L
    # for hidden biases is that branch's), and the final norm sits outside every branch.
    multiplier: Exp | None


@dataclass(frozen=True)
class Update:
    lr: Exp
    wd: Exp
    eps: Exp | None = None  # AdamW only


def forward(d: float) -> dict[str, Forward]:
    """Init variance and block multiplier: the same for every optimizer (Tables A-D rows 1-2)."""
    return {
        "input": Forward(init_var=(0, 0), multiplier=(0, 0)),
        "hidden": Forward(init_var=(-1, 0), multiplier=(0, -d)),
        "hidden_vector": Forward(init_var=None, multiplier=None),
        "output": Forward(init_var=(0, 0), multiplier=(-1, 0)),
        "final_norm": Forward(init_var=None, multiplier=None),
    }


def muon_kimi(d: float) -> dict[str, Update]:
    """Table A (k >= 2: eta / sqrt(r_n)); k = 1: eta / sqrt(r_n r_L). Hidden matrices only."""
    return {"hidden": Update(lr=(-0.5, d - 1), wd=(0.5, 0))}


def muon(d: float) -> dict[str, Update]:
    """Table C, original Muon scaling (k >= 2: eta; k = 1: eta / sqrt(r_L)). Hidden matrices only."""
    return {"hidden": Update(lr=(0, d - 1), wd=(0, 0))}


def adamw(d: float) -> dict[str, Update]:
    """Table B (AdamW, Lion, Sophia) and the k = 1 AdamW row."""
    return {
        "input": Update(lr=(0, 0), wd=(0, 0), eps=(-1, 0)),
        "hidden": Update(lr=(-1, d - 1), wd=(1, 0), eps=(-1, -d)),
        "hidden_vector": Update(lr=(0, d - 1), wd=(0, 0), eps=(-1, -d)),
        "output": Update(lr=(0, 0), wd=(0, 0), eps=(-1, 0)),
        "final_norm": Update(lr=(0, 0), wd=(0, 0), eps=(-1, 0)),
    }


def sgd(d: float) -> dict[str, Update]:
    """Table D and the k = 1 SGD row; the final norm is input-like (no depth factor)."""
    return {
        "input": Update(lr=(1, 0), wd=(-1, 0)),
        "hidden": Update(lr=(0, 2 * d - 1), wd=(0, -d)),
        "hidden_vector": Update(lr=(1, 2 * d - 1), wd=(-1, -d)),
        "output": Update(lr=(1, 0), wd=(-1, 0)),
        "final_norm": Update(lr=(1, 0), wd=(-1, 0)),
    }


UPDATES = {"muon_kimi": muon_kimi, "muon": muon, "adamw": adamw, "sgd": sgd}

# optim.name -> (optimizer of hidden matrices, optimizer of every other tensor)
FAMILIES = {
    "muon_kimi": ("muon_kimi", "adamw"),
    "muon": ("muon", "adamw"),
    "adamw": ("adamw", "adamw"),
    "sgd": ("sgd", "sgd"),
}
