"""python -m bench.optimizers: each optimizer of the recipe against AdamW at n=512, L=4 (CPU, fp32).

Two numbers per optim.name, explained by what its preconditioner does:
- the optimizer step's time (after one backward; interleaved rounds, median), against AdamW's: element-wise
  optimizers cost O(params) per step; Muon adds 5 Newton-Schulz iterations per hidden matrix (4m^2 n + 2m^3
  FLOPs each for m <= n); Shampoo, at its default interval k = 100, a step that reuses its kept roots (two
  products with them and a 20-step power iteration scaling the step to <= lr), and on the row "shampoo k=1" a
  step that refreshes them (an eigendecomposition of both statistics of every hidden matrix, float32 at the base
  depth, O(out^3 + in^3)): a run pays one refresh every k steps; SOAP one eigendecomposition of each every
  precondition_interval steps plus two rotations per step; SSO Muon's orthogonalization plus a power iteration
  and a bisection for its multiplier;
- the optimizer state kept between steps (bytes of the tensors in its state_dict), against the count
  experiments.cost.optimizer_bytes makes from the shapes alone (what the memory estimate of a run uses).
The model's forward and backward are the same for every optimizer and are not timed.
"""

import argparse
import dataclasses

import torch

from bench.common import add_timing_args, build, gpt_overrides, interleaved, ms, print_table, random_batch, record
from config import load_config
from experiments import cost
from optim import registry

N_EMBD, N_LAYER, SEQ, BATCH, VOCAB = 512, 4, 64, 2, 50304
OVERRIDES = gpt_overrides(N_EMBD, N_LAYER, SEQ, VOCAB)


def state_bytes(opt) -> int:
    def walk(x):
        if torch.is_tensor(x):
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    return walk(opt.state_dict())


# Rows besides one per optim.name: Shampoo refreshing its roots at every step (Algorithm 1), what a refresh costs
VARIANTS = {"shampoo": {"shampoo k=1": {"optim.precondition_interval": 1}}}


def candidate(overrides: dict):
    """A model with gradients and a closure taking one optimizer step under `overrides` on them."""
    model, opt = build(OVERRIDES | overrides)
    x, y = random_batch(VOCAB, BATCH, SEQ)
    model(x, y)[1].backward()
    grads = {p: p.grad.clone() for p in model.parameters()}
    opt.step()  # creates the state, and Shampoo's/SOAP's first preconditioners

    def step():
        for p, g in grads.items():
            p.grad = g
        opt.step()

    return opt, step


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.optimizers", description=__doc__.split("\n\n")[0])
    add_timing_args(ap, rounds=3, reps=2, warmup=1)
    ap.add_argument("--only", nargs="+", choices=list(registry.OPTIMIZERS), default=list(registry.OPTIMIZERS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = ["adamw", *[n for n in args.only if n != "adamw"]]
    rows_of = {}
    for name in names:
        rows_of |= {name: {"optim.name": name}}
        rows_of |= {label: {"optim.name": name, **over} for label, over in VARIANTS.get(name, {}).items()}
    built = {label: candidate(over) for label, over in rows_of.items()}
    times = interleaved({label: step for label, (_, step) in built.items()}, args.rounds, args.reps, args.warmup)
    cfg = load_config(None, OVERRIDES)
    counts = cost.parameter_counts(dataclasses.astuple(cfg.model))
    rows = []
    for label, (opt, _) in built.items():
        state, _ = cost.optimizer_bytes(load_config(None, OVERRIDES | rows_of[label]))
        rows.append({"optim.name": label, "step ms median (IQR)": ms(times[label]),
                     "vs AdamW": times[label]["median"] / times["adamw"]["median"],
                     "state MiB": state_bytes(opt) / 2**20,
                     "vs AdamW state": state_bytes(opt) / state_bytes(built["adamw"][0]),
                     "estimated state MiB": state / 2**20})
    print_table(rows, f"optimizer step at n={N_EMBD} L={N_LAYER} vocab={VOCAB} ({counts['total'] / 1e6:.1f}M params,"
                      f" {counts['hidden'] / 1e6:.1f}M in hidden matrices), fp32, {args.threads} threads")
    record("optimizers", {"n_embd": N_EMBD, "n_layer": N_LAYER, "vocab": VOCAB, "threads": args.threads,
                          "rounds": args.rounds, "reps": args.reps},
           {"step_s": times, "rows": rows})


if __name__ == "__main__":
    main()
