"""experiments/launch.py and experiments/processes.py, the library under scripts/sweep.py: what the end of a run's
execution means for its run.json, the run directory's lock, workers on distinct GPUs with a share of the CPU
threads, and torchrun started so that Slurm's SIGUSR2 does not kill it. No training here (fake executors)."""

import fcntl
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from config import ConfigError
from experiments import grid, launch, processes
from tests.conftest import ROOT, TINY_RUN

TINY_SWEEP = {**TINY_RUN, "model.n_layer": 1, "train.max_iters": 3, "train.eval_interval": 3}


def tiny_sweep(tmp_path, grid_=None, overrides=None):
    path = tmp_path / "s.yaml"
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid_ or {"log2_lr": [-7]},
            "overrides": overrides or TINY_SWEEP}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, grid.load_sweep(path, tmp_path / "out")


def record(run):
    return json.loads((run.dir / "run.json").read_text())


class Executor:
    """Stands for processes.Subprocess: writes `writes` as the run's run.json (if any), returns `code`."""

    def __init__(self, code, writes=None, stderr=""):
        self.code, self.writes, self.stderr, self.calls = code, writes, stderr, []

    def __call__(self, run, env, children):
        self.calls.append((run.name, (run.dir / "run.json").exists()))
        if self.writes is not None:
            (run.dir / "run.json").write_text(json.dumps(self.writes))
        return self.code, self.stderr


@pytest.mark.parametrize("code, writes, status", [
    (0, {"status": "done"}, "done"),
    (0, {"status": "diverged"}, "diverged"),
    (143, {"status": "interrupted", "step": 3}, "interrupted"),
    (-signal.SIGTERM, None, "interrupted"),  # killed before it could say so: resumable from its checkpoint
    (None, None, processes.NOT_STARTED),  # the sweep was stopping when its turn came
])
def test_how_a_run_ended_is_its_status(tmp_path, code, writes, status):
    _, s = tiny_sweep(tmp_path)
    (run,) = s.runs
    run.dir.mkdir(parents=True)
    (run.dir / "run.json").write_text(json.dumps({"status": "running", "step": 2}))  # an earlier attempt's
    execute = Executor(code, writes)
    assert processes.launch(run, {}, processes.Children(), execute) == status
    assert execute.calls == [(run.name, False)]  # the earlier attempt's record was gone when it started


def test_a_crash_is_recorded_with_its_stderr_unless_the_run_recorded_it_itself(tmp_path):
    _, s = tiny_sweep(tmp_path)
    (run,) = s.runs
    assert processes.launch(run, {}, processes.Children(), Executor(1, stderr="Traceback ...\nValueError: boom")) \
        == "failed"
    crashed = record(run)
    assert crashed["status"] == "failed" and crashed["config"]["optim"]["lr"] == 2**-7
    assert crashed["error"].startswith("train.py exited with code 1\n") and crashed["error"].endswith("boom")
    own = {"status": "failed", "error": "its own message", "step": 2}
    assert processes.launch(run, {}, processes.Children(), Executor(1, writes=own, stderr="tail")) == "failed"
    assert record(run) == own


def test_a_finished_locked_or_stopped_run_is_not_executed(tmp_path):
    _, s = tiny_sweep(tmp_path)
    (run,) = s.runs
    run.dir.mkdir(parents=True)
    execute = Executor(0, {"status": "done"})
    stopping = processes.Children()
    stopping.stop(signal.SIGINT)
    assert processes.launch(run, {}, stopping, execute) == processes.NOT_STARTED
    with open(run.dir / processes.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process running the run holds it
        assert processes.busy(run)
        assert processes.launch(run, {}, processes.Children(), execute) == processes.BUSY
    assert not processes.busy(run)
    (run.dir / "run.json").write_text(json.dumps({"status": "diverged"}))  # finished by another launch meanwhile
    assert processes.launch(run, {}, processes.Children(), execute) == "diverged"
    assert execute.calls == [] and record(run) == {"status": "diverged"}


def test_workers_get_their_own_gpus_or_a_share_of_the_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr(processes, "visible_gpus", lambda: [])
    assert processes.worker_envs(3, 1) == [{"OMP_NUM_THREADS": "2"}] * 3
    monkeypatch.setattr(processes, "visible_gpus", lambda: ["4", "5", "6", "7"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in processes.worker_envs(2, 2)] == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="visible GPUs"):
        processes.worker_envs(3, 2)


def test_local_workers_run_on_distinct_gpus_with_a_share_of_the_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    monkeypatch.setattr(processes, "visible_gpus", lambda: ["0", "1", "2", "3"])
    running, seen = [], []

    def fake(run, env, children, execute):  # a run that takes a while: runs of different workers overlap
        assert env["CUDA_VISIBLE_DEVICES"] not in running, f"two runs at once on GPUs {env['CUDA_VISIBLE_DEVICES']}"
        running.append(env["CUDA_VISIBLE_DEVICES"])
        seen.append(dict(env))
        time.sleep(0.05)
        running.remove(env["CUDA_VISIBLE_DEVICES"])
        return "done"

    monkeypatch.setattr(processes, "launch", fake)
    path, _ = tiny_sweep(tmp_path, {"log2_lr": [-9, -8, -7, -6, -5, -4]}, {**TINY_SWEEP, "train.batch_size": 8})
    assert launch.launch_sweep(launch.Options(path, tmp_path / "a")) == 0  # one worker per GPU
    assert {e["CUDA_VISIBLE_DEVICES"] for e in seen} == {"0", "1", "2", "3"}
    assert {e["OMP_NUM_THREADS"] for e in seen} == {"4"}
    seen.clear()
    assert launch.launch_sweep(launch.Options(path, tmp_path / "b", gpus_per_run=2)) == 0  # 2 workers x 2 ranks
    assert {e["CUDA_VISIBLE_DEVICES"] for e in seen} == {"0,1", "2,3"}
    assert {e["OMP_NUM_THREADS"] for e in seen} == {"4"}


def test_torchrun_is_started_with_sigusr2_ignored_and_its_ranks_inherit_it(tmp_path):
    """Slurm signals every process of a job: torchrun would die of SIGUSR2 (it neither handles nor forwards
    it); ignored, it stays up while its ranks (train.py handles SIGUSR2 itself) checkpoint."""
    script = tmp_path / "rank.py"
    script.write_text("import signal, sys\nprint(signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN)\n")
    out = tmp_path / "out.txt"
    children = processes.Children()
    with open(out, "w") as f:
        cmd = [sys.executable, "-m", processes.TORCHRUN, "--standalone", "--nproc_per_node=1", str(script)]
        assert children.run(cmd, stdout=f, stderr=subprocess.STDOUT) == 0, out.read_text()
    assert out.read_text().splitlines()[-1] == "True", out.read_text()
    assert signal.getsignal(signal.SIGUSR2) != signal.SIG_IGN  # this process is left as it was


def test_the_slurm_recipe_for_torchrun_passes_sigusr2_on():
    """docs/running.md's torchrun line parses with torch's own argument parser, names SIGUSR2 among the signals
    torchrun handles and passes on (Slurm's --signal=USR2 would otherwise kill torchrun), waits for the ranks'
    checkpoint, and starts train.py with a valid config."""
    import shlex

    from torch.distributed.run import get_args_parser

    from config import load_config, split_command_line

    line = next(ln for ln in (ROOT / "docs" / "running.md").read_text().splitlines()
                if ln.startswith("srun ") and " torchrun " in ln)
    words = shlex.split(line)
    args = get_args_parser().parse_args(words[words.index("torchrun") + 1:])
    handled = args.signals_to_handle.split(",")
    assert "SIGUSR2" in handled and all(hasattr(signal.Signals, s) for s in handled)
    assert {"SIGTERM", "SIGINT"} <= set(handled)  # torchrun's defaults kept
    assert args.shutdown_timeout >= 60
    assert args.training_script == "train.py"
    path, overrides = split_command_line(args.training_script_args)
    assert load_config(path, overrides).train.resume == "auto"
