"""python -m bench.op_count: operator calls of one optimizer step of a deep narrow model, per matrix vs batched.

A GPU runs one kernel (at least) per operator call, and at depth the optimizer's calls, not its FLOPs, bound the
step: at L=256, n=32 (1,536 hidden matrices) Muon's per-matrix path (torch.optim.Muon's) makes 27 calls a matrix,
~42,000 a step, where 8 H100s at 40% MFU compute the step's model work in ~0.16 s. Counted here: every ATen
operator call (a TorchDispatchMode below autograd, the level at which kernels are launched; views and in-place ops
count, torch.distributed collectives do not occur on one process) of the second step of each optimizer (the first
creates its state), on fixed random gradients:
- the hidden matrices' optimizer alone, per matrix and, for Muon, batched (`optim.ns_batched`; what the hybrid runs
  on CUDA): Newton-Schulz once per stack of same-shape matrices, momentum and the step as foreach calls;
- the whole hybrid step as built for CUDA: batched Muon and torch's fused AdamW (one kernel over every tensor).
Deterministic: the counts do not depend on the machine or its load.

    python -m bench.op_count                  # L=256, n=32; records to bench/results.jsonl
    python -m bench.op_count --n-layer 64 --no-record
"""

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.common import build, gpt_overrides, print_table, record
from optim import registry

MATRIX = [name for name, spec in registry.OPTIMIZERS.items() if spec.hidden != spec.other]


class OperatorCalls(TorchDispatchMode):
    """Counts the ATen operators called while active, by name."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def second_step_calls(step) -> collections.Counter:
    step()
    with OperatorCalls() as counter:
        step()
    return counter.calls


def setup(name: str, n: int, L: int, batched: bool, fused: bool):
    """The hybrid of optim.name `name` at width n, depth L, random gradients on every parameter; Muon batched or
    not, AdamW fused (as on CUDA) or torch's CPU default."""
    overrides = gpt_overrides(n, L, seq=16, vocab=256) | {"model.head_dim": 16, "optim.name": name,
                                                          "optim.ns_batched": batched}
    model, hybrid = build(overrides)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    if fused and "adamw" in hybrid.optimizers:
        adamw = hybrid.optimizers["adamw"]
        adamw.defaults["fused"] = True
        for group in adamw.param_groups:
            group["fused"] = True
    return hybrid


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.op_count", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-embd", type=int, default=32)
    ap.add_argument("--n-layer", type=int, default=256)
    ap.add_argument("--optimizers", nargs="+", choices=MATRIX, default=MATRIX)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n, L = args.n_embd, args.n_layer

    rows, results = [], {}
    for name in args.optimizers:
        hidden = registry.get(name).hidden
        paths = {"per matrix": False, "batched": True} if registry.RULES[hidden].stacks else {"per matrix": False}
        for path, batched in paths.items():
            hybrid = setup(name, n, L, batched, fused=True)
            inner = hybrid.optimizers[hidden]
            matrices = sum(len(g["params"]) for g in inner.param_groups)
            alone = second_step_calls(inner.step)
            whole = second_step_calls(hybrid.step)
            results[f"{name} {path}"] = {"matrices": matrices, "matrix_optimizer": alone, "hybrid_cuda": whole}
            rows.append({"optim.name": name, "path": path, "matrices": matrices,
                         "matrix optimizer calls": sum(alone.values()),
                         "per matrix": sum(alone.values()) / matrices,
                         "hybrid step calls (fused AdamW)": sum(whole.values())})
    print_table(rows, f"operator calls of one optimizer step, n={n}, L={L} (the second step)")
    for name in args.optimizers:
        if f"{name} batched" in results:
            before = sum(results[f"{name} per matrix"]["matrix_optimizer"].values())
            after = sum(results[f"{name} batched"]["matrix_optimizer"].values())
            print(f"{name}: batched makes {after:,} calls, {after / before:.2%} of the per-matrix path's {before:,}")
    if not args.no_record:
        record("op_count", {"n_embd": n, "n_layer": L}, results)


if __name__ == "__main__":
    main()
