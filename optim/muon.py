"""Muon with a choice of Newton-Schulz precision, and Newton-Schulz batched over same-shape matrices.

torch.optim.Muon always orthogonalizes in bfloat16 and offers no switch: right on GPUs, but on CPUs
without bf16 matmul units it is ~4x slower than float32 (n=512: 2.8 s vs 0.7 s per step). CPUs with
AVX512-BF16 or AMX are the other way round (bench.overhead measured bf16 1.6-4.3x faster on one), so
`optim.ns_dtype` chooses; `auto` takes float32 on CPU, the safe and more precise side. This subclass keeps
torch's update rule step for step (momentum, Nesterov, quintic Newton-Schulz, decoupled weight decay on the
unadjusted lr, `adjust_lr_fn`) and only lets the iteration's dtype vary; with ns_dtype=bfloat16 it
reproduces torch.optim.Muon bit for bit (tests/test_optim.py).

`ns_batched=True` runs Newton-Schulz once per stack of same-shape matrices (q, k, v and o of every block in
one stack; all fc; all proj; across param groups) with torch.baddbmm where the per-matrix path calls
torch.addmm, and the momentum, Nesterov, weight decay and step as torch._foreach_* calls over a group or a
stack: at L=256, n=32 (1,536 matrices) a step is 164 operator calls instead of 41,986 (27 per matrix;
python -m bench.op_count), which is what a deep narrow model needs on a GPU, where each call is a kernel
launch. The hybrid batches on CUDA; on CPU only when asked (optim.ns_batched), since a batched matmul is not
bit for bit the per-matrix one in general: a BLAS spreads a batch over threads by matrix and one matrix by
tile, and may pick other kernels (cuBLAS's batched and single GEMMs are different kernels). On this repo's CPU
(MKL, torch 2.13) one thread gave identical updates in float32 and bfloat16 for every shape tried; two threads
gave identical bfloat16 updates, and float32 ones off by float32 rounding where the shorter side is 64 or 128
(up to 1.2e-6 in entries up to 0.47), identical from 256. Momentum, Nesterov, weight decay and the per-shape lr
are the per-matrix path's, bit for bit (tests/test_gpu_paths.py). fc is stacked with fc rather than with proj
transposed: each stack then has the per-matrix path's memory layout (a tall matrix is iterated as its
transpose, a view), without which float32 differed by rounding even on one thread. A stack of one matrix takes
the per-matrix path.
"""

import math
from collections import defaultdict

import torch

from optim import registry
from optim.steps import closure_loss, with_grad


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


def newton_schulz_batched(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """newton_schulz of every matrix of the stack g (k x rows x cols) at once, each normalized by its own norm."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    """torch's per-shape lr: 'match_rms_adamw' (Muon-Kimi) gives update RMS 0.2 lr; 'original' Keller's."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Muon):
    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, ns_batched: bool = False, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype
        self.ns_batched = ns_batched

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        stacks = defaultdict(list)  # (p, group) by what fixes the iteration: its stack when batched
        for group in self.param_groups:
            params = with_grad(group)
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            if params:
                torch._foreach_lerp_(self._buffers(params), [p.grad for p in params], 1 - group["momentum"])
            for p in params:
                key = (p.shape, p.dtype, p.device, tuple(group["ns_coefficients"]), group["ns_steps"], group["eps"])
                stacks[key if self.ns_batched else id(p)].append((p, group))
        for items in stacks.values():
            per_stack = max(1, registry.MAX_STACK_ELEMENTS // items[0][0].numel())
            for i in range(0, len(items), per_stack):
                self._orthogonalize_and_apply(items[i:i + per_stack])
        return loss

    def _buffers(self, params: list) -> list:
        return [self.state[p]["momentum_buffer"] for p in params]

    def _orthogonalize_and_apply(self, part: list) -> None:
        """The Nesterov update of same-shape matrices `part` ((p, group) pairs), orthogonalized together (one
        matrix: torch's per-matrix iteration), then weight decay and the step, one foreach call per group."""
        params = [p for p, _ in part]
        group = part[0][1]
        coefficients, steps, eps = group["ns_coefficients"], group["ns_steps"], group["eps"]
        updates = []
        for g, members in by_group(part):  # Nesterov's weight is a group's
            ps = [p for p, _ in members]
            bufs = self._buffers(ps)
            updates += torch._foreach_lerp([p.grad for p in ps], bufs, g["momentum"]) if g["nesterov"] else bufs
        if len(part) == 1:
            updates = [newton_schulz(updates[0], coefficients, steps, eps, self.ns_dtype)]
        else:
            stack = torch.stack(updates)
            del updates  # the Nesterov updates are freed before the iteration's copies are made
            updates = newton_schulz_batched(stack, coefficients, steps, eps, self.ns_dtype).unbind(0)
        update_of = dict(zip(map(id, params), updates))
        for g, members in by_group(part):
            ps = [p for p, _ in members]
            lr = g["lr"]
            torch._foreach_mul_(ps, 1 - lr * g["weight_decay"])
            torch._foreach_add_(ps, [update_of[id(p)] for p in ps], alpha=-adjusted_lr(lr, g["adjust_lr_fn"], ps[0].shape))


def by_group(part: list) -> list:
    """[(group, its (p, group) pairs)] of `part`, in the order the groups first appear."""
    groups = {}
    for p, g in part:
        groups.setdefault(id(g), (g, []))[1].append((p, g))
    return list(groups.values())
