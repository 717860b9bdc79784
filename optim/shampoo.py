"""Shampoo for matrices: Gupta, Koren, Singer (2018), "Shampoo: Preconditioned Stochastic Tensor
Optimization", Algorithm 1, with decoupled weight decay and inverse roots refreshed every few steps.

Written here because pytorch_optimizer's Shampoo departs from Algorithm 1 where this project needs it: with a
refresh interval k > 1 its inverse roots start at zero, so the first k - 1 steps do not move the weights; its
momentum mixes raw gradients with past preconditioned ones (in no paper); and it adds eps I to float32
statistics, where an eps_base of 1e-16 under gradients' squares ~1e-6 is rounded away, then raises singular
values at rounding level to the power -1/4. Here the statistics are kept without eps and (S + eps I)^(-1/4) is
taken from their eigendecomposition, which is Algorithm 1's L_t = eps I + sum G G^T exactly.

Statistics, roots and the preconditioned gradient are float64: float32's rounding of G G^T (1e-7 of its top
eigenvalue) buries the small eigenvalues that the power -1/4 amplifies, and in float32 the tiny width
coordinate check's MLP projection stepped 15x past the bound ||dW||_2 <= lr at n = 128 on its first step.
"""

import torch

from optim.steps import closure_loss, with_grad


def inverse_fourth_root(stat: torch.Tensor, eps: float) -> torch.Tensor:
    """(stat + eps I)^(-1/4) for a symmetric PSD `stat`; eigenvalues below 0 (rounding) count as 0."""
    s, q = torch.linalg.eigh(stat)
    return (q * (s.clamp(min=0) + eps).pow(-0.25)) @ q.T


class Shampoo(torch.optim.Optimizer):
    """W <- W (1 - lr wd) - lr L^(-1/4) G R^(-1/4), with L = eps I + sum_t G_t G_t^T and R = eps I + sum_t G_t^T G_t
    over all steps so far, the roots recomputed at steps 1, k + 1, 2k + 1, ... (k = precondition_interval).
    2-D parameters only.

    Algorithm 1 is k = 1, and only then is every step's spectral norm at most lr (L >= G G^T, R >= G^T G). With
    k > 1 the roots are stale, and a direction the statistics have not seen is amplified by up to eps^(-1/4) on
    each side: after one step L of a 4n x n matrix has rank n, and at eps_base = 1e-16 the tiny width coordinate
    check's MLP fc went from ||dW||_R = 0.004 to 43-152 at step 2 with k = 10. Use k > 1 only with an eps near
    the gradients' squares."""

    def __init__(self, params, *, lr: float = 1e-3, eps: float = 1e-12, weight_decay: float = 0.0,
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
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = 0
                    state["left"] = torch.zeros(p.shape[0], p.shape[0], dtype=torch.float64, device=p.device)
                    state["right"] = torch.zeros(p.shape[1], p.shape[1], dtype=torch.float64, device=p.device)
                g = g.double()
                state["left"].addmm_(g, g.T)
                state["right"].addmm_(g.T, g)
                if state["step"] % interval == 0:
                    roots = inverse_fourth_root(state["left"], eps), inverse_fourth_root(state["right"], eps)
                    if interval > 1:  # kept for the steps that reuse them (k = 1 keeps none)
                        state["left_root"], state["right_root"] = roots
                else:
                    roots = state["left_root"], state["right_root"]
                state["step"] += 1
                p.mul_(1 - lr * group["weight_decay"])
                p.add_((roots[0] @ g @ roots[1]).to(p.dtype), alpha=-lr)
        return loss
