"""Shampoo for matrices: Gupta, Koren, Singer (2018), "Shampoo: Preconditioned Stochastic Tensor
Optimization", Algorithm 1, with decoupled weight decay, an epsilon relative to each statistic's largest
eigenvalue, and inverse roots refreshed every few steps.

Written here because pytorch_optimizer's Shampoo departs from Algorithm 1 where this project needs it: with a
refresh interval k > 1 its inverse roots start at zero, so the first k - 1 steps do not move the weights; its
momentum mixes raw gradients with past preconditioned ones (in no paper); and it adds an absolute eps I to
float32 statistics.

The epsilon is relative, (S + eps lambda_max(S) I)^(-1/4), as in Anil et al. (2020)'s distributed Shampoo
(relative_matrix_epsilon), because an absolute one is steered by rounding: fresh roots bound every step by lr
(L >= G G^T, R >= G^T G) only where the eigendecomposition resolves the eigenvalues near eps, and it resolves
them to ~1e-16 lambda_max (float64), ~1e-7 lambda_max (float32), however small lambda_max is. One step on a
rank-3 gradient formed in float32 moved ||dW||_2 = 63 lr at 256 x 64 and 178 lr at 1024 x 256 at an absolute
eps of 1e-16, 1.0 lr at 1e-10; scaled by 1e3 the same gradient still steps 62-212 lr at 1e-10 and 7-22 lr at
1e-8, while 1e-8 already swamps one scaled by 1e-6 (0.84 lr). Relative, every eps from 1e-13 to 1e-5 steps
1.00 lr at every scale and shape, float32 or bf16 (python -m bench.shampoo_eps). Base eps 1e-5
(optim.matrix_eps; Google's distributed Shampoo uses 1e-6): at the base depth it is above FLOAT32_EPS, where a
float32 eigendecomposition holds, and the spec's depth row divides it by r_L^2 (k >= 2) to 2.4e-9 at L = 256
(r_L = 64), still 10^7 above what float64 resolves.

Statistics, the roots and the step are float64: each float32 addition to a sum of G G^T rounds by ~1e-7 of
lambda_max, above the eps of deep models. Only the eigendecomposition runs in float32, where it resolves the eps.

Roots kept between refreshes are stale: a direction the statistics have not seen is amplified by up to
(eps lambda_max)^(-1/4) on each side: rank-3 gradients at 256 x 64, each in new directions, stepped up to 333 lr
with roots kept 10 steps, 21,000 lr at eps / 64^2 (tests/test_optimizers.py). A stale
step is therefore scaled down to spectral norm <= lr, the norm estimated by power iteration with torch ops only
(no host sync on CUDA, where asking whether to refresh would stop the queue once per matrix per step); the
estimate is within 2% of the norm (bench.shampoo_eps), so a stale step is at most ~1.02 lr.
k = 1 is Algorithm 1 exactly.
"""

import torch

from optim.steps import closure_loss, with_grad

# The smallest relative eps whose roots a float32 eigendecomposition resolves: float32 roots moved the step of
# low-rank bf16 gradients by at most 0.64% of lr from float64's at 3e-6 (256 x 64 to 256 x 1024), 2.8% at 1e-6,
# 27% at 1e-7
FLOAT32_EPS = 3e-6
# Power iterations of the stale-step norm: from below, at least 0.98 of ||.||_2 up to 1024 x 4096 (bench.shampoo_eps)
POWER_ITERS = 20


def inverse_fourth_root(stat: torch.Tensor, eps: float) -> torch.Tensor:
    """(stat + eps lambda_max I)^(-1/4) of a symmetric PSD float64 `stat`, its eigendecomposition in float32
    where eps >= FLOAT32_EPS; eigenvalues below 0 (rounding) count as 0. An all-zero `stat` (zero gradients so
    far) gets a finite root."""
    s, q = torch.linalg.eigh(stat.float() if eps >= FLOAT32_EPS else stat)
    s, q = s.double().clamp(min=0), q.double()
    return (q * (s + eps * s[-1]).clamp(min=torch.finfo(torch.float32).tiny).pow(-0.25)) @ q.T


def spectral_norm(a: torch.Tensor) -> torch.Tensor:
    """||a||_2 from below, by power iteration on a^T a from a fixed start (the same on every rank and resume), as
    a tensor on a's device."""
    gen = torch.Generator(a.device).manual_seed(0)
    v = torch.randn(a.shape[1], 1, generator=gen, device=a.device, dtype=a.dtype)
    for _ in range(POWER_ITERS):
        v = a.T @ (a @ v)
        v = v / v.norm().clamp(min=torch.finfo(a.dtype).tiny)
    return (a @ v).norm()


class Shampoo(torch.optim.Optimizer):
    """W <- W (1 - lr wd) - lr L^(-1/4) G R^(-1/4), with L = sum_t G_t G_t^T + eps lambda_max I and R alike over
    all steps so far; the roots recomputed at steps 1, k + 1, 2k + 1, ... (k = precondition_interval), a step
    with kept roots scaled down to spectral norm <= 1 (before lr). 2-D parameters only; `eps` is relative."""

    def __init__(self, params, *, lr: float = 1e-3, eps: float = 1e-5, weight_decay: float = 0.0,
                 precondition_interval: int = 1):
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay,
                                      precondition_interval=precondition_interval))
        for group in self.param_groups:
            if not group["eps"] > 0:
                raise ValueError(f"Shampoo needs eps > 0 (L_0 = eps I must be invertible), got {group['eps']}")
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Shampoo here preconditions matrices only, got shape {tuple(p.shape)}")

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, except that the float64 statistics and roots stay float64: torch casts floating state to
        the parameter's dtype, which would make a resumed run differ."""
        super().load_state_dict(state_dict)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        for p, i in zip([p for g in self.param_groups for p in g["params"]], saved):
            for k, v in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(v) and v.dtype == torch.float64:
                    self.state[p][k] = v.to(device=p.device, copy=True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, eps, interval = group["lr"], group["eps"], group["precondition_interval"]
            for p in with_grad(group):
                g, state = p.grad.double(), self.state[p]
                if not state:
                    state["step"] = 0
                    state["left"] = torch.zeros(p.shape[0], p.shape[0], dtype=torch.float64, device=p.device)
                    state["right"] = torch.zeros(p.shape[1], p.shape[1], dtype=torch.float64, device=p.device)
                state["left"].addmm_(g, g.T)
                state["right"].addmm_(g.T, g)
                if state["step"] % interval == 0:
                    left, right = inverse_fourth_root(state["left"], eps), inverse_fourth_root(state["right"], eps)
                    if interval > 1:  # kept for the steps that reuse them (k = 1 keeps none)
                        state["left_root"], state["right_root"] = left, right
                    update = left @ g @ right
                else:  # stale roots: at most as far as fresh ones go
                    update = state["left_root"] @ g @ state["right_root"]
                    update /= spectral_norm(update).clamp(min=1)
                state["step"] += 1
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr)
        return loss
