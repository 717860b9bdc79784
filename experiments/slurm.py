"""The submitit backend of a sweep: one checkpointable job per run, as a Slurm job array (or submitit's local
processes, the same path without a cluster).

Each job has --gpus-per-run GPUs and --cpus-per-gpu CPUs per GPU (or --cpus-per-run in all); its run gets them
all as OMP_NUM_THREADS, which the job's sweep.py divides among the torchrun ranks. A job runs `scripts/sweep.py
SWEEP --isolate --only NAME`, which launches the run's train.py (or torchrun) with train.resume=auto under the
run's lock, exactly as the local backend does with --isolate (one run: a worker process would save nothing). Jobs are checkpointable: Slurm sends SIGUSR2 120 s (SIGNAL_DELAY_S) before
the time limit, and at preemption where the cluster is set up to; the run checkpoints and exits, the job
requeues itself (on a time limit up to 3 times, submitit's default) and the requeued job resumes the run where
it stopped. submitit is imported only to submit: the local backend and --dry-run run without it.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from config import ROOT
from experiments import processes
from experiments.grid import Run, Sweep
from trainer.run_record import FAILED, FINISHED, INTERRUPTED, read_record

SWEEP_PY = ROOT / "scripts" / "sweep.py"  # what a job runs, for one run (--only NAME)
# Slurm jobs: SIGUSR2 this many seconds before the time limit (sbatch --signal=USR2@120; at most half the
# limit). Of it, a job gives its run STOP_SHARE to reach a step boundary, checkpoint and exit, then requeues.
SIGNAL_DELAY_S = 120
LOCAL_SIGNAL_DELAY_S = 30  # submitit's local executor's (AutoExecutor cannot set it)
STOP_SHARE = 0.75
CPUS_PER_GPU = 8  # default --cpus-per-gpu of a Slurm job
CLUSTERS = {"slurm": "slurm", "local-submitit": "local"}  # --backend -> submitit's cluster


class RunJob:
    """What a submitit job runs: `cmd` (scripts/sweep.py with --only NAME, which launches the run's train.py or
    torchrun with train.resume=auto under the run's lock) with `env` added to the job's environment.

    Checkpointable, as submitit wants it: on SIGUSR2 (Slurm sends it signal_delay_s before the time limit,
    and at preemption where the cluster is set up so) submitit calls checkpoint(), which sends SIGTERM to
    `cmd` (it passes it on to train.py, or to torchrun, which passes it on to its ranks: train.py
    checkpoints at the next step boundary and exits), waits up to `stop_wait_s` for it to end and returns
    this job again, which submitit requeues; the requeued job continues the run from its checkpoint. Only the
    standard library is used here, so that the class pickles by value and a job unpickles it wherever it
    runs, whatever its sys.path."""

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


def submitit_jobs(sweep: Sweep, runs: list[Run], options, cluster: str) -> tuple[dict, list[RunJob]]:
    """The executor's parameters and one checkpointable job per run (`options`: launch.Options).

    Slurm: srun is told the CPUs again (that of Slurm 22.05-23.02 does not pass them on to the job step).
    Local (submitit's local executor starts every job at once): each job gets its own GPUs (a ConfigError if
    there are too few) and an equal share of the CPU threads."""
    gpus, local = options.gpus_per_run, cluster == "local"
    if local:
        cpus = max(1, processes.cpu_threads() // len(runs))
        slices = processes.gpu_slices(
            len(runs), gpus, f"--backend local-submitit starts every job at once: {len(runs)} runs",
            "; use --backend local (a pool of --workers), or fewer runs with --only")
    else:
        cpus = options.cpus_per_run or options.cpus_per_gpu * gpus
        slices = [None] * len(runs)  # Slurm gives each job its own GPUs
    delay = signal_delay_s(options.time_min, cluster)
    params = dict(name=f"sweep-{sweep.file.stem}", timeout_min=options.time_min, nodes=1, tasks_per_node=1,
                  gpus_per_node=0 if local else gpus, cpus_per_task=cpus, slurm_partition=options.partition,
                  slurm_account=options.account, slurm_array_parallelism=options.array_parallelism,
                  slurm_signal_delay_s=delay, slurm_srun_args=[f"--cpus-per-task={cpus}"])
    base = [sys.executable, str(SWEEP_PY), str(sweep.file.resolve()), "--out", str(options.out),  # one run a job:
            "--gpus-per-run", str(gpus), "--workers", "1", "--isolate", "--only"]  # its own train.py process
    jobs = []
    for run, cuda in zip(runs, slices):
        env = {"OMP_NUM_THREADS": str(cpus)}
        if cuda is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda
        jobs.append(RunJob(run.name, [*base, run.name], env, stop_wait_s=delay * STOP_SHARE))
    return params, jobs


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


def run_submitit(sweep: Sweep, runs: list[Run], options, cluster: str, children: processes.Children) -> dict:
    """Submits one RunJob per run and waits for them: a job launches and records its run exactly as the local
    backend does. A stop signal ends the waiting, not the jobs. Returns {run name: status} of the runs whose
    jobs ended."""
    import cloudpickle
    import submitit

    cloudpickle.register_pickle_by_value(sys.modules[RunJob.__module__])  # a job need not import this repo
    params, run_jobs = submitit_jobs(sweep, runs, options, cluster)
    executor = submitit.AutoExecutor(folder=options.out / "submitit", cluster=cluster)
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(job) for job in run_jobs]
    array = jobs[0].job_id.split("_")[0]
    print(f"submitted {len(jobs)} jobs ({cluster} {array}); logs in {options.out / 'submitit'}")
    waiting, statuses = dict(zip(jobs, runs)), {}
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:
        while waiting and children.signal is None:
            for done in [j for j in waiting if j.done()]:  # Slurm's watcher throttles its own queries
                run = waiting.pop(done)
                status = read_record(run.dir).get("status")
                if processes.busy(run):  # the job found another launch of its run at work
                    status = processes.BUSY
                elif done.exception() is not None and status not in (*FINISHED, INTERRUPTED):
                    processes.record_run_failure(run, f"job {done.job_id} failed: {done.exception()}")  # died first
                ended = (*FINISHED, INTERRUPTED, processes.BUSY)
                statuses[run.name] = status if status in ended else FAILED
                bar.update()
            time.sleep(1 if waiting else 0)
    if waiting:
        print(f"stopped waiting: {len(waiting)} jobs are still queued or running and will record their runs"
              f" (scancel {array} stops them)", file=sys.stderr)
    return statuses
