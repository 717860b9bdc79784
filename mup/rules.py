"""The parameterization rules of Zheng et al. (2026), "Spectral Condition for muP under Width-Depth
Scaling", as exponents. Every hyperparameter is its base value x r_n^width x r_L^depth, with r_n = n / n_base and
r_L = L / L_base, written `Exp(width=..., depth=...)`. Hold this file next to docs/SPEC-mup.md: each row ends in
its closed form for k >= 2 (`mup`) and for k = 1 (`mup_k1`).

`d` is the depth exponent alpha_d: 1 for blocks of k >= 2 transformations (attention, MLP), 1/2 for
one-transformation blocks. The spec's general form in d reproduces both tables exactly, and any alpha_d in
[1/2, 1] between them gives a CompleteP-style interpolation (`scaling.depth_exponent`). sp and mup_width are
these rules seen at r_n = r_L = 1 and at r_L = 1; mup/scaling.py:ratios is the one place that says so.
"""

from dataclasses import dataclass, replace
from typing import NamedTuple

# alpha_d of the parameterizations that scale depth, unless scaling.depth_exponent sets it
DEPTH_EXPONENT = {"mup": 1.0, "mup_k1": 0.5}


class Exp(NamedTuple):
    """The factor r_n^width x r_L^depth of a hyperparameter over its base value."""
    width: float = 0.0
    depth: float = 0.0


BASE = Exp()  # the base value at every shape


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
    eps: Exp | None = None  # None: the optimizer has no epsilon (Muon, SSO, SGD, Lion)


def forward(d: float) -> dict[str, Forward]:
    """Init variance and block multiplier: the same for every optimizer (rows 1-2 of Tables A-E)."""
    return {
        "input": Forward(
            init_var=BASE,                    # k>=2: sigma^2                  k=1: sigma^2
            multiplier=BASE,                  # k>=2: alpha                    k=1: alpha
        ),
        "hidden": Forward(
            init_var=Exp(width=-1),           # k>=2: sigma^2 / r_n            k=1: sigma^2 / r_n
            multiplier=Exp(depth=-d),         # k>=2: alpha / r_L              k=1: alpha / sqrt(r_L)
        ),
        "hidden_vector": Forward(init_var=None, multiplier=None),
        "output": Forward(
            init_var=BASE,                    # k>=2: sigma^2                  k=1: sigma^2
            multiplier=Exp(width=-1),         # k>=2: alpha / r_n              k=1: alpha / r_n
        ),
        "final_norm": Forward(init_var=None, multiplier=None),
    }


def muon_kimi(d: float) -> dict[str, Update]:
    """Table A and the k = 1 Muon-Kimi row. Hidden matrices only."""
    return {"hidden": Update(
        lr=Exp(width=-0.5, depth=d - 1),      # k>=2: eta / sqrt(r_n)          k=1: eta / sqrt(r_n r_L)
        wd=Exp(width=0.5),                    # k>=2: lambda sqrt(r_n)         k=1: lambda sqrt(r_n)
    )}


def muon(d: float) -> dict[str, Update]:
    """Table C (original Muon scaling) and the k = 1 Muon row. Hidden matrices only."""
    return {"hidden": Update(
        lr=Exp(depth=d - 1),                  # k>=2: eta                      k=1: eta / sqrt(r_L)
        wd=BASE,                              # k>=2: lambda                   k=1: lambda
    )}


def shampoo(d: float) -> dict[str, Update]:
    """Table C (Muon, also Shampoo) with v2's Shampoo epsilon row, general form r_L^(-2 alpha_d); the k = 1
    row. Hidden matrices only. The epsilon regularizes L = sum G G^T, a squared gradient."""
    return {"hidden": Update(
        lr=Exp(depth=d - 1),                  # k>=2: eta                      k=1: eta / sqrt(r_L)
        wd=BASE,                              # k>=2: lambda                   k=1: lambda
        eps=Exp(depth=-2 * d),                # k>=2: eps / r_L^2              k=1: eps / r_L
    )}


def soap(d: float) -> dict[str, Update]:
    """SOAP's own row, measured here (not the paper's; `soap_table_c` is the paper's). Hidden matrices only.

    The paper puts SOAP in Table C by reducing it to Muon: momentum dropped, beta2 = 0, eps = 0 and the eigenbasis
    of the current gradient, so that Adam in that basis is sign(Sigma) = U V^T, an orthogonalized update of
    width-constant spectral norm per unit lr. The SOAP that runs keeps Adam's second moments in a basis built from
    earlier gradients: every rotated entry is normalized to Theta(1), as AdamW's entries are, and ||Delta W||_R / lr
    grows with n (40, 74, 146, 297 at n = 32 ... 256 on the CPU-tiny model). The spectral condition then asks for
    an lr between Muon's r_n^0 (basis aligned with the gradient) and Adam's r_n^-1 (entries independent). Measured
    by the CPU-tiny width coordinate check (configs/coord/tiny_width_soap.yaml; max/min of ||h_L||_R over 8x width):
    r_n^-1 1.84x, r_n^-7/8 1.05x, r_n^-3/4 2.03x (Table C: 87x; SP: 121x). The row ships -7/8 (what held, not a
    clean exponent), with weight decay r_n^+7/8 so that lr x wd (decoupled decay per step) stays width-constant,
    and Adam's hidden eps row (gradient units, as AdamW's). Depth follows the other hidden rows: lr
    r_L^(alpha_d - 1), eps r_L^-alpha_d."""
    return {"hidden": Update(
        lr=Exp(width=-7 / 8, depth=d - 1),     # k>=2: eta / r_n^(7/8)           k=1: eta / (r_n^(7/8) sqrt(r_L))
        wd=Exp(width=7 / 8),                   # k>=2: lambda r_n^(7/8)          k=1: lambda r_n^(7/8)
        eps=adamw(d)["hidden"].eps,            # k>=2: eps / (r_n r_L)           k=1: eps / (r_n sqrt(r_L))
    )}


def soap_table_c(d: float) -> dict[str, Update]:
    """The paper's SOAP row: Table C (Muon, also SOAP) and the k = 1 row, selected by scaling.paper_rows=true.
    Hidden matrices only. The paper gives SOAP no epsilon row; SOAP's epsilon is Adam's, added to the root of the
    second moment of the rotated gradient, so it is in gradient units where Shampoo's is in squared units: this
    row's eps is the square root of Shampoo's (derived here, not printed in the paper)."""
    return {"hidden": Update(
        lr=Exp(depth=d - 1),                  # k>=2: eta                      k=1: eta / sqrt(r_L)
        wd=BASE,                              # k>=2: lambda                   k=1: lambda
        eps=Exp(depth=-d),                    # k>=2: eps / r_L                k=1: eps / sqrt(r_L)
    )}


def sso(d: float) -> dict[str, Update]:
    """Table E and the k = 1 SSO row. Hidden matrices only."""
    return {"hidden": Update(
        lr=Exp(depth=d - 1),                  # k>=2: eta                      k=1: eta / sqrt(r_L)
        wd=BASE,                              # k>=2: lambda                   k=1: lambda
    )}


def adamw(d: float) -> dict[str, Update]:
    """Table B (AdamW, also Lion and Sophia) and the k = 1 AdamW row; the final norm as the spec says."""
    return {
        "input": Update(
            lr=BASE,                          # k>=2: eta                      k=1: eta
            wd=BASE,                          # k>=2: lambda                   k=1: lambda
            eps=Exp(width=-1),                # k>=2: eps / r_n                k=1: eps / r_n
        ),
        "hidden": Update(
            lr=Exp(width=-1, depth=d - 1),    # k>=2: eta / r_n                k=1: eta / (r_n sqrt(r_L))
            wd=Exp(width=1),                  # k>=2: lambda r_n               k=1: lambda r_n
            eps=Exp(width=-1, depth=-d),      # k>=2: eps / (r_n r_L)          k=1: eps / (r_n sqrt(r_L))
        ),
        "hidden_vector": Update(
            lr=Exp(depth=d - 1),              # k>=2: eta                      k=1: eta / sqrt(r_L)
            wd=BASE,                          # k>=2: lambda                   k=1: lambda
            eps=Exp(width=-1, depth=-d),      # k>=2: eps / (r_n r_L)          k=1: eps / (r_n sqrt(r_L))
        ),
        "output": Update(
            lr=BASE,                          # k>=2: eta                      k=1: eta
            wd=BASE,                          # k>=2: lambda                   k=1: lambda
            eps=Exp(width=-1),                # k>=2: eps / r_n                k=1: eps / r_n
        ),
        "final_norm": Update(
            lr=BASE,                          # k>=2: eta                      k=1: eta
            wd=BASE,                          # k>=2: lambda                   k=1: lambda
            eps=Exp(width=-1),                # k>=2: eps / r_n                k=1: eps / r_n
        ),
    }


def lion(d: float) -> dict[str, Update]:
    """Table B without its epsilon row: Lion's update is a sign and has no epsilon."""
    return {role: replace(u, eps=None) for role, u in adamw(d).items()}


def sgd(d: float) -> dict[str, Update]:
    """Table D and the k = 1 SGD row; the final norm is input-like (no depth factor)."""
    return {
        "input": Update(
            lr=Exp(width=1),                  # k>=2: eta r_n                  k=1: eta r_n
            wd=Exp(width=-1),                 # k>=2: lambda / r_n             k=1: lambda / r_n
        ),
        "hidden": Update(
            lr=Exp(depth=2 * d - 1),          # k>=2: eta r_L                  k=1: eta
            wd=Exp(depth=-d),                 # k>=2: lambda / r_L             k=1: lambda / sqrt(r_L)
        ),
        "hidden_vector": Update(
            lr=Exp(width=1, depth=2 * d - 1),  # k>=2: eta r_L r_n              k=1: eta r_n
            wd=Exp(width=-1, depth=-d),       # k>=2: lambda / (r_L r_n)       k=1: lambda / (r_n sqrt(r_L))
        ),
        "output": Update(
            lr=Exp(width=1),                  # k>=2: eta r_n                  k=1: eta r_n
            wd=Exp(width=-1),                 # k>=2: lambda / r_n             k=1: lambda / r_n
        ),
        "final_norm": Update(
            lr=Exp(width=1),                  # k>=2: eta r_n                  k=1: eta r_n
            wd=Exp(width=-1),                 # k>=2: lambda / r_n             k=1: lambda / r_n
        ),
    }


# The row of each update rule (optim/registry.py names the rule of each optim.name's hidden and other tensors);
# Sophia's row is AdamW's, epsilon included (Table B)
UPDATES = {"muon_kimi": muon_kimi, "muon": muon, "shampoo": shampoo, "soap": soap, "soap_table_c": soap_table_c,
           "sso": sso, "adamw": adamw, "lion": lion, "sophia": adamw, "sgd": sgd}
