"""Run a grid of training runs: python scripts/sweep.py SWEEP.yaml --out DIR [--workers N]

A sweep file names a base run config and what to vary:

    base: ../owt_base.yaml               # a run config, relative to this file
    grid:                                # config keys -> lists; the cartesian product, in file order
      scaling.parameterization: [sp, mup]
      model.n_embd: [128, 256, 512]
      log2_lr: [-10, -9, -8, -7]         # shorthand for optim.lr: [2**-10, ...] (log2_wd: optim.weight_decay)
    overrides:                           # optional: set in every run
      model.n_layer: 4
    seeds: [1, 2]                        # optional: train.seed, the last (fastest) axis

`grid:` may also be a list of such mappings, whose products are concatenated, so that axes that depend on
each other (Fig. 2's per-parameterization LR ranges) stay in one sweep, one directory and one plot.

Each run is `python train.py BASE key=value ... train.out_dir=DIR/NAME train.resume=auto` in a process of
its own, NAME spelling out the run's swept settings (`parameterization=mup,n_embd=256,log2_lr=-7,seed=1`).
Every run's config is validated before anything starts. A run whose run.json says done or diverged is
skipped, so running the same command again continues an interrupted sweep (unfinished runs resume from
their checkpoints), and one that another process is running (it holds DIR/NAME/.lock) is left alone; a
crash is recorded in the run's run.json (status failed, stderr tail) and the other runs go on.
DIR/sweep.json lists every run's overrides, for plot.py. --dry-run prints the runs and the GPU-hours they
need without starting anything.
"""

import argparse
import dataclasses
import fcntl
import functools
import itertools
import json
import os
import queue
import re
import shlex
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import perf  # noqa: E402
from atomic import write_json  # noqa: E402
from config import (  # noqa: E402
    Config, ConfigError, ModelConfig, from_flat, parse_overrides, read_yaml, to_dict, validate,
)
import train  # noqa: E402
from model import GPT  # noqa: E402

TRAIN = ROOT / "train.py"
SWEEP_JSON = "sweep.json"
SWEEP_KEYS = ("base", "grid", "overrides", "seeds")
LOG2 = {"log2_lr": "optim.lr", "log2_wd": "optim.weight_decay"}  # grid shorthands: x stands for key = 2**x
FINISHED = ("done", "diverged")  # outcomes a rerun keeps; anything else is launched (again)
BUSY = "busy"  # what launch returns for a run that another process is running
LOCK = ".lock"  # in each run directory, held by the process running that run
RESERVED = ("train.out_dir", "train.resume")  # the sweep sets these for every run
STDERR_TAIL = 2000  # characters of a failed run's stderr kept in its run.json
# GPU-hour estimates: training FLOPs over an H100's dense bf16 peak at an assumed model FLOPs utilization.
GPU, MFU = "H100", 0.4


@dataclasses.dataclass
class Run:
    name: str
    dir: Path
    overrides: dict  # config key -> value, as given to train.py (besides out_dir and resume)
    config: Config  # what train.py will resolve; validated


@dataclasses.dataclass
class Sweep:
    file: Path
    base: Path
    runs: list[Run]


def yaml_scalar(value) -> str:
    """`value` written so that parse_overrides reads it back unchanged (PyYAML reads 1e-05 as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("...\n").strip()


def train_args(overrides: dict, run_dir: Path) -> list[str]:
    """The key=value arguments of one run; its config is exactly what train.py makes of them."""
    args = {**overrides, "train.out_dir": str(run_dir), "train.resume": "auto"}
    return [f"{key}={yaml_scalar(value)}" for key, value in args.items()]


def grid_points(grid) -> list[dict]:
    """Every point of the grid (a mapping of lists, or a list of them), in file order, last axis fastest."""
    points = []
    for sub in grid if isinstance(grid, list) else [grid]:
        if not isinstance(sub, dict) or not sub:
            raise ConfigError(f"grid: expected a mapping of config keys to lists, got {sub!r}")
        for key, values in sub.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid: {key}: expected a non-empty list, got {values!r}")
        points += [dict(zip(sub, combo)) for combo in itertools.product(*sub.values())]
    return points


def run_name(point: dict) -> str:
    """`parameterization=mup,n_embd=256,log2_lr=-7`: each setting as written, keys shortened when unambiguous."""
    short = [key.rsplit(".", 1)[-1] for key in point]
    parts = [f"{s if short.count(s) == 1 else key}={value}" for s, (key, value) in zip(short, point.items())]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))  # safe in file names and shells


def expand(key: str, value) -> tuple[str, object]:
    """A grid setting as a config key and value: log2_lr: -7 is optim.lr: 2**-7."""
    if key not in LOG2:
        return key, value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"grid: {key}: expected numbers, got {value!r}")
    return LOG2[key], 2.0**value


def load_sweep(path: Path, out: Path) -> Sweep:
    """The expanded grid, every run validated; a ConfigError names the first bad run and key."""
    spec = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: not a sweep file (expected a mapping with base: and grid:)")
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown or "base" not in spec or "grid" not in spec:
        raise ConfigError(f"{path}: a sweep has base:, grid: and optionally overrides:, seeds:"
                          + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    base = (path.parent / spec["base"]).resolve()
    values = read_yaml(base)
    fixed = spec.get("overrides") or {}
    points = grid_points(spec["grid"])
    if "seeds" in spec:
        seeds = spec["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"seeds: expected a non-empty list, got {seeds!r}")
        points = [{**point, "train.seed": seed} for point in points for seed in seeds]
    runs, names = [], set()
    for point in points:
        name = run_name(point)
        if name in names:
            raise ConfigError(f"grid: two runs are both named {name}")
        names.add(name)
        swept = dict(expand(key, value) for key, value in point.items())
        if len(swept) < len(point) or swept.keys() & fixed.keys() or (swept.keys() | fixed.keys()) & set(RESERVED):
            raise ConfigError(f"run {name}: a key is set twice (grid, overrides, seeds), or is one the sweep sets"
                              f" ({', '.join(RESERVED)})")
        overrides = {**fixed, **swept}
        try:
            cfg = from_flat({**values, **parse_overrides(train_args(overrides, out / name))})
        except ConfigError as e:
            raise ConfigError(f"run {name}: {e}") from None
        runs.append(Run(name, out / name, overrides, cfg))
    return Sweep(path.resolve(), base, runs)


def command(sweep: Sweep, run: Run, gpus_per_run: int) -> list[str]:
    launcher = [sys.executable]
    if gpus_per_run > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}"]
    return [*launcher, str(TRAIN), str(sweep.base), *train_args(run.overrides, run.dir)]


def read_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def record_failure(run: Run, error: str) -> None:
    """Make run.json say failed, unless the run itself already said so (its message is the better one)."""
    if read_record(run.dir).get("status") != "failed":
        train.record_failure(run.config, error)


def launch(cmd: list[str], run: Run, env: dict) -> str:
    """One training process, start to end; returns the status its run.json ends with, or BUSY.

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
        (run.dir / "run.json").unlink(missing_ok=True)  # a record left by an earlier attempt
        with open(run.dir / "stdout.log", "ab") as stdout, open(run.dir / "stderr.log", "ab") as stderr:
            start = stderr.tell()
            code = subprocess.run(cmd, stdout=stdout, stderr=stderr, env={**os.environ, **env}).returncode
        status = read_record(run.dir).get("status")
        if status in FINISHED:
            return status
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


def run_local(sweep: Sweep, runs: list[Run], workers: int, gpus_per_run: int) -> None:
    """A thread per worker, each launching one training process at a time in its own environment."""
    free = queue.SimpleQueue()
    for env in worker_envs(workers, gpus_per_run):
        free.put(env)

    def job(run: Run) -> str:
        env = free.get()
        try:
            return launch(command(sweep, run, gpus_per_run), run, env)
        finally:
            free.put(env)

    counts = Counter()
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(runs), desc="sweep", unit="run") as bar:
        futures = {pool.submit(job, run): run for run in runs}
        try:
            for future in as_completed(futures):
                status = future.result()
                counts[status] += 1
                if status == "failed":
                    error = read_record(futures[future].dir).get("error", "").strip().splitlines()
                    bar.write(f"failed: {futures[future].name}: {error[-1] if error else ''}")
                bar.set_postfix(counts)
                bar.update()
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise


def run_submitit(sweep: Sweep, runs: list[Run], args, cluster: str) -> None:
    """One job per run, as a Slurm job array (or local processes, for testing). Each job is this script
    with --only NAME, so a job launches and records its run exactly as the local backend does."""
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
    by_job = dict(zip(jobs, runs))
    finished = submitit.helpers.as_completed(jobs, poll_frequency=1)  # Slurm's watcher throttles its own queries
    for done in tqdm(finished, total=len(jobs), desc="sweep", unit="run"):
        error = done.exception()
        if error is not None and read_record(by_job[done].dir).get("status") not in FINISHED:
            record_failure(by_job[done], f"job {done.job_id} failed: {error}")  # died before it could record


@functools.cache
def flops_per_token(model: tuple) -> float:
    """Forward + backward FLOPs per token of a ModelConfig (as a tuple, to cache it), counted by torch:
    6 N for the matmuls (N with the LM head) plus 12 L n T for attention."""
    with torch.device("meta"):
        return perf.train_flops_per_token(GPT(ModelConfig(*model)))


def run_tokens(cfg: Config) -> int:
    return cfg.train.max_iters * cfg.train.batch_size * cfg.model.block_size


def train_flops(cfg: Config) -> float:
    return run_tokens(cfg) * flops_per_token(dataclasses.astuple(cfg.model))


def gpu_hours(flops: float) -> float:
    return flops / (perf.PEAK_BF16[GPU] * MFU) / 3600


def dry_run(sweep: Sweep, pending: list[Run], gpus_per_run: int) -> None:
    todo = {run.name for run in pending}
    total = remaining = 0.0
    for run in sweep.runs:
        flops = train_flops(run.config)
        total += flops
        remaining += flops if run.name in todo else 0.0
        print(f"{'run ' if run.name in todo else 'skip'}  {run.name}  {run_tokens(run.config) / 1e6:.4g}M tokens"
              f"  {flops / run_tokens(run.config) / 1e9:.3g} GFLOP/token  {gpu_hours(flops):.3g} GPU-h")
    print(f"{len(sweep.runs)} runs ({len(pending)} to run); training FLOPs {total:.3g} ({remaining:.3g} to run)"
          f" = {gpu_hours(total):.3g} {GPU}-hours ({gpu_hours(remaining):.3g} to run) at {MFU:.0%} MFU of"
          f" {perf.PEAK_BF16[GPU] / 1e12:.0f} TFLOP/s (dense bf16); evaluation not counted")
    if pending:
        print("first command:", shlex.join(command(sweep, pending[0], gpus_per_run)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="sweep YAML (see configs/sweeps/)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the sweep: one subdirectory per run")
    ap.add_argument("--workers", type=int, help="local runs at a time (default: one per GPU group, else 1)")
    ap.add_argument("--gpus-per-run", type=int, default=1, help="GPUs of each run (> 1: torchrun, DDP)")
    ap.add_argument("--backend", choices=("local", "slurm", "local-submitit"), default="local",
                    help="local: a pool of processes here; slurm: a submitit job array; local-submitit: the"
                         " slurm path with local processes (for testing)")
    ap.add_argument("--dry-run", action="store_true", help="validate, print the runs and their GPU-hours, run nothing")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the sweep")
    slurm = ap.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time-min", type=int, default=240, help="time limit of each job, in minutes")
    slurm.add_argument("--cpus-per-run", type=int, default=8)
    slurm.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once")
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
        records = {run.name: read_record(run.dir) for run in runs}
        stale = [run.name for run in runs if records[run.name].get("status") in FINISHED
                 and records[run.name].get("config", to_dict(run.config)) != to_dict(run.config)]
        if stale:  # skipping them would mix results of two different configs in one table
            raise ConfigError(f"{len(stale)} finished runs in {args.out} were made with another config than"
                              f" {args.sweep} now gives (e.g. {stale[0]}); delete them or use another --out")
        pending = [run for run in runs if records[run.name].get("status") not in FINISHED]
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
    try:
        if pending and args.backend == "local":
            run_local(sweep, pending, workers, args.gpus_per_run)
        elif pending:
            run_submitit(sweep, pending, args, "slurm" if args.backend == "slurm" else "local")
    except KeyboardInterrupt:
        print("interrupted; the same command continues the sweep (for slurm: once the submitted jobs have ended)",
              file=sys.stderr)
        return 130
    statuses = [BUSY if busy(run) else read_record(run.dir).get("status") for run in pending]
    failed = len(pending) - sum(statuses.count(s) for s in (*FINISHED, BUSY))
    print(f"done {statuses.count('done')}, diverged {statuses.count('diverged')}, failed {failed},"
          f" running elsewhere {statuses.count(BUSY)}, skipped {len(runs) - len(pending)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
