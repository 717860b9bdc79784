"""Run a grid of training runs: python scripts/sweep.py SWEEP.yaml --out DIR [--workers N]

A sweep file names a base run config and what to vary (experiments/grid.py describes the format):

    base: ../owt_base.yaml               # a run config, relative to this file
    grid:                                # config keys -> lists; the cartesian product, in file order
      scaling.parameterization: [sp, mup]
      model.n_embd: [128, 256, 512]
      log2_lr: [-10, -9, -8, -7]         # shorthand for optim.lr: [2**-10, ...] (log2_wd: optim.weight_decay)
    overrides:                           # optional: set in every run
      model.n_layer: 4
    seeds: [1, 2]                        # optional: train.seed, the last (fastest) axis

Each run is `python train.py BASE key=value ... train.out_dir=DIR/NAME train.resume=auto` in a process of
its own, NAME spelling out the run's swept settings (`parameterization=mup,n_embd=256,log2_lr=-7,seed=1`).
Every run's config is validated before anything starts. A run whose run.json says done or diverged is
skipped, so running the same command again continues an interrupted sweep (unfinished runs resume from
their checkpoints), and one that another process is running (it holds DIR/NAME/.lock) is left alone; a
crash is recorded in the run's run.json (status failed, stderr tail) and the other runs go on.
SIGTERM (or SIGUSR2) stops the sweep: it is passed on to every running train.py, which checkpoints and
exits (run.json: interrupted), no further run starts, and the sweep exits 143 (128 + the signal); Ctrl-C
likewise (130). DIR/sweep.json lists every run's overrides, for plot.py. --dry-run prints the runs and the
GPU-hours they need without starting anything.
"""

import argparse
import fcntl
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo runs from its root, uninstalled

from atomic import write_json  # noqa: E402
from config import ConfigError, to_dict, validate  # noqa: E402
from experiments import cost  # noqa: E402
from experiments.grid import Run, Sweep, load_sweep, train_args  # noqa: E402
from experiments.results import FINISHED, INTERRUPTED, SWEEP_JSON, read_record  # noqa: E402
from trainer import records  # noqa: E402

TRAIN = ROOT / "train.py"
BUSY = "busy"  # what launch returns for a run that another process is running
NOT_STARTED = "not started"  # what launch returns for a run it did not start because the sweep is stopping
LOCK = ".lock"  # in each run directory, held by the process running that run
STDERR_TAIL = 2000  # characters of a failed run's stderr kept in its run.json
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
# Exit codes of a train.py stopped by a signal (it checkpointed, or was killed before it could): resumable.
SIGNALLED = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT, -signal.SIGUSR2)


def positive_int(text: str) -> int:
    """An argparse type: --workers 0 is an error at the command line, not a hang or a traceback later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class Children:
    """The training processes of this sweep, and the signal that stops it. On SIGTERM or SIGUSR2 every running
    child gets a SIGTERM (train.py checkpoints and exits 143); on SIGINT none does, as Ctrl-C reaches the
    children from the terminal itself. Once stopped, no further run starts."""

    def __init__(self):
        self.signal = None
        self._procs = set()
        self._lock = threading.RLock()  # the handler runs in the main thread, possibly inside itself

    def stop(self, signum, frame=None):
        if self.signal is not None:
            return
        self.signal = signum
        if signum != signal.SIGINT:
            with self._lock:
                for proc in self._procs:
                    proc.send_signal(signal.SIGTERM)  # torchrun passes SIGTERM on to its ranks; not SIGUSR2

    def run(self, cmd: list[str], **popen) -> int | None:
        """`cmd`'s exit code, or None, without starting it, once the sweep is stopping."""
        with self._lock:  # a child started here is in _procs before the next signal is handled
            if self.signal is not None:
                return None
            proc = subprocess.Popen(cmd, **popen)
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)


def command(sweep: Sweep, run: Run, gpus_per_run: int) -> list[str]:
    launcher = [sys.executable]
    if gpus_per_run > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}"]
    return [*launcher, str(TRAIN), str(sweep.base), *train_args(run.overrides, run.dir)]


def record_failure(run: Run, error: str) -> None:
    """Make run.json say failed, unless the run itself already said so (its message is the better one)."""
    if read_record(run.dir).get("status") != "failed":
        records.record_failure(run.config, error)


def launch(cmd: list[str], run: Run, env: dict, children: Children) -> str:
    """One training process, start to end; returns the status its run.json ends with, BUSY or NOT_STARTED.

    The run directory's lock is held throughout, so a second launch of the same run (a sweep started again
    while the first one's jobs still run or wait in the Slurm queue) leaves it alone instead of racing it."""
    run.dir.mkdir(parents=True, exist_ok=True)
    with open(run.dir / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        status = read_record(run.dir).get("status")
        if status in FINISHED:  # finished by another launch since this sweep looked
            return status
        if children.signal is not None:
            return NOT_STARTED
        (run.dir / "run.json").unlink(missing_ok=True)  # a record left by an earlier attempt
        with open(run.dir / "stdout.log", "ab") as stdout, open(run.dir / "stderr.log", "ab") as stderr:
            start = stderr.tell()
            code = children.run(cmd, stdout=stdout, stderr=stderr, env={**os.environ, **env})
        if code is None:
            return NOT_STARTED
        status = read_record(run.dir).get("status")
        if status in FINISHED or status == INTERRUPTED:
            return status
        if code in SIGNALLED:  # stopped before it could say so; it resumes from its last checkpoint
            return INTERRUPTED
        with open(run.dir / "stderr.log", "rb") as f:
            f.seek(start)
            tail = f.read().decode(errors="replace")[-STDERR_TAIL:]
        record_failure(run, f"train.py exited with code {code}\n{tail}")
        return "failed"


def busy(run: Run) -> bool:
    """Whether another process holds the run's lock, i.e. is running it now."""
    try:
        with open(run.dir / LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def visible_gpus() -> list[str]:
    """IDs of the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    n = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",")[:n] if listed else [str(i) for i in range(n)]


def worker_envs(workers: int, gpus_per_run: int) -> list[dict]:
    """Each local worker's environment: its own GPUs, and an equal share of the CPU threads."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    envs = [{"OMP_NUM_THREADS": str(max(1, threads // workers))} for _ in range(workers)]
    gpus = visible_gpus()
    if gpus:
        if workers * gpus_per_run > len(gpus):
            raise ConfigError(f"--workers {workers} x --gpus-per-run {gpus_per_run} needs more than the"
                              f" {len(gpus)} visible GPUs")
        for i, env in enumerate(envs):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * gpus_per_run : (i + 1) * gpus_per_run])
    return envs


def run_local(sweep: Sweep, runs: list[Run], workers: int, gpus_per_run: int, children: Children) -> dict:
    """A thread per worker, each launching one training process at a time in its own environment.
    Returns {run name: what launch returned}."""
    free = queue.SimpleQueue()
    for env in worker_envs(workers, gpus_per_run):
        free.put(env)

    def job(run: Run) -> str:
        env = free.get()
        try:
            return launch(command(sweep, run, gpus_per_run), run, env, children)
        finally:
            free.put(env)

    statuses = {}
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(runs), desc="sweep", unit="run") as bar:
        futures = {pool.submit(job, run): run for run in runs}
        for future in as_completed(futures):
            run, status = futures[future], future.result()
            statuses[run.name] = status
            if status == "failed":
                error = read_record(run.dir).get("error", "").strip().splitlines()
                bar.write(f"failed: {run.name}: {error[-1] if error else ''}")
            bar.set_postfix(Counter(statuses.values()))
            bar.update()
    return statuses


def run_submitit(sweep: Sweep, runs: list[Run], args, cluster: str, children: Children) -> dict:
    """One job per run, as a Slurm job array (or local processes, for testing). Each job is this script
    with --only NAME, so a job launches and records its run exactly as the local backend does. A stop
    signal ends the waiting, not the jobs. Returns {run name: status} of the runs whose jobs ended."""
    import submitit

    executor = submitit.AutoExecutor(folder=args.out / "submitit", cluster=cluster)
    executor.update_parameters(
        name=f"sweep-{sweep.file.stem}", timeout_min=args.time_min, nodes=1, tasks_per_node=1,
        gpus_per_node=args.gpus_per_run, cpus_per_task=args.cpus_per_run, slurm_partition=args.partition,
        slurm_account=args.account, slurm_array_parallelism=args.array_parallelism,
    )
    job = submitit.helpers.CommandFunction([sys.executable, str(Path(__file__).resolve()), str(sweep.file),
                                            "--out", str(args.out), "--gpus-per-run", str(args.gpus_per_run),
                                            "--only"])
    jobs = executor.map_array(job, [run.name for run in runs])
    print(f"submitted {len(jobs)} jobs ({cluster} {jobs[0].job_id.split('_')[0]}); logs in {args.out / 'submitit'}")
    waiting, statuses = dict(zip(jobs, runs)), {}
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:
        while waiting and children.signal is None:
            for done in [j for j in waiting if j.done()]:  # Slurm's watcher throttles its own queries
                run = waiting.pop(done)
                status = read_record(run.dir).get("status")
                if busy(run):  # the job found another launch of its run at work
                    status = BUSY
                elif done.exception() is not None and status not in (*FINISHED, INTERRUPTED):
                    record_failure(run, f"job {done.job_id} failed: {done.exception()}")  # died before it could record
                statuses[run.name] = status if status in (*FINISHED, INTERRUPTED, BUSY) else "failed"
                bar.update()
            time.sleep(1 if waiting else 0)
    if waiting:
        print(f"stopped waiting: {len(waiting)} jobs are still queued or running and will record their runs"
              f" (scancel {jobs[0].job_id.split('_')[0]} stops them)", file=sys.stderr)
    return statuses


def dry_run(sweep: Sweep, pending: list[Run], gpus_per_run: int) -> None:
    todo = {run.name for run in pending}
    total = remaining = 0.0
    for run in sweep.runs:
        flops, tokens = cost.train_flops(run.config), cost.run_tokens(run.config)
        total += flops
        remaining += flops if run.name in todo else 0.0
        print(f"{'run ' if run.name in todo else 'skip'}  {run.name}  {tokens / 1e6:.4g}M tokens"
              f"  {flops / tokens / 1e9:.3g} GFLOP/token  {cost.gpu_hours(flops):.3g} GPU-h")
    print(f"{len(sweep.runs)} runs ({len(pending)} to run): {cost.gpu_hours(total):.3g} {cost.GPU}-hours"
          f" ({cost.gpu_hours(remaining):.3g} to run), training FLOPs {total:.3g} ({remaining:.3g} to run) at"
          f" {cost.MFU:.0%} MFU of {cost.PEAK / 1e12:.0f} TFLOP/s (dense bf16); evaluation not counted")
    if pending:
        print("first command:", shlex.join(command(sweep, pending[0], gpus_per_run)))


def report_stop(statuses: dict, pending: list[Run], signum: int) -> int:
    """After a stop signal: which runs were interrupted, and how to continue; the exit code 128 + signal."""
    interrupted = [name for name, status in statuses.items() if status == INTERRUPTED]
    not_started = list(statuses.values()).count(NOT_STARTED)
    lines = [f"sweep stopped by {signal.Signals(signum).name}: {len(interrupted)} runs interrupted,"
             f" {not_started} not started"]
    lines += [f"  interrupted  {name}" for name in interrupted]
    if len(pending) > len(statuses):
        lines.append(f"{len(pending) - len(statuses)} submitted jobs not waited for")
    lines.append("Rerun the same command to resume the sweep: interrupted runs continue from their checkpoints,"
                 " finished ones are skipped.")
    print("\n".join(lines), file=sys.stderr)
    return 128 + signum


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="sweep YAML (see configs/sweeps/)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the sweep: one subdirectory per run")
    ap.add_argument("--workers", type=positive_int, help="local runs at a time (default: one per GPU group, else 1)")
    ap.add_argument("--gpus-per-run", type=positive_int, default=1, help="GPUs of each run (> 1: torchrun, DDP)")
    ap.add_argument("--backend", choices=("local", "slurm", "local-submitit"), default="local",
                    help="local: a pool of processes here; slurm: a submitit job array; local-submitit: the"
                         " slurm path with local processes (for testing)")
    ap.add_argument("--dry-run", action="store_true", help="validate, print the runs and their GPU-hours, run nothing")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the sweep")
    slurm = ap.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time-min", type=positive_int, default=240, help="time limit of each job, in minutes")
    slurm.add_argument("--cpus-per-run", type=positive_int, default=8)
    slurm.add_argument("--array-parallelism", type=positive_int, default=64, help="jobs of the array running at once")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    try:
        sweep = load_sweep(args.sweep, args.out)
        runs = sweep.runs
        if args.only:
            unknown = set(args.only) - {run.name for run in runs}
            if unknown:
                raise ConfigError(f"no run named {', '.join(sorted(unknown))} in {args.sweep}")
            runs = [run for run in runs if run.name in args.only]
        for run in runs:  # the batch must also divide across each run's GPUs
            try:
                validate(run.config, world_size=args.gpus_per_run)
            except ConfigError as e:
                raise ConfigError(f"run {run.name} on {args.gpus_per_run} GPUs: {e}") from None
        recorded = {run.name: read_record(run.dir) for run in runs}
        stale = [run.name for run in runs if recorded[run.name].get("status") in FINISHED
                 and recorded[run.name].get("config", to_dict(run.config)) != to_dict(run.config)]
        if stale:  # skipping them would mix results of two different configs in one table
            raise ConfigError(f"{len(stale)} finished runs in {args.out} were made with another config than"
                              f" {args.sweep} now gives (e.g. {stale[0]}); delete them or use another --out")
        pending = [run for run in runs if recorded[run.name].get("status") not in FINISHED]
        workers = args.workers or max(1, len(visible_gpus()) // args.gpus_per_run)
        if args.dry_run:
            dry_run(sweep, pending, args.gpus_per_run)
            return 0
        if pending and args.backend == "local":
            worker_envs(workers, args.gpus_per_run)  # refuse a worker count the GPUs cannot serve, up front
    except ConfigError as e:
        print(f"sweep error: {e}", file=sys.stderr)
        return 2
    if not args.only:
        args.out.mkdir(parents=True, exist_ok=True)
        index = {"sweep": str(sweep.file), "base": str(sweep.base), "runs": {r.name: r.overrides for r in runs}}
        write_json(args.out / SWEEP_JSON, index)
    print(f"{len(runs)} runs, {len(runs) - len(pending)} already finished, {len(pending)} to run ({args.out})")
    children = Children()
    previous = {s: signal.signal(s, children.stop) for s in STOP_SIGNALS}
    try:
        statuses = {}
        if pending and args.backend == "local":
            statuses = run_local(sweep, pending, workers, args.gpus_per_run, children)
        elif pending:
            statuses = run_submitit(sweep, pending, args, "slurm" if args.backend == "slurm" else "local", children)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    counts = Counter(statuses.values())
    print(f"done {counts['done']}, diverged {counts['diverged']}, failed {counts['failed']},"
          f" interrupted {counts[INTERRUPTED]}, running elsewhere {counts[BUSY]}, skipped {len(runs) - len(pending)}")
    if children.signal is not None:
        return report_stop(statuses, pending, children.signal)
    return 1 if counts["failed"] or counts[INTERRUPTED] else 0


if __name__ == "__main__":
    sys.exit(main())
