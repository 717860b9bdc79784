"""python -m bench.shampoo_eps: what decided Shampoo's epsilon (optim/shampoo.py), in three tables (CPU, seeded).

1. One step of Algorithm 1 on a low-rank gradient formed as a product in float32 or bf16 (its tail singular
   values are rounding noise), ||dW||_2 / lr, for absolute epsilons (S + eps I) and relative ones
   (S + eps lambda_max I), at gradient scales 1e-6, 1, 1e3. Exact arithmetic gives <= 1 for any eps > 0.
2. The same step with the eigendecomposition in float32 against float64: ||dW_32 - dW_64||_2 / lr by relative eps.
3. The stale-step norm's power iteration (optim.shampoo.spectral_norm) against the exact ||.||_2.
"""

import argparse

import torch

from bench.common import print_table
from optim import shampoo

SHAPES = [(256, 64), (64, 256), (1024, 256), (256, 1024)]
ABSOLUTE = [1e-16, 1e-12, 1e-10, 1e-8]
RELATIVE = [1e-13, 1e-10, 1e-7, 3e-6, 1e-5]


def low_rank(m: int, n: int, rank: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    return scale * (a.to(dtype) @ b.to(dtype)).float()


def absolute_root(stat: torch.Tensor, eps: float) -> torch.Tensor:
    s, q = torch.linalg.eigh(stat)
    return (q * (s.clamp(min=0) + eps).pow(-0.25)) @ q.T


def step_norm(g: torch.Tensor, root) -> float:
    """||L^-1/4 G R^-1/4||_2 of one step (statistics of this gradient alone), in float64 as optim/shampoo.py."""
    g = g.double()
    return torch.linalg.matrix_norm(root(g @ g.T) @ g @ root(g.T @ g), 2).item()


def relative_root(stat: torch.Tensor, eps: float, float32: bool) -> torch.Tensor:
    """optim/shampoo.py's root, its eigendecomposition forced to float32 or float64."""
    chosen, shampoo.FLOAT32_EPS = shampoo.FLOAT32_EPS, 0.0 if float32 else float("inf")
    try:
        return shampoo.inverse_fourth_root(stat, eps)
    finally:
        shampoo.FLOAT32_EPS = chosen


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.shampoo_eps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for scale in (1e-6, 1.0, 1e3):
                g = low_rank(*shape, 3, dtype, seed=0, scale=scale)
                row = {"shape": f"{shape[0]}x{shape[1]}", "dtype": str(dtype)[6:], "scale": scale}
                row |= {f"abs {e:.0e}": step_norm(g, lambda s, e=e: absolute_root(s, e)) for e in ABSOLUTE}
                row |= {f"rel {e:.0e}": step_norm(g, lambda s, e=e: relative_root(s, e, False)) for e in RELATIVE}
                rows.append(row)
    print_table(rows, "1. one step on a rank-3 gradient: ||dW||_2 / lr (exact arithmetic: <= 1)")

    rows = []
    for shape in SHAPES:
        for rank in (1, 3, 8):
            g = low_rank(*shape, rank, torch.bfloat16, seed=rank).double()
            row = {"shape": f"{shape[0]}x{shape[1]}", "rank": rank}
            for e in [1e-7, 1e-6, *RELATIVE[3:]]:
                u32, u64 = (relative_root(g @ g.T, e, f) @ g @ relative_root(g.T @ g, e, f) for f in (True, False))
                row[f"rel {e:.0e}"] = torch.linalg.matrix_norm(u32 - u64, 2).item()
            rows.append(row)
    print_table(rows, "2. float32 against float64 eigendecomposition, bf16 gradient: ||dW_32 - dW_64||_2 / lr")

    rows = []
    for m, n in [(256, 64), (1024, 256), (1024, 4096)]:
        for kind in ("gaussian", "low rank + noise", "flat"):
            gen = torch.Generator().manual_seed(m + n)
            if kind == "gaussian":
                a = torch.randn(m, n, generator=gen)
            elif kind == "low rank + noise":
                a = low_rank(m, n, 3, torch.float32, seed=1) + 0.3 * torch.randn(m, n, generator=gen) * n**0.5
            else:  # singular values 1 ... 0.9: the power iteration's slowest case
                u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen))
                v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen))
                a = (u * torch.linspace(1, 0.9, min(m, n))) @ v.T
            a = a.double()
            rows.append({"shape": f"{m}x{n}", "matrix": kind,
                         "estimate / ||.||_2": (shampoo.spectral_norm(a) / torch.linalg.matrix_norm(a, 2)).item()})
    print_table(rows, f"3. power iteration ({shampoo.POWER_ITERS} steps) against the exact spectral norm")


if __name__ == "__main__":
    main()
