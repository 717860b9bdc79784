"""A sweep, launched: which of its runs to run, a local pool of workers (or the submitit backend of
experiments/slurm.py) running them, the dry run, and the closing report. scripts/sweep.py is its command line.

Every run's config is validated before anything starts. A run whose run.json says done or diverged is skipped,
so launching the same sweep again continues an interrupted one (unfinished runs resume from their
checkpoints); a finished run trained with another config than the sweep now gives is refused, as skipping it
would mix two configs in one table (keys that only change how a run is watched or launched may differ). A crash
is recorded in the run's run.json (status failed, stderr tail) and the other runs go on. SIGTERM (or SIGUSR2)
stops the sweep: it is passed on to every running run, which checkpoints and exits (run.json: interrupted), no
further run starts, and the sweep exits 143 (128 + the signal); Ctrl-C likewise (130). DIR/sweep.json lists
every run's overrides, for plot.py.

Local workers each get their own GPUs (CUDA_VISIBLE_DEVICES) and an equal share of the CPU threads (of
OMP_NUM_THREADS if set, else of this process's cores), divided again among a run's torchrun ranks; each is a
long-lived process training one run after another (processes.Workers), or with --isolate (and for torchrun's
runs) starts a process per run (processes.Subprocess). Runs go longest first.
"""

import contextlib
import dataclasses
import queue
import shlex
import signal
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from config import ConfigError, flatten, parse_overrides, validate
from experiments import cost, processes, scoring, slurm
from experiments.grid import Run, Sweep, load_sweep, write_plan
from trainer import checkpoint
from trainer.run_record import DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, read_record

BACKENDS = ("local", *slurm.CLUSTERS)
OVER = "OVER 80 GB"  # --dry-run's mark on a run whose estimated peak GPU memory exceeds cost.CARD_GIB


@dataclasses.dataclass
class Options:
    """How to launch a sweep: scripts/sweep.py's command line, one field per option."""
    sweep: Path  # the sweep file
    out: Path  # the sweep's directory: one subdirectory per run
    overrides: list[str] = dataclasses.field(default_factory=list)  # key=value set in every run
    workers: int | None = None  # local runs at a time; None: one per group of gpus_per_run visible GPUs, else 1
    gpus_per_run: int = 1  # > 1: torchrun, DDP
    backend: str = "local"  # one of BACKENDS
    dry_run: bool = False  # validate, print the runs, their GPU-hours and memory; run nothing
    only: list[str] | None = None  # run only these runs of the sweep
    isolate: bool = False  # local: each run in a train.py process of its own, not in a long-lived worker
    eval_data: str | None = None  # score every done run's checkpoint on this corpus's val split (evals.jsonl)
    partition: str | None = None  # the submitit backend's Slurm settings, from here on
    account: str | None = None
    time_min: int = 240
    cpus_per_gpu: int = slurm.CPUS_PER_GPU
    cpus_per_run: int | None = None
    array_parallelism: int = 64


@dataclasses.dataclass
class Plan:
    sweep: Sweep
    runs: list[Run]  # the runs asked for (all, or --only)
    pending: list[Run]  # those not finished yet


def plan(o: Options) -> Plan:
    """The sweep's runs to launch, every one validated on its GPUs; a ConfigError before anything is written."""
    sweep = load_sweep(o.sweep, o.out, parse_overrides(o.overrides))
    runs = sweep.runs
    if o.only:
        unknown = set(o.only) - {run.name for run in runs}
        if unknown:
            raise ConfigError(f"no run named {', '.join(sorted(unknown))} in {o.sweep}")
        runs = [run for run in runs if run.name in o.only]
    for run in runs:  # the batch must also divide across each run's GPUs
        try:
            validate(run.config, world_size=o.gpus_per_run)
        except ConfigError as e:
            raise ConfigError(f"run {run.name} on {o.gpus_per_run} GPUs: {e}") from None
    if o.eval_data:
        scoring.check(runs, o.eval_data)
    recorded = {run.name: read_record(run.dir) for run in runs}
    # keys that only change how a run is watched or launched (wandb's group and name, intervals) may differ
    stale = {run.name: diff for run in runs if recorded[run.name].get("status") in FINISHED
             and "config" in recorded[run.name]
             and (diff := checkpoint.differences(flatten(recorded[run.name]["config"]), run.config, "run"))}
    if stale:  # skipping them would mix results of two different configs in one table
        name, diff = next(iter(stale.items()))
        raise ConfigError(f"{len(stale)} finished runs in {o.out} were made with another config than"
                          f" {o.sweep} now gives (e.g. {name}: {'; '.join(diff)});"
                          f" delete them or use another --out")
    return Plan(sweep, runs, [run for run in runs if recorded[run.name].get("status") not in FINISHED])


def longest_first(runs: list[Run]) -> list[Run]:
    """The runs by estimated cost, largest first, so that a pool's workers finish together rather than one
    of them starting the longest run last (the CPU-tiny width sweep's twelve n = 256 runs take two thirds of
    its compute). The cost counts the optimizer's FLOPs too: at tiny widths Muon's Newton-Schulz costs nearly
    as much as the model's forward and backward (80 ms against 2 x 54 ms a step at n = 256)."""
    return sorted(runs, key=lambda run: -(cost.train_flops(run.config)
                                          + run.config.train.max_iters * cost.optimizer_flops(run.config)))


def executor(sweep: Sweep, o: Options):
    """The local executor, as a context: Workers for runs of one GPU or the CPU (a run pays for no new process
    and imports), Subprocess for torchrun's runs or with --isolate."""
    if o.isolate or o.gpus_per_run > 1:
        return contextlib.nullcontext(processes.Subprocess(sweep, o.gpus_per_run))
    return processes.Workers(sweep)


def run_local(runs: list[Run], envs: list[dict], children: processes.Children, execute) -> dict:
    """A thread per worker environment, each launching one run at a time with `execute` (an executor of
    experiments/processes.py), longest runs first. Returns {run name: what processes.launch returned}."""
    free = queue.SimpleQueue()
    for env in envs:
        free.put(env)

    def job(run: Run) -> str:
        env = free.get()
        try:
            return processes.launch(run, env, children, execute)
        finally:
            free.put(env)

    statuses = {}
    with ThreadPoolExecutor(len(envs)) as pool, tqdm(total=len(runs), desc="sweep", unit="run") as bar:
        futures = {pool.submit(job, run): run for run in longest_first(runs)}
        for future in as_completed(futures):
            run, status = futures[future], future.result()
            statuses[run.name] = status
            if status == FAILED:
                error = read_record(run.dir).get("error", "").strip().splitlines()
                bar.write(f"failed: {run.name}: {error[-1] if error else ''}")
            bar.set_postfix(Counter(statuses.values()))
            bar.update()
    return statuses


def memory_column(run: Run, gpus_per_run: int) -> tuple[str, float | None]:
    """A run's estimated peak GPU memory per GPU at its micro-batch, on `gpus_per_run` ranks (weights, the
    rank's optimizer state, and the largest of forward and backward, the optimizer step and Sophia's pass:
    experiments.cost.peak_memory_gib), as --dry-run prints it, and the GiB; `-` and None for a CPU run
    (train.device cpu), which needs no GPU."""
    if run.config.train.device == "cpu":
        return "- GiB/GPU", None
    gib = cost.peak_memory_gib(run.config, gpus_per_run)["total"]
    return f"{gib:.3g} GiB/GPU", gib


def dry_run(p: Plan, gpus_per_run: int) -> None:
    """Each run (`run` or `skip` if finished) with its tokens, FLOPs per token, estimated peak GPU memory per GPU
    and GPU-hours; runs whose memory estimate exceeds cost.CARD_GIB end with OVER 80 GB; then the totals."""
    todo = {run.name for run in p.pending}
    total = remaining = 0.0
    peaks = {}
    for run in p.sweep.runs:
        flops, tokens = cost.train_flops(run.config), cost.run_tokens(run.config)
        total += flops
        remaining += flops if run.name in todo else 0.0
        memory, gib = memory_column(run, gpus_per_run)
        if gib is not None:
            peaks[run.name] = gib
        print(f"{'run ' if run.name in todo else 'skip'}  {run.name}  {tokens / 1e6:.4g}M tokens"
              f"  {flops / tokens / 1e9:.3g} GFLOP/token  {memory}  {cost.gpu_hours(flops):.3g} GPU-h"
              + (f"  {OVER}" if gib is not None and gib > cost.CARD_GIB else ""))
    if peaks:  # the GPU runs' memory, before the totals line (scripts/reproduce.sh reads that one)
        over = sum(gib > cost.CARD_GIB for gib in peaks.values())
        gpus = f"{gpus_per_run} GPU{'s' * (gpus_per_run > 1)}"
        if over:
            print(f"{over} runs over an 80 GB GPU (estimated peak above {cost.CARD_GIB} GiB per GPU on {gpus}): use"
                  f" model.activation_checkpointing=true or a smaller train.micro_batch_size")
        else:
            largest = max(peaks, key=peaks.get)
            print(f"every GPU run fits an 80 GB GPU: largest estimated peak {peaks[largest]:.3g} GiB per GPU on"
                  f" {gpus} ({largest}), limit {cost.CARD_GIB} GiB")
    print(f"{len(p.sweep.runs)} runs ({len(p.pending)} to run): {cost.gpu_hours(total):.3g} {cost.GPU}-hours"
          f" ({cost.gpu_hours(remaining):.3g} to run), training FLOPs {total:.3g} ({remaining:.3g} to run) at"
          f" {cost.MFU:.0%} MFU of {cost.PEAK / 1e12:.0f} TFLOP/s (dense bf16); evaluation not counted")
    if p.pending:
        print("first command:", shlex.join(processes.Subprocess(p.sweep, gpus_per_run).command(p.pending[0])))


def report_stop(statuses: dict, pending: list[Run], signum: int) -> int:
    """After a stop signal: which runs were interrupted, and how to continue; the exit code 128 + signal."""
    interrupted = [name for name, status in statuses.items() if status == INTERRUPTED]
    not_started = list(statuses.values()).count(processes.NOT_STARTED)
    lines = [f"sweep stopped by {signal.Signals(signum).name}: {len(interrupted)} runs interrupted,"
             f" {not_started} not started"]
    lines += [f"  interrupted  {name}" for name in interrupted]
    if len(pending) > len(statuses):
        lines.append(f"{len(pending) - len(statuses)} submitted jobs not waited for")
    lines.append("Rerun the same command to resume the sweep: interrupted runs continue from their checkpoints,"
                 " finished ones are skipped.")
    print("\n".join(lines), file=sys.stderr)
    return 128 + signum


def launch_sweep(o: Options) -> int:
    """Plan, then dry-run or run the sweep; the exit code: 0, 1 if a run failed or was interrupted, 2 for a
    config error (nothing written), 128 + signal if stopped."""
    cluster = slurm.CLUSTERS.get(o.backend)
    try:
        p = plan(o)
        workers = o.workers or max(1, len(processes.visible_gpus()) // o.gpus_per_run)
        envs = None
        if p.pending and cluster:  # refuse what the GPUs cannot serve, up front
            params, jobs = slurm.submitit_jobs(p.sweep, p.pending, o, cluster)
        elif p.pending:
            envs = processes.worker_envs(workers, o.gpus_per_run)
        if o.dry_run:
            dry_run(p, o.gpus_per_run)
            if p.pending and cluster:
                print(slurm.describe_jobs(params, jobs, o.gpus_per_run, cluster))
            return 0
    except ConfigError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    if not o.only:
        write_plan(p.sweep, o.out)
    print(f"{len(p.runs)} runs, {len(p.runs) - len(p.pending)} already finished, {len(p.pending)} to run ({o.out})")
    children = processes.Children()
    previous = {s: signal.signal(s, children.stop) for s in processes.STOP_SIGNALS}
    try:
        statuses = {}
        if envs:
            with executor(p.sweep, o) as execute:
                statuses = run_local(p.pending, envs, children, execute)
        elif p.pending:
            statuses = slurm.run_submitit(p.sweep, p.pending, o, cluster, children)
        if o.eval_data and children.signal is None:
            scoring.score(p.runs, o.eval_data)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    counts = Counter(statuses.values())
    print(f"done {counts[DONE]}, diverged {counts[DIVERGED]}, failed {counts[FAILED]},"
          f" interrupted {counts[INTERRUPTED]}, running elsewhere {counts[processes.BUSY]},"
          f" skipped {len(p.runs) - len(p.pending)}")
    if children.signal is not None:
        return report_stop(statuses, p.pending, children.signal)
    return 1 if counts[FAILED] or counts[INTERRUPTED] else 0
