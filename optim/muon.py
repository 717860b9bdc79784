"""Muon with a choice of Newton-Schulz precision.

torch.optim.Muon always orthogonalizes in bfloat16 and offers no switch: right on GPUs, but on CPUs
without bf16 matmul units it is ~4x slower than float32 (n=512: 2.8 s vs 0.7 s per step). CPUs with
AVX512-BF16 or AMX are the other way round (bench.overhead measured bf16 1.6-4.3x faster on one), so
`optim.ns_dtype` chooses; `auto` takes float32 on CPU, the safe and more precise side. This subclass keeps
torch's update rule step for step (momentum, Nesterov, quintic Newton-Schulz, decoupled weight decay on the
unadjusted lr, `adjust_lr_fn`) and only lets the iteration's dtype vary; with ns_dtype=bfloat16 it
reproduces torch.optim.Muon bit for bit (tests/test_optim.py).
"""

import math

import torch


def newton_schulz(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Approximate U V^T of g = U S V^T by the quintic iteration X <- aX + (bA + cA^2)X, A = XX^T."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    """torch's per-shape lr: 'match_rms_adamw' (Muon-Kimi) gives update RMS 0.2 lr; 'original' Keller's."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Muon):
    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
