"""python -m bench.ddp_compile: what torch._dynamo.config.optimize_ddp does to regional compilation under DDP.

train.py compiles each block on its own (trainer.runtime.compile_blocks) and wraps the model in DDP. With
optimize_ddp=True (torch's default, "ddp_optimizer") dynamo, tracing a block while DDP runs, cuts the block's graph
at DDP's bucket boundaries (25 MB; the first bucket 1 MB) so that a bucket's all-reduce can start inside one
compiled backward; each piece is compiled apart. Per-block compilation already hands DDP each block's gradients
as that block's backward ends, so the split can only add graphs. This counts the graphs dynamo hands inductor,
the graph breaks, and the first (compiling) and second step's time, on 2 gloo processes (one thread each), for
each setting, with and without activation checkpointing; the block (n=768: 28 MB of float32 weights) exceeds a
bucket, as every block at n >= 768 does (n=4096: 805 MB, some 32 buckets).

Measured (2 shared CPU cores, torch 2.13): optimize_ddp=True 2 graphs, first step 35.2 s; False 1 graph,
14.3 s; with activation checkpointing 1 graph either way, 33.5 s against 9.7 s; no graph breaks; the same losses
bit for bit. trainer.runtime.compile_blocks therefore turns it off.

    python -m bench.ddp_compile                # records to bench/results.jsonl
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import gloo, gpt_overrides, print_table, record

RUN = gpt_overrides(768, 2, seq=64, vocab=256) | {"train.batch_size": 4, "train.micro_batch_size": 2,
                                                   "train.device": "cpu", "optim.warmup_iters": 0}


def measure(rank, world, optimize_ddp, checkpointing, out):
    """Two training steps of RUN under DDP with regional compilation; rank 0 writes what dynamo compiled."""
    import os

    from torch.nn.parallel import DistributedDataParallel

    from bench.memory import RandomWindows
    from config import load_config
    from mup.scaling import build_model
    from optim.hybrid import build_optimizer
    from trainer.runtime import Runtime, compile_blocks
    from trainer.step import train_step

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    graphs = []
    inductor = torch._dynamo.lookup_backend("inductor")

    def counting(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return inductor(gm, example_inputs)

    compile_ = torch.compile
    torch.compile = lambda model: compile_(model, backend=counting)
    cfg = load_config(None, RUN | {"model.activation_checkpointing": checkpointing})
    rt = Runtime(cfg)
    torch.manual_seed(0)
    raw, table = build_model(cfg)
    opt = build_optimizer(cfg, raw, table)
    view = compile_blocks(raw)
    torch._dynamo.config.optimize_ddp = optimize_ddp  # after compile_blocks, which sets train.py's choice
    model = DistributedDataParallel(view, gradient_as_bucket_view=True)
    batches, times, losses = RandomWindows(cfg), [], []
    for step in range(2):
        t0 = time.perf_counter()
        losses.append(rt.mean(train_step(model, opt, batches, step, cfg, rt, raw)).item())
        times.append(time.perf_counter() - t0)
    if rank == 0:
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        torch.save({"graphs": len(graphs), "nodes": graphs, "graph_breaks": breaks, "first_step_s": times[0],
                    "second_step_s": times[1], "losses": losses}, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for checkpointing in (False, True):
            for optimize_ddp in (True, False):
                out = Path(tmp) / f"{optimize_ddp}-{checkpointing}.pt"
                gloo(measure, 2, optimize_ddp, checkpointing, out)
                r = torch.load(out)
                rows.append({"checkpointing": checkpointing, "optimize_ddp": optimize_ddp,
                             "graphs": r["graphs"], "graph_breaks": r["graph_breaks"],
                             "first_step_s": round(r["first_step_s"], 1), "second_step_s": round(r["second_step_s"], 3),
                             "losses": [round(v, 6) for v in r["losses"]]})
    print_table(rows, "2 gloo processes, n=768, L=2, 2 x 64 tokens each, regional compilation (inductor)")
    if not args.no_record:
        record("ddp_compile", {"run": RUN}, {"rows": rows})


if __name__ == "__main__":
    main()
