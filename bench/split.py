"""python -m bench.split: tokens/s of one process against two gloo processes (one thread each) whose step is
dominated by Newton-Schulz, with the matrix optimizer split across them (optim/split.py) and repeated on both.

The run: Muon-Kimi at n=512, L=2, 2 sequences of 64 tokens a step (byte vocabulary), float32 on CPU: Newton-Schulz
costs 8.1e10 FLOPs a step (12 matrices: 4.0e9 each for q, k, v, o, 1.2e10 for fc and proj) against 5.0e9 for the
model's forward and backward, so a process that repeats every matrix's iteration cannot go much faster with a
second one, and one that steps only its own half of them (an fc and a proj and 4 of q, k, v, o: 4.0e10 FLOPs on
each rank) can approach 2x. Each candidate runs trainer.step.train_step under DDP as train.py does (one process: micro-batch 2;
two: 1 each, the same global batch), in fresh processes, timed by rank 0 over the steps after a warm-up; the
candidates are run in rounds in rotated order (bench/common.py) and summarized by the median over rounds. The
losses of the two-process runs are compared with the one-process run's: equal up to float rounding (DDP's
all-reduce adds the two halves' gradients in another order).

    python -m bench.split                  # records to bench/results.jsonl
    python -m bench.split --rounds 1 --steps 3 --no-record   # a quick look
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import gloo, gpt_overrides, print_table, record
from bench.memory import RandomWindows
from config import load_config

RUN = gpt_overrides(512, 2, seq=64, vocab=256) | {"optim.name": "muon_kimi", "train.batch_size": 2,
                                                   "train.device": "cpu", "optim.warmup_iters": 0}
CANDIDATES = {"1 process": (1, True), "2 processes, split": (2, True), "2 processes, every rank steps every matrix":
              (2, False)}


def train(rank, world, split, steps, warmup, out):
    """Rank `rank` of `world` training RUN for warmup + steps steps; rank 0 writes its step times and the losses."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mup.scaling import build_model
    from optim.hybrid import build_optimizer
    from trainer.runtime import Runtime
    from trainer.step import train_step

    if world > 1:  # torchrun's environment; one process runs as train.py alone does, without DDP
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    cfg = load_config(None, RUN | {"train.micro_batch_size": 2 // world})
    rt = Runtime(cfg)
    torch.manual_seed(0)
    raw, table = build_model(cfg)
    opt = build_optimizer(cfg, raw, table, split=split)
    model = DistributedDataParallel(raw, gradient_as_bucket_view=True) if rt.ddp else raw
    batches, times, losses = RandomWindows(cfg), [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        loss = rt.mean(train_step(model, opt, batches, step, cfg, rt, raw)).item()  # the host sync ends the step
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    if rank == 0:
        torch.save({"times": times[warmup:], "losses": losses}, out)
    dist.barrier()


def one_run(world: int, split: bool, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.pt"
        gloo(train, world, split, steps, warmup, out)
        return torch.load(out, weights_only=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.split", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="each candidate once per round, in rotated order")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--no-record", action="store_true", help="print only (e.g. on a busy machine)")
    args = ap.parse_args(argv)
    tokens = RUN["train.batch_size"] * RUN["model.block_size"]
    names = list(CANDIDATES)
    step_s = {name: [] for name in names}
    losses = {}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            result = one_run(*CANDIDATES[name], args.steps, args.warmup)
            step_s[name].append(statistics.median(result["times"]))
            losses[name] = result["losses"]
    one = statistics.median(step_s["1 process"])
    rows, results = [], {}
    for name in names:
        s = statistics.median(step_s[name])
        diff = max(abs(a - b) for a, b in zip(losses[name], losses["1 process"]))
        results[name] = {"step_s": step_s[name], "tokens_per_s": tokens / s, "losses": losses[name]}
        rows.append({"run": name, "step s": s, "tokens/s": tokens / s, "vs 1 process": one / s,
                     "max |loss - 1 process|": f"{diff:.2g}"})
    print_table(rows, f"Muon-Kimi n=512, L=2, {tokens} tokens a step, CPU, one thread per process: median over"
                      f" {args.rounds} rounds of the median of {args.steps} steps")
    if not args.no_record:
        record("split", {"run": RUN, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup}, results)


if __name__ == "__main__":
    main()
