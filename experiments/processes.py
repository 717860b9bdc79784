"""One run of a sweep, launched: the run directory's lock, the stop signal passed on to the training processes,
what a run's end means for its run.json, and the GPUs and CPU threads each process gets.

A run is launched holding DIR/NAME/.lock, so a second launch of the same run (a sweep started again while the
first one's jobs still run or wait in the Slurm queue) leaves it alone instead of racing it. How the run is
executed is the executor's business, a class with one call: Workers (the default for runs of one GPU or the
CPU) hands it to a long-lived worker process that trains one run after another; Subprocess runs `python
train.py BASE key=value ...` (torchrun for several GPUs) in a process of its own.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading

import torch

from config import ROOT, ConfigError
from experiments.grid import Run, Sweep, train_args
from trainer import worker
from trainer.run_record import FAILED, FINISHED, INTERRUPTED, read_record, record_failure, remove_record

TRAIN = ROOT / "train.py"
BUSY = "busy"  # what launch returns for a run that another process is running
NOT_STARTED = "not started"  # what launch returns for a run it did not start because the sweep is stopping
LOCK = ".lock"  # in each run directory, held by the process running that run
STDERR_TAIL = 2000  # characters of a failed run's stderr kept in its run.json
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
TORCHRUN = "torch.distributed.run"
TORCHRUN_SHUTDOWN_S = 90  # torchrun's wait for its ranks to checkpoint after a stop signal, then SIGKILL
# Exit codes of a train.py stopped by a signal (it checkpointed, or was killed before it could): resumable.
SIGNALLED = (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT, -signal.SIGUSR2)


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

    @contextlib.contextmanager
    def running(self, start):
        """The process `start()` returns (it starts a process, or hands a run to a worker), receiving the stop
        signal while in this context; None, without calling `start`, once the sweep is stopping."""
        with self._lock:  # a child started here is in _procs before the next signal is handled
            if self.signal is not None:
                yield None
                return
            proc = start()
            self._procs.add(proc)
        try:
            yield proc
        finally:
            with self._lock:
                self._procs.discard(proc)

    def run(self, cmd: list[str], **popen) -> int | None:
        """`cmd`'s exit code, or None, without starting it, once the sweep is stopping."""
        if TORCHRUN in cmd:
            popen.setdefault("preexec_fn", ignore_sigusr2)
        with self.running(lambda: subprocess.Popen(cmd, **popen)) as proc:
            return None if proc is None else proc.wait()


class Subprocess:
    """Executes a run as train.py in a process of its own (torchrun over `gpus_per_run` > 1 GPUs), with
    train.resume=auto, its output appended to the run directory's stdout.log and stderr.log."""

    def __init__(self, sweep: Sweep, gpus_per_run: int):
        self.sweep, self.gpus_per_run = sweep, gpus_per_run

    def command(self, run: Run) -> list[str]:
        launcher = [sys.executable]
        if self.gpus_per_run > 1:
            launcher += ["-m", TORCHRUN, "--standalone", f"--nproc_per_node={self.gpus_per_run}",
                         f"--shutdown-timeout={TORCHRUN_SHUTDOWN_S}"]
        return [*launcher, str(TRAIN), str(self.sweep.base), *train_args(run.overrides, run.dir)]

    def __call__(self, run: Run, env: dict, children: Children) -> tuple[int | None, str]:
        """(exit code, or None if the sweep stopped before it started; the tail of what it wrote to stderr)."""
        with open(run.dir / "stdout.log", "ab") as stdout, open(run.dir / "stderr.log", "ab") as stderr:
            start = stderr.tell()
            code = children.run(self.command(run), stdout=stdout, stderr=stderr, env={**os.environ, **env})
        with open(run.dir / "stderr.log", "rb") as f:
            f.seek(start)
            return code, f.read().decode(errors="replace")[-STDERR_TAIL:]


class Workers:
    """Executes runs in long-lived worker processes (`python train.py --worker`, trainer/worker.py), one per
    worker environment, started with it (CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS are read when torch is
    imported) and each training its runs one after another: a run pays for no interpreter and no imports, and
    trains bit for bit as `python train.py` would (tests/test_worker.py). Its output goes to the run directory's
    stdout.log and stderr.log, as with Subprocess. A worker that dies (a segfault, the OOM killer) takes its run
    down with it, as that run's own process would: the run is recorded failed, and the next run of that
    environment starts a new worker. Use as a context: leaving it ends the workers."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        # id of a slot's environment dict (run_local hands each slot its own) -> its worker's Popen, one run at a
        # time: by identity, since on CPU every slot's environment is equal and each still needs its own worker
        self._workers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self._workers.values():  # end of input: each worker returns once its run is over
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self._workers.values():
            proc.wait()
        return False

    def process(self, env: dict) -> subprocess.Popen:
        """`env`'s worker, started (again) if it has none or it has ended."""
        key = id(env)
        proc = self._workers.get(key)
        if proc is None or proc.poll() is not None:
            proc = self._workers[key] = subprocess.Popen(
                [sys.executable, str(TRAIN), "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env={**os.environ, **env})
        return proc

    def __call__(self, run: Run, env: dict, children: Children) -> tuple[int | None, str]:
        """(what `python train.py` would have exited with, or the dead worker's exit code; None if the sweep
        stopped before it started; the tail of what the run wrote to stderr)."""
        line = worker.request([str(self.sweep.base), *train_args(run.overrides, run.dir)], run.dir)

        def send():
            proc = self.process(env)
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except BrokenPipeError:  # it ended since we looked; its answer below is the end of its output
                pass
            return proc

        with open(run.dir / "stderr.log", "ab") as stderr:
            start = stderr.tell()
        with children.running(send) as proc:
            if proc is None:
                return None, ""
            answer = proc.stdout.readline()
        note = ""
        if answer:
            reply = json.loads(answer)
            code = reply["code"]
            if reply["retire"]:
                proc.wait()
        else:
            code = proc.wait()
            note = f"\nthe worker process running it (pid {proc.pid}) died with exit code {code}"
        with open(run.dir / "stderr.log", "rb") as f:
            f.seek(start)
            return code, (f.read().decode(errors="replace") + note)[-STDERR_TAIL:]


def record_run_failure(run: Run, error: str) -> None:
    """Make run.json say failed, unless the run itself already said so (its message is the better one)."""
    if read_record(run.dir).get("status") != FAILED:
        record_failure(run.config, error)


def launch(run: Run, env: dict, children: Children, execute) -> str:
    """One run, start to end, under its directory's lock, executed by `execute` (a Subprocess) with `env` added
    to its environment; returns the status its run.json ends with, BUSY or NOT_STARTED."""
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
        remove_record(run.dir)  # a record left by an earlier attempt
        code, stderr_tail = execute(run, env, children)
        if code is None:
            return NOT_STARTED
        status = read_record(run.dir).get("status")
        if status in FINISHED or status == INTERRUPTED:
            return status
        if code in SIGNALLED:  # stopped before it could say so; it resumes from its last checkpoint
            return INTERRUPTED
        record_run_failure(run, f"train.py exited with code {code}\n{stderr_tail}")
        return FAILED


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
