"""SSO, the Spectral Sphere Optimizer: Xie et al. (2026), "Controlled LLM Training on Spectral Sphere",
Algorithm 1. Steepest descent under the spectral norm on the sphere ||W||_2 = R, R = c sqrt(out/in): each step
retracts W onto the sphere and moves it by lr R Phi, Phi = msign(M + lambda Theta) with the multiplier lambda
that makes Phi tangent to the sphere (<Theta, Phi> = 0, Theta = u1 v1^T the top singular pair of W).

Written here because no package has it whole: pytorch_optimizer's SpectralSphere solves for lambda but keeps
no radius and never retracts (the weights drift off the sphere), and the authors' code is Megatron-LM or a
single-file script. Differences from their script, each for a reason:
- msign is this project's `optim.muon.newton_schulz` (Muon's quintic, `optim.ns_steps`, `optim.ns_dtype`)
  where the paper uses 8 Polar-Express steps; its footnote 5 measured no difference between 5 and 8 steps or
  between coefficient sets;
- lambda's search starts from 0 at every step (the paper's text; the script warm-starts from the last one), so
  a step depends only on W, the momentum and the gradient;
- weight decay, which the paper leaves on in its hard-retraction runs, multiplies the retracted W as in
  AdamW (W <- W - lr (R Phi + wd W)); the script decays before the retraction, which then undoes it exactly.
A step runs msign up to 1 + 10 + 20 times per matrix (h(0), bracketing, bisection), each with a host sync for
the sign of h: the cost the paper's Section 5 discusses, not Muon's single msign.
"""

import math

import torch

from optim.muon import newton_schulz
from optim.steps import closure_loss, with_grad

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's quintic, as every Muon group here uses


class SSO(torch.optim.Optimizer):
    """2-D parameters only. `radius` is c; the top singular pair comes from `power_iters` steps of power
    iteration (20, the authors' Megatron default) warm-started from the last step's right vector (their cached
    singular vectors; kept in the state, so a resume is exact). `tol`, `max_expand` and `max_bisect` bound the
    search for lambda."""

    def __init__(self, params, *, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 radius: float = 1.0, weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32, power_iters: int = 20, tol: float = 1e-6,
                 max_expand: int = 10, max_bisect: int = 20, ns_eps: float = 1e-7):
        checks = {"lr": lr >= 0, "momentum": 0 <= momentum < 1, "radius": radius > 0, "weight_decay": weight_decay >= 0,
                  "ns_steps": ns_steps >= 1, "power_iters": power_iters >= 1, "tol": tol > 0,
                  "max_expand": max_expand >= 1, "max_bisect": max_bisect >= 0, "ns_eps": ns_eps > 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SSO: invalid {name}: {locals()[name]!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, radius=radius, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, power_iters=power_iters, tol=tol,
                        max_expand=max_expand, max_bisect=max_bisect, ns_eps=ns_eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"SSO keeps matrices on a spectral sphere, got shape {tuple(p.shape)}")

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["v"] = torch.ones(p.shape[1], 1, device=p.device)  # the authors' start
        return state

    @staticmethod
    def msign(x: torch.Tensor, group: dict) -> torch.Tensor:
        return newton_schulz(x, NS_COEFFICIENTS, group["ns_steps"], group["ns_eps"], group["ns_dtype"]).float()

    @staticmethod
    def top_singular(w: torch.Tensor, v: torch.Tensor, group: dict) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(sigma, u, v) of w (float32) by bilateral power iteration from the unit column v."""
        for _ in range(group["power_iters"]):
            u = torch.nn.functional.normalize(w @ v, dim=0, eps=group["ns_eps"])
            v = torch.nn.functional.normalize(w.T @ u, dim=0, eps=group["ns_eps"])
        return (u.T @ w @ v).item(), u, v

    def solve_lambda(self, m: torch.Tensor, u: torch.Tensor, v: torch.Tensor, group: dict) -> float:
        """The root of h(lambda) = <Theta, msign(m + lambda Theta)> = u^T msign(.) v, non-decreasing in lambda:
        bracket from 0 by doubling steps against the sign of h(0), then bisect. Unbracketed: 0, Muon's direction."""
        theta = u @ v.T

        def h(lam: float) -> float:
            return (u.T @ self.msign(m + lam * theta, group) @ v).item()

        lo, f_lo = 0.0, h(0.0)
        if abs(f_lo) <= group["tol"]:
            return 0.0
        step = 1e-3 if f_lo < 0 else -1e-3
        for _ in range(group["max_expand"]):
            hi, f_hi = lo + step, h(lo + step)
            if (f_hi > 0) != (f_lo > 0):
                break
            lo, f_lo, step = hi, f_hi, 2 * step
        else:
            return 0.0
        (a, f_a), (b, f_b) = sorted([(lo, f_lo), (hi, f_hi)], key=lambda t: t[1])  # h(a) <= 0 < h(b)
        best, f_best = (a, f_a) if abs(f_a) < abs(f_b) else (b, f_b)
        for _ in range(group["max_bisect"]):
            mid = 0.5 * (a + b)
            f_mid = h(mid)
            if abs(f_mid) < abs(f_best):
                best, f_best = mid, f_mid
            if abs(f_mid) <= group["tol"]:
                break
            if f_mid <= 0:
                a = mid
            else:
                b = mid
        return best

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for p in with_grad(group):
                g, state = p.grad, self._init_state(p)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - beta)
                m = (g.lerp(buf, beta) if group["nesterov"] else buf).float()
                m = m / m.norm().clamp(min=group["ns_eps"])
                sigma, u, state["v"] = self.top_singular(p.float(), state["v"], group)
                radius = group["radius"] * math.sqrt(p.shape[0] / p.shape[1])
                p.mul_(radius / max(sigma, group["ns_eps"]))  # retraction onto ||W||_2 = R
                phi = self.msign(m + self.solve_lambda(m, u, state["v"], group) * (u @ state["v"].T), group)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(phi.to(p.dtype), alpha=-lr * radius)
        return loss
