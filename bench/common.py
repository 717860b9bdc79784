"""What the benchmarks share: the model under test, interleaved timing, peak memory, and the record.

Timing. The CPUs benchmarks run on are often shared, so a benchmark times its candidates in interleaved
rounds (A B C, then B C A, then C A B, ...) and summarizes each by its median over rounds with the
interquartile range. A busy spell then slows every candidate a little instead of one candidate a lot.

Peak memory. On CUDA: torch.cuda.max_memory_allocated (bench.gpu). On CPU torch keeps no allocator
statistics and tracemalloc does not see its allocations, so `peak_rss_mib` runs one configuration in a
fresh spawned process and reports how far the process's resident-set high-water mark (Linux: VmHWM)
rises from just before the model is built to the end of its steps: parameters, gradients, optimizer
state, activations and allocator slack, i.e. what the OS had to provide. Imports are in the baseline,
not in the number. The process must be fresh because a high-water mark never comes down.
"""

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from config import load_config
from mup.scaling import build_model
from optim.hybrid import build_optimizer
from trainer.runtime import compile_blocks

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
ROOT = RESULTS.parents[1]


def gpt_overrides(n_embd: int, n_layer: int, seq: int, vocab: int = 50304) -> dict:
    """A GPT-2-style shape (heads of 64, no dropout, biases, tied embeddings) over the embedded default."""
    return {"model.n_embd": n_embd, "model.n_layer": n_layer, "model.head_dim": 64, "model.block_size": seq,
            "model.vocab_size": vocab, "model.dropout": 0.0, "model.bias": True, "model.tie_embeddings": True}


def build(overrides: dict, device="cpu", config=None):
    """This repo's model and optimizer exactly as train.py builds them (from `config`, a YAML path, or
    the embedded default, plus `overrides`)."""
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model, table = build_model(cfg, device)
    return model, build_optimizer(cfg, model, table)


def random_batch(vocab: int, batch: int, seq: int, device="cpu"):
    """Random token ids: the speed of a step does not depend on what the tokens are."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, vocab, (2, batch, seq), generator=g)
    return x.to(device), y.to(device)


def train_step(loss_fn, opt):
    """One training step as train.py takes it: loss, backward, optimizer step, gradients freed."""

    def step():
        loss_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def our_step(overrides: dict, batch: int, device="cpu", autocast=None, compile=False, config=None,
             ns_batched: bool | None = None):
    """This repo's model and a closure taking one training step of it on a fixed random batch (`ns_batched`:
    Muon's Newton-Schulz batched over same-shape matrices or not; None: as the hybrid builds it, batched on CUDA)."""
    model, opt = build(overrides, device, config=config)
    for inner in getattr(opt, "optimizers", {}).values():
        if hasattr(inner, "ns_batched") and ns_batched is not None:
            inner.ns_batched = ns_batched
    x, y = random_batch(model.cfg.vocab_size, batch, model.cfg.block_size, device)
    forward = compile_blocks(model) if compile else model  # as train.py compiles

    def loss():
        with autocast or contextlib.nullcontext():
            return forward(x, y)[1]

    return model, train_step(loss, opt)


def summary(samples: list[float]) -> dict:
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
    return {"median": statistics.median(samples), "q1": q1, "q3": q3, "min": min(samples), "max": max(samples),
            "n": len(samples)}


def interleaved(candidates: dict, rounds: int, reps: int, warmup: int = 1, sync=lambda: None) -> dict:
    """Seconds per call of each candidate (a no-argument callable), as {name: summary}.

    Every candidate first makes `warmup` untimed calls; then each of `rounds` rounds times `reps` calls of
    every candidate, in an order rotated by one each round.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    sync()
    times = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            for _ in range(reps):
                candidates[name]()
            sync()
            times[name].append((time.perf_counter() - t0) / reps)
    return {name: summary(t) for name, t in times.items()}


def rss_high_water_kib() -> int:
    """This process's peak resident set, in KiB. Linux's VmHWM belongs to the current program image;
    getrusage's ru_maxrss would also carry the peak of the (large) parent that spawned this process."""
    status = Path("/proc/self/status")
    if status.exists():
        return int(next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")).split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; bytes on macOS


def _rss_growth_mib(fn, args, threads):
    torch.set_num_threads(threads)
    before = rss_high_water_kib()
    fn(*args)
    return (rss_high_water_kib() - before) / 1024


def peak_rss_mib(fn, *args) -> float:
    """Growth of the resident-set high-water mark while fn(*args) runs in a fresh process (see above).

    `fn` must be a module-level function (it is pickled by name) that builds and runs what it measures.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_rss_growth_mib, fn, args, torch.get_num_threads()).result()


def _gloo_rank(rank, fn, world, init, args):
    import torch.distributed as dist

    from trainer.runtime import init_process_group

    torch.set_num_threads(1)
    init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def gloo(fn, world: int, *args) -> None:
    """fn(rank, world, *args) in `world` spawned processes of one gloo group, one thread each; an exception in
    any of them is raised here with its traceback. `fn` must be a module-level function (it is pickled)."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_rank, args=(fn, world, str(Path(tmp) / "init"), args), nprocs=world)


def add_timing_args(parser: argparse.ArgumentParser, rounds: int, reps: int, warmup: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per candidate per round")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per candidate first")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch CPU threads (default: every core this process may use)")


def ms(s: dict) -> str:
    """A timing summary as 'median (q1-q3)' in milliseconds."""
    return f"{s['median'] * 1e3:,.1f} ({s['q1'] * 1e3:,.1f}-{s['q3'] * 1e3:,.1f})"


def print_table(rows: list[dict], title: str = "") -> None:
    def cell(v):
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    cols = list(rows[0])
    cells = [[cell(row[c]) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine() -> dict:
    m = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
         "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(), "torch": torch.__version__,
         "torch_threads": torch.get_num_threads(), "load_avg_1m_start": AT_START["load_avg_1m"],
         "load_avg_1m_end": os.getloadavg()[0]}
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
    return m


def git_state() -> dict:
    """Commit of the code measured; dirty if a tracked file other than results.jsonl differs from it."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS.relative_to(ROOT)}")
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(changed)}


# Taken when a benchmark starts (imports this module): the code it runs, and how busy the machine was.
AT_START = {"git": git_state(), "load_avg_1m": os.getloadavg()[0]}


def record(benchmark: str, params: dict, results: dict) -> dict:
    """Append one JSON line (what ran, where, on which commit, and its numbers) to bench/results.jsonl."""
    line = {"benchmark": benchmark, "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "git": git_state(), "params": params, "results": results}
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return line
