"""The submitit backend (experiments/slurm.py) as clusters use it, on CPU: checkpointable jobs that a signal before the
time limit stops at a checkpoint and requeues, the requeued job resuming the run; CPUs and threads that
follow the GPUs of a run; distinct GPUs for runs that go at once (faked GPU lists). No Slurm is run."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml

from config import ConfigError
from experiments import grid, processes, slurm
from tests.conftest import ROOT, TINY_RUN

sys.path.insert(0, str(ROOT / "scripts"))
import sweep  # noqa: E402

SWEEP_PY = [sys.executable, str(ROOT / "scripts" / "sweep.py")]
TINY_SWEEP = {**TINY_RUN, "model.n_layer": 1, "train.max_iters": 3, "train.eval_interval": 3}


def write_sweep(path, grid_, overrides):
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid_, "overrides": overrides}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def jobs_of(tmp_path, argv, grid_=None, overrides=None):
    """The executor parameters and jobs the submitit backend would submit for a tiny sweep."""
    path = write_sweep(tmp_path / "s.yaml", grid_ or {"log2_lr": [-7, -6]}, overrides or TINY_SWEEP)
    options = sweep.parse_args([str(path), "--out", str(tmp_path / "out"), *argv])
    s = grid.load_sweep(path, options.out)
    return s, (*slurm.submitit_jobs(s, s.runs, options, slurm.CLUSTERS[options.backend]),)


def test_a_job_is_checkpointable_and_requeues_the_same_command(tmp_path):
    s, (params, jobs) = jobs_of(tmp_path, ["--backend", "slurm"])
    job = jobs[0]
    run = s.runs[0]
    assert job.cmd == [*SWEEP_PY, str(s.file), "--out", str(tmp_path / "out"), "--gpus-per-run", "1",
                       "--workers", "1", "--isolate", "--only", run.name]
    # submitit pickles the job with cloudpickle, by value: the job process need not import this repository
    cloudpickle.register_pickle_by_value(slurm)
    clone = cloudpickle.loads(cloudpickle.dumps(job))
    delayed = clone.checkpoint()  # what submitit's SIGUSR2 handler calls (nothing runs yet: nothing to stop)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.args == () and delayed.kwargs == {}
    assert delayed.function.cmd == job.cmd and delayed.function.env == job.env == {"OMP_NUM_THREADS": "8"}
    assert pickle.loads(pickle.dumps(job)).cmd == job.cmd  # plain pickle too (by reference)

    delayed.set_timeout(params["timeout_min"], 3)
    delayed.dump(tmp_path / "job.pkl")  # as submitit stores the requeued job; read back where it would run
    read = ("import sys; from submitit.core.utils import DelayedSubmission as D;"
            " f = D.load(sys.argv[1]).function; print(type(f).__name__, f.cmd[-1], f.stop_wait_s)")
    done = subprocess.run([sys.executable, "-c", read, str(tmp_path / "job.pkl")], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RunJob", run.name, str(slurm.SIGNAL_DELAY_S * slurm.STOP_SHARE)]


def test_slurm_jobs_get_cpus_per_gpu_and_each_rank_a_share(tmp_path, monkeypatch):
    big = {**TINY_SWEEP, "train.batch_size": 16}
    _, (params, jobs) = jobs_of(tmp_path, ["--backend", "slurm", "--gpus-per-run", "4"], overrides=big)
    assert params["gpus_per_node"] == 4 and params["cpus_per_task"] == 32  # 8 per GPU by default
    assert params["slurm_signal_delay_s"] == 120 and params["timeout_min"] == 240
    assert [job.env for job in jobs] == [{"OMP_NUM_THREADS": "32"}] * 2  # no CUDA_VISIBLE_DEVICES: Slurm's
    # inside the job, its sweep.py (--workers 1) gives each of the 4 torchrun ranks a quarter
    monkeypatch.setenv("OMP_NUM_THREADS", jobs[0].env["OMP_NUM_THREADS"])
    monkeypatch.setattr(processes, "visible_gpus", lambda: ["0", "1", "2", "3"])  # what Slurm gave the job
    assert processes.worker_envs(1, 4) == [{"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}]
    s = grid.load_sweep(tmp_path / "s.yaml", tmp_path / "out")
    cmd = processes.Subprocess(s, 4).command(s.runs[0])
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                        f"--shutdown-timeout={processes.TORCHRUN_SHUTDOWN_S}", str(ROOT / "train.py")]

    _, (params, jobs) = jobs_of(tmp_path, ["--backend", "slurm", "--gpus-per-run", "2", "--cpus-per-gpu", "6"],
                                overrides=big)
    assert params["cpus_per_task"] == 12 and jobs[0].env["OMP_NUM_THREADS"] == "12"
    _, (params, _) = jobs_of(tmp_path, ["--backend", "slurm", "--gpus-per-run", "2", "--cpus-per-run", "10",
                                        "--time-min", "3"], overrides=big)
    assert params["cpus_per_task"] == 10 and params["slurm_signal_delay_s"] == 90  # at most half the limit

    # what sbatch would get (submitit only needs an srun to exist to write it)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{**params, "slurm_partition": "gpu"})
    text = executor._executor._make_submission_file_text("CMD", "uid")
    for line in ("--signal=USR2@90", "--cpus-per-task=10", "--gpus-per-node=2", "--time=3", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in text
    assert re.search(r"^srun .* --cpus-per-task=10 .*CMD$", text, re.M), text


def test_local_submitit_jobs_get_their_own_gpus_or_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr(processes, "visible_gpus", lambda: [])
    _, (params, jobs) = jobs_of(tmp_path, ["--backend", "local-submitit"])
    assert [job.env for job in jobs] == [{"OMP_NUM_THREADS": "4"}] * 2  # every job starts at once: a share each
    monkeypatch.setattr(processes, "visible_gpus", lambda: ["4", "5", "6", "7"])
    _, (params, jobs) = jobs_of(tmp_path, ["--backend", "local-submitit", "--gpus-per-run", "2"],
                                overrides={**TINY_SWEEP, "train.batch_size": 8})
    assert [job.env.get("CUDA_VISIBLE_DEVICES") for job in jobs] == ["4,5", "6,7"]
    assert params["gpus_per_node"] == 0  # not submitit's: it would give every local job GPUs 0..G-1
    with pytest.raises(ConfigError, match="starts every job at once: 3 runs x --gpus-per-run 2 needs more than"
                                          " the 4 visible GPUs; use --backend local"):
        jobs_of(tmp_path, ["--backend", "local-submitit", "--gpus-per-run", "2"], {"log2_lr": [-7, -6, -5]},
                {**TINY_SWEEP, "train.batch_size": 8})
    out = tmp_path / "refused"
    argv = [str(tmp_path / "s.yaml"), "--out", str(out), "--backend", "local-submitit", "--gpus-per-run", "2"]
    assert sweep.main(argv) == 2 and "use --backend local" in capsys.readouterr().err and not out.exists()
    assert sweep.main([*argv, "--dry-run"]) == 2
    assert sweep.main([*argv, "--only", "log2_lr=-7", "--dry-run"]) == 0
    assert "local jobs: 1 x (GPUs 4,5, 8 CPUs, OMP_NUM_THREADS=4 per rank)" in capsys.readouterr().out


def submitit_tasks(folder: Path) -> list[int]:
    """PIDs of the processes running submitit jobs of `folder`: what submitit's controller signals."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and os.fsencode(folder) in args:
            pids.append(int(cmdline.parent.name))
    return pids


def steps(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"^step (\d+)/", text, re.M)]


def test_a_job_signalled_before_its_time_limit_checkpoints_requeues_and_resumes(tmp_path, tiny_corpus):
    """The whole path with submitit's local executor: SIGUSR2 to the job's process, as submitit's controller
    (or Slurm, signal_delay_s before the limit) sends it. submitit calls the job's checkpoint(): train.py
    checkpoints and says interrupted; the job requeues, and the requeued job resumes the run to the end."""
    iters = 1500
    overrides = {**TINY_SWEEP, "data.dataset": str(tiny_corpus), "train.max_iters": iters,
                 "train.eval_interval": iters, "train.ckpt_interval": iters}
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7]}, overrides)
    out = Path(os.path.realpath(tmp_path)) / "out"
    run_dir = out / "log2_lr=-7"
    proc = subprocess.Popen([*SWEEP_PY, str(path), "--out", str(out), "--backend", "local-submitit"], cwd=ROOT,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not steps((run_dir / "stdout.log").read_text() if (run_dir / "stdout.log").exists() else ""):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "timed out waiting for the run to train"
            time.sleep(0.1)
        (task,) = submitit_tasks(out / "submitit")
        os.kill(task, signal.SIGUSR2)
        code = proc.wait(timeout=180)
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, stderr
    assert "done 1, diverged 0, failed 0, interrupted 0" in stdout
    log = (run_dir / "stdout.log").read_text()
    (stopped,) = re.findall(r"^SIGTERM: checkpointed step (\d+);", log, re.M)
    stopped = int(stopped)
    assert 0 < stopped < iters
    first, second = log.split(f"resuming at step {stopped}\n")  # the requeued job continued the checkpoint
    assert steps(first)[-1] == stopped and steps(second)[0] == stopped + 1 and steps(second)[-1] == iters
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["step"] == iters
    logs = "".join(p.read_text() for p in (out / "submitit").glob("*_log.*"))
    assert "Calling checkpoint method" in logs and "Requeued job" in logs


def test_submitit_is_imported_only_to_submit(tmp_path):
    """The local backend and --dry-run (of any backend) run without submitit installed."""
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7, -6]}, TINY_SWEEP)
    code = ("import sys; sys.path.insert(0, 'scripts'); import sweep;"
            f" code = sweep.main([{str(path)!r}, '--out', {str(tmp_path / 'out')!r}, '--backend', 'slurm',"
            " '--dry-run']); print(code, 'submitit' in sys.modules, 'cloudpickle' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "0 False False"
    assert lines[-2] == ("slurm jobs: 2 x (1 GPU, 8 CPUs, OMP_NUM_THREADS=8 per rank), 240 min each; SIGUSR2 120 s"
                         " before the limit checkpoints the run and requeues the job")
