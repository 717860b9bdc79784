"""Run a grid of training runs: python scripts/sweep.py SWEEP.yaml --out DIR [--workers N]

A sweep file is a `base:` run config, a `grid:` of keys -> lists, optional `overrides:` and `seeds:`; its
format is described once, in experiments/grid.py.

Each run is `python train.py BASE key=value ... train.out_dir=DIR/NAME train.resume=auto` in a process of
its own, NAME spelling out the run's swept settings (`parameterization=mup,n_embd=256,log2_lr=-7,seed=1`).
Every run's config is validated before anything starts. A run whose run.json says done or diverged is
skipped, so running the same command again continues an interrupted sweep (unfinished runs resume from
their checkpoints), and one that another process is running (it holds DIR/NAME/.lock) is left alone; a
crash is recorded in the run's run.json (status failed, stderr tail) and the other runs go on.
SIGTERM (or SIGUSR2) stops the sweep: it is passed on to every running train.py, which checkpoints and
exits (run.json: interrupted), no further run starts, and the sweep exits 143 (128 + the signal); Ctrl-C
likewise (130). DIR/sweep.json lists every run's overrides, for plot.py. --dry-run prints the runs and the
GPU-hours they need without starting anything, and each run's estimated peak GPU memory per GPU at its
micro-batch on --gpus-per-run GPUs (experiments/cost.py; `-` for CPU runs), marking OVER 80 GB the runs that
would not fit an 80 GB GPU.

Local workers each get their own GPUs (CUDA_VISIBLE_DEVICES) and an equal share of the CPU threads (of
OMP_NUM_THREADS if set, else of this process's cores), divided again among a run's torchrun ranks.

--backend slurm submits one job per run (a submitit job array) with --gpus-per-run GPUs and --cpus-per-gpu
CPUs per GPU; each of a run's ranks gets OMP_NUM_THREADS = the job's CPUs / its GPUs. A job runs `sweep.py
SWEEP --only NAME`, which launches the run's train.py (or torchrun) with train.resume=auto under the run's
lock. Jobs are checkpointable: Slurm sends SIGUSR2 120 s (SIGNAL_DELAY_S) before the time limit, and at
preemption where the cluster is set up to; the run checkpoints and exits, the job requeues itself (on a time
limit up to 3 times, submitit's default) and the requeued job resumes the run where it stopped.
--backend local-submitit runs the same jobs as local processes, all at once, each with its own GPUs.
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
from config import ConfigError, flat_dict, flatten, validate, with_defaults  # noqa: E402
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
TORCHRUN = "torch.distributed.run"
# Slurm jobs: SIGUSR2 this many seconds before the time limit (sbatch --signal=USR2@120; at most half the
# limit). Of it, a job gives its run STOP_SHARE to reach a step boundary, checkpoint and exit, then requeues.
SIGNAL_DELAY_S = 120
LOCAL_SIGNAL_DELAY_S = 30  # submitit's local executor's (AutoExecutor cannot set it)
STOP_SHARE = 0.75
TORCHRUN_SHUTDOWN_S = 90  # torchrun's wait for its ranks to checkpoint after a stop signal, then SIGKILL
CPUS_PER_GPU = 8  # default --cpus-per-gpu of a Slurm job
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


def ignore_sigusr2() -> None:
    """In a torchrun child, before exec: torchrun neither handles nor passes on SIGUSR2, so the SIGUSR2 that
    Slurm sends to every process of a job would kill it mid-checkpoint; ignored, it is left to the ranks
    (train.py handles it itself) and to the SIGTERM a sweep passes on, which torchrun forwards."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


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
            if TORCHRUN in cmd:
                popen.setdefault("preexec_fn", ignore_sigusr2)
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
        launcher += ["-m", TORCHRUN, "--standalone", f"--nproc_per_node={gpus_per_run}",
                     f"--shutdown-timeout={TORCHRUN_SHUTDOWN_S}"]
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


def cpu_threads() -> int:
    """The CPU threads this machine's runs share: OMP_NUM_THREADS if set, else the cores this process may use."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def gpu_slices(n: int, gpus_per_run: int, what: str, advice: str = "") -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of `n` runs going at once, each its own `gpus_per_run` of the visible GPUs (None
    each where none is visible: CPU runs)."""
    gpus = visible_gpus()
    if not gpus:
        return [None] * n
    if n * gpus_per_run > len(gpus):
        raise ConfigError(f"{what} x --gpus-per-run {gpus_per_run} needs more than the {len(gpus)} visible GPUs"
                          + advice)
    return [",".join(gpus[i * gpus_per_run : (i + 1) * gpus_per_run]) for i in range(n)]


def worker_envs(workers: int, gpus_per_run: int) -> list[dict]:
    """Each local worker's environment: its own GPUs, and an equal share of the CPU threads for each of its
    run's processes (torchrun ranks)."""
    per_rank = str(max(1, cpu_threads() // (workers * gpus_per_run)))
    envs = [{"OMP_NUM_THREADS": per_rank} for _ in range(workers)]
    for env, gpus in zip(envs, gpu_slices(workers, gpus_per_run, f"--workers {workers}")):
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
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


class RunJob:
    """What a submitit job runs: `cmd` (this script with --only NAME, which launches the run's train.py or
    torchrun with train.resume=auto under the run's lock) with `env` added to the job's environment.

    Checkpointable, as submitit wants it: on SIGUSR2 (Slurm sends it signal_delay_s before the time limit,
    and at preemption where the cluster is set up so) submitit calls checkpoint(), which sends SIGTERM to
    `cmd` (it passes it on to train.py, or to torchrun, which passes it on to its ranks: train.py
    checkpoints at the next step boundary and exits), waits up to `stop_wait_s` for it to end and returns
    this job again, which submitit requeues; the requeued job continues the run from its checkpoint. Only the standard library is used here, so that the
    class pickles by value and a job unpickles it wherever it runs, whatever its sys.path."""

    def __init__(self, name: str, cmd: list[str], env: dict, stop_wait_s: float):
        self.name, self.cmd, self.env, self.stop_wait_s = name, list(cmd), dict(env), stop_wait_s
        self._proc, self._stopped = None, False

    def __getstate__(self):  # the running process stays behind: a requeued job starts its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_stopped")}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None, _stopped=False)

    def __repr__(self):
        return f"RunJob({self.name})"

    def __call__(self) -> int:
        self._proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env})
        code = self._proc.wait()  # under submitit, checkpoint() runs in here and the job exits from it
        if code != 0 and not self._stopped:
            stopped = " (stopped by a signal: its run resumes when the sweep is run again)" if code > 128 else ""
            raise RuntimeError(f"{shlex.join(self.cmd)} exited with code {code}{stopped}")
        return code

    def stop(self) -> bool:
        """SIGTERM the running command and wait until it has ended (without reaping it: the wait in
        __call__, which this may interrupt, does that). False if it is still running after stop_wait_s."""
        proc, self._stopped = self._proc, True
        if proc is None:
            return True
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_wait_s
        while True:
            try:
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:  # reaped already
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def checkpoint(self):
        """Called by submitit's SIGUSR2 handler: stop the run at a checkpoint, then requeue this job."""
        from submitit.helpers import DelayedSubmission

        if not self.stop():
            print(f"{self.name}: still running {self.stop_wait_s:.0f} s after SIGTERM; requeued anyway (it"
                  f" resumes from its last checkpoint)", file=sys.stderr, flush=True)
        return DelayedSubmission(self)


def signal_delay_s(time_min: int, cluster: str = "slurm") -> int:
    """Seconds before a job's time limit that it gets SIGUSR2: SIGNAL_DELAY_S, at most half the limit."""
    return min(SIGNAL_DELAY_S if cluster == "slurm" else LOCAL_SIGNAL_DELAY_S, time_min * 30)


def submitit_jobs(sweep: Sweep, runs: list[Run], args, cluster: str) -> tuple[dict, list[RunJob]]:
    """The executor's parameters and one checkpointable job per run.

    Slurm: each job has --gpus-per-run GPUs and --cpus-per-gpu CPUs per GPU (or --cpus-per-run in all); its
    run gets them all as OMP_NUM_THREADS, which the job's sweep.py divides among the torchrun ranks (srun is
    told the CPUs again: that of Slurm 22.05-23.02 does not pass them on to the job step). Local (submitit's
    local executor starts every job at once): each job gets its own GPUs (a ConfigError if there are too
    few) and an equal share of the CPU threads."""
    gpus, local = args.gpus_per_run, cluster == "local"
    if local:
        cpus = max(1, cpu_threads() // len(runs))
        slices = gpu_slices(len(runs), gpus, f"--backend local-submitit starts every job at once: {len(runs)} runs",
                            "; use --backend local (a pool of --workers), or fewer runs with --only")
    else:
        cpus = args.cpus_per_run or args.cpus_per_gpu * gpus
        slices = [None] * len(runs)  # Slurm gives each job its own GPUs
    delay = signal_delay_s(args.time_min, cluster)
    params = dict(name=f"sweep-{sweep.file.stem}", timeout_min=args.time_min, nodes=1, tasks_per_node=1,
                  gpus_per_node=0 if local else gpus, cpus_per_task=cpus, slurm_partition=args.partition,
                  slurm_account=args.account, slurm_array_parallelism=args.array_parallelism,
                  slurm_signal_delay_s=delay, slurm_srun_args=[f"--cpus-per-task={cpus}"])
    base = [sys.executable, str(Path(__file__).resolve()), str(sweep.file.resolve()), "--out", str(args.out),
            "--gpus-per-run", str(gpus), "--workers", "1", "--only"]
    jobs = []
    for run, cuda in zip(runs, slices):
        env = {"OMP_NUM_THREADS": str(cpus)}
        if cuda is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda
        jobs.append(RunJob(run.name, [*base, run.name], env, stop_wait_s=delay * STOP_SHARE))
    return params, jobs


def run_submitit(sweep: Sweep, runs: list[Run], args, cluster: str, children: Children) -> dict:
    """One checkpointable job per run (RunJob), as a Slurm job array (or local processes, for testing): a
    job launches and records its run exactly as the local backend does. A stop signal ends the waiting,
    not the jobs. Returns {run name: status} of the runs whose jobs ended."""
    import cloudpickle
    import submitit

    if RunJob.__module__ != "__main__":  # imported (tests): a job cannot import this script's module
        cloudpickle.register_pickle_by_value(sys.modules[RunJob.__module__])
    params, run_jobs = submitit_jobs(sweep, runs, args, cluster)
    executor = submitit.AutoExecutor(folder=args.out / "submitit", cluster=cluster)
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(job) for job in run_jobs]
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


OVER = "OVER 80 GB"  # --dry-run's mark on a run whose estimated peak GPU memory exceeds cost.CARD_GIB


def memory_column(run: Run, gpus_per_run: int) -> tuple[str, float | None]:
    """A run's estimated peak GPU memory per GPU at its micro-batch, on `gpus_per_run` ranks (weights, the
    rank's optimizer state, and the largest of forward and backward, the optimizer step and Sophia's pass:
    experiments.cost.peak_memory_gib), as --dry-run prints it, and the GiB; `-` and None for a CPU run
    (train.device cpu), which needs no GPU."""
    if run.config.train.device == "cpu":
        return "- GiB/GPU", None
    gib = cost.peak_memory_gib(run.config, gpus_per_run)["total"]
    return f"{gib:.3g} GiB/GPU", gib


def dry_run(sweep: Sweep, pending: list[Run], gpus_per_run: int) -> None:
    """Each run (`run` or `skip` if finished) with its tokens, FLOPs per token, estimated peak GPU memory per GPU
    and GPU-hours; runs whose memory estimate exceeds cost.CARD_GIB end with OVER 80 GB; then the totals."""
    todo = {run.name for run in pending}
    total = remaining = 0.0
    peaks = {}
    for run in sweep.runs:
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


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="sweep YAML (see configs/sweeps/)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the sweep: one subdirectory per run")
    ap.add_argument("--workers", type=positive_int, help="local runs at a time (default: one per GPU group, else 1)")
    ap.add_argument("--gpus-per-run", type=positive_int, default=1, help="GPUs of each run (> 1: torchrun, DDP)")
    ap.add_argument("--backend", choices=("local", "slurm", "local-submitit"), default="local",
                    help="local: a pool of processes here; slurm: a submitit job array; local-submitit: the"
                         " slurm path with local processes (for testing)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate, print the runs, their GPU-hours and estimated peak GPU memory, run nothing")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the sweep")
    slurm = ap.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time-min", type=positive_int, default=240, help="time limit of each job, in minutes")
    slurm.add_argument("--cpus-per-gpu", type=positive_int, default=CPUS_PER_GPU,
                       help="CPUs of a job per GPU: cpus_per_task = this x --gpus-per-run (default %(default)s)")
    slurm.add_argument("--cpus-per-run", type=positive_int, help="CPUs of a job in all (instead of --cpus-per-gpu)")
    slurm.add_argument("--array-parallelism", type=positive_int, default=64, help="jobs of the array running at once")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    return args


def describe_jobs(params: dict, jobs: list[RunJob], gpus_per_run: int, cluster: str) -> str:
    """One line on what each submitit job gets, for --dry-run."""
    threads = max(1, int(jobs[0].env["OMP_NUM_THREADS"]) // gpus_per_run)
    if cluster == "slurm":
        gpus = f"{gpus_per_run} GPU" + "s" * (gpus_per_run > 1)
    else:
        slices = [job.env.get("CUDA_VISIBLE_DEVICES") for job in jobs]
        gpus = f"GPUs {' | '.join(slices)}" if slices[0] is not None else "no GPU"
    return (f"{cluster} jobs: {len(jobs)} x ({gpus}, {params['cpus_per_task']} CPUs, OMP_NUM_THREADS={threads} per"
            f" rank), {params['timeout_min']} min each; SIGUSR2 {signal_delay_s(params['timeout_min'], cluster)} s"
            f" before the limit checkpoints the run and requeues the job")


def main(argv=None) -> int:
    args = parse_args(argv)
    cluster = {"slurm": "slurm", "local-submitit": "local"}.get(args.backend)
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
                 and "config" in recorded[run.name]
                 and with_defaults(flatten(recorded[run.name]["config"])) != flat_dict(run.config)]
        if stale:  # skipping them would mix results of two different configs in one table
            raise ConfigError(f"{len(stale)} finished runs in {args.out} were made with another config than"
                              f" {args.sweep} now gives (e.g. {stale[0]}); delete them or use another --out")
        pending = [run for run in runs if recorded[run.name].get("status") not in FINISHED]
        workers = args.workers or max(1, len(visible_gpus()) // args.gpus_per_run)
        if pending and cluster:  # refuse what the GPUs cannot serve, up front
            params, jobs = submitit_jobs(sweep, pending, args, cluster)
        elif pending:
            worker_envs(workers, args.gpus_per_run)
        if args.dry_run:
            dry_run(sweep, pending, args.gpus_per_run)
            if pending and cluster:
                print(describe_jobs(params, jobs, args.gpus_per_run, cluster))
            return 0
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
            statuses = run_submitit(sweep, pending, args, cluster, children)
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
