"""python -m bench.ns_batch: Muon's Newton-Schulz per matrix vs batched over same-shape matrices, on CPU.

A deep narrow model is many small matrices: at L=64, n=128 Muon orthogonalizes 384 of them per step (q, k, v,
o of 128 x 128 and fc, proj of 128 x 512 in every block). The per-matrix path (torch.optim.Muon's) runs 5
iterations of 3 matmuls on each; `optim.muon.Muon(ns_batched=True)` stacks the matrices of one shape and runs
the same iterations with batched matmuls (3 stacks here: 256 x (128, 128), 64 x (512, 128) fc, 64 x
(128, 512) proj). On a GPU that turns ~6,000 kernel launches per step into ~50; on a CPU it changes how the
BLAS spreads the work over threads. Timed: Muon's step alone (momentum, Newton-Schulz, update) on fixed
gradients, both paths interleaved, in float32 and bfloat16 Newton-Schulz. Also printed: the largest
difference between the two paths' parameters after one step from the same state (0: bit for bit).

    python -m bench.ns_batch                     # L=64, n=128; records to bench/results.jsonl
    python -m bench.ns_batch --n-embd 256 --rounds 1 --reps 1 --warmup 0 --no-record   # a quick look
"""

import argparse

import torch

from bench.common import add_timing_args, build, gpt_overrides, interleaved, ms, print_table, record

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def setup(n: int, L: int, dtype: str):
    overrides = gpt_overrides(n, L, seq=64, vocab=256) | {"optim.name": "muon_kimi", "optim.ns_dtype": dtype}
    model, hybrid = build(overrides)
    muon = hybrid.optimizers["muon_kimi"]
    g = torch.Generator().manual_seed(1)
    params = [p for group in muon.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return model, muon, params


def largest_difference(n: int, L: int, dtype: str) -> float:
    """Max |per-matrix - batched| over every parameter after one step from the same parameters and grads."""
    _, muon, params = setup(n, L, dtype)
    before = [p.detach().clone() for p in params]
    muon.step()
    per_matrix = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    muon.state.clear()
    muon.ns_batched = True
    muon.step()
    return max((a - p.detach()).abs().max().item() for a, p in zip(per_matrix, params))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.ns_batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=64)
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--no-record", action="store_true", help="print only (e.g. on a busy machine)")
    add_timing_args(ap, rounds=5, reps=3, warmup=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, L = args.n_embd, args.n_layer

    rows, results = [], {}
    for dtype in args.dtypes:
        _, per_matrix, _ = setup(n, L, dtype)
        _, batched, _ = setup(n, L, dtype)
        batched.ns_batched = True
        shapes = sorted({tuple(p.shape) for g in per_matrix.param_groups for p in g["params"]})
        matrices = sum(len(g["params"]) for g in per_matrix.param_groups)
        t = interleaved({"per-matrix": per_matrix.step, "batched": batched.step}, args.rounds, args.reps,
                        args.warmup)
        diff = largest_difference(n, L, dtype)
        results[dtype] = {"step_s": t, "max_abs_diff": diff, "matrices": matrices, "shapes": shapes}
        rows.append({"NS dtype": dtype, "matrices": matrices, "per-matrix ms": ms(t["per-matrix"]),
                     "batched ms": ms(t["batched"]), "speed-up": t["per-matrix"]["median"] / t["batched"]["median"],
                     "max |diff|": f"{diff:.3g}"})
    print_table(rows, f"Muon-Kimi step, n={n}, L={L}, {args.threads} threads, "
                      f"{args.rounds} rounds x {args.reps} steps (median, IQR)")
    if args.no_record:
        return
    record("ns_batch", {"n_embd": n, "n_layer": L, "threads": args.threads, "rounds": args.rounds,
                        "reps": args.reps, "warmup": args.warmup}, results)


if __name__ == "__main__":
    main()
