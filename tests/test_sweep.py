"""scripts/sweep.py (over experiments/launch.py) and scripts/reproduce.sh: validation before anything runs, clean
one-line errors, resuming, failures and divergence recorded per run, stopping on SIGTERM, the submitit path, the
shipped sweep files and their dry runs."""

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from config import ConfigError, to_dict
from experiments import cost, grid, launch, processes
from tests.conftest import ROOT, TINY_RUN

sys.path.insert(0, str(ROOT / "scripts"))
import sweep  # noqa: E402

TINY_SWEEP = {**TINY_RUN, "model.n_layer": 1, "train.max_iters": 3, "train.eval_interval": 3}
SWEEP_PY = [sys.executable, str(ROOT / "scripts" / "sweep.py")]


def write_sweep(path, grid_, overrides=None, **extra):
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid_, "overrides": overrides or {}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def status(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def digest(directory):
    """Every file under `directory` and a hash of its bytes: what 'nothing changed' compares."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def launches(monkeypatch):
    """Replace the training process by one that records its run as done, and count the launches."""
    names = []

    def fake(run, env, children, execute):
        names.append(run.name)
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "run.json").write_text(json.dumps({"status": "done", "final_val_loss": 1.0}))
        return "done"

    monkeypatch.setattr(processes, "launch", fake)
    return names


@pytest.mark.parametrize("grid_, overrides, message", [
    ({"model.n_emb": [32]}, {}, "model.n_emb"),  # a typo, reported with its closest key
    ({"model.n_embd": [32, 48]}, {"model.head_dim": 32}, "n_embd=48"),  # an invalid value names its run
    ({"log2_lr": ["big"]}, {}, "log2_lr"),
    ({"optim.lr": [0.1]}, {"optim.lr": 0.2}, "set twice"),
    ({"log2_lr": [-7]}, {"train.out_dir": "x"}, "train.out_dir"),
    ({"model.n_embd": 32}, {}, "non-empty list"),
])
def test_a_bad_grid_is_rejected_before_anything_runs(tmp_path, launches, capsys, grid_, overrides, message):
    path = write_sweep(tmp_path / "s.yaml", grid_, {"model.head_dim": 16, **overrides})
    with pytest.raises(ConfigError, match=message):
        grid.load_sweep(path, tmp_path / "out")
    assert sweep.main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert launches == [] and not (tmp_path / "out").exists()


def test_key_value_arguments_set_every_run_and_win_over_the_files_overrides(tmp_path, launches, capsys):
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32, "optim.lr": 0.01})
    out = tmp_path / "out"
    assert sweep.main([str(path), "optim.lr=0.02", "--out", str(out), "train.seed=7"]) == 0  # before or after options
    assert sorted(launches) == ["n_embd=32", "n_embd=64"]
    plan = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(o["optim.lr"], o["train.seed"]) for o in plan.values()] == [(0.02, 7), (0.02, 7)]
    for run in grid.load_sweep(path, out, {"optim.lr": 0.02, "train.seed": 7}).runs:
        assert (run.config.optim.lr, run.config.train.seed) == (0.02, 7)
        (run.dir / "run.json").write_text(json.dumps({"status": "done", "config": to_dict(run.config)}))
    assert sweep.main([str(path), "--out", str(out), "optim.lr=0.02", "train.seed=7"]) == 0 and len(launches) == 2
    assert sweep.main([str(path), "--out", str(out)]) == 2  # without them it is another sweep: refused, not mixed
    err = capsys.readouterr().err
    assert "made with another config" in err and "optim.lr: run 0.02 vs config 0.01" in err
    for bad, message in [("model.n_embd=48", "model.n_embd set twice"), ("train.out_dir=x", "train.out_dir set twice"),
                         ("optim.lrr=1", "command line: unknown config key 'optim.lrr'"),
                         ("optim.lr", "not of the form key=value")]:
        assert sweep.main([str(path), "--out", str(tmp_path / "other"), bad]) == 2
        assert message in capsys.readouterr().err
    assert len(launches) == 2 and not (tmp_path / "other").exists()


BAD_FILES = [  # (sweep file text, what the one-line message says)
    ("base: {default}\ngrid:\n  log2_lr: [-7, -6\n", "s.yaml line 4: YAML syntax error"),
    ("base: {default}\ngrid:\n  model.n_emb: [32]\n", "grid: unknown config key 'model.n_emb' (did you mean"
                                                      " model.n_embd?)"),
    ("base: missing.yaml\ngrid:\n  log2_lr: [-7]\n", "s.yaml: base: config file not found"),
    ("grid:\n  log2_lr: [-7]\n", "a sweep has base:, grid:"),
    ("base: {default}\nmodel:\n  n_embd: 64\ntrain:\n  max_iters: 3\n",
     "is a run config, not a sweep (it has no grid:): train it with python train.py"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_a_bad_sweep_file_is_a_one_line_error_and_changes_nothing(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text.format(default=ROOT / "configs" / "default.yaml"))
    out = tmp_path / "out"
    (out / "n_embd=32").mkdir(parents=True)  # a sweep directory with results in it
    (out / "sweep.json").write_text('{"runs": {"n_embd=32": {}}}')
    (out / "n_embd=32" / "run.json").write_text('{"status": "done"}')
    before = digest(out)
    done = subprocess.run([*SWEEP_PY, str(path), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("sweep error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert digest(out) == before


def test_a_run_config_is_told_to_use_train_py(tmp_path, capsys):
    assert sweep.main([str(ROOT / "configs" / "default.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "is a run config, not a sweep" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--workers", "-2"), ("--gpus-per-run", "0")])
def test_a_worker_count_below_one_is_refused_at_the_command_line(tmp_path, capsys, flag, value):
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7]})
    with pytest.raises(SystemExit) as e:
        sweep.main([str(path), "--out", str(tmp_path / "out"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be at least 1, got {int(value)}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rerun_launches_only_unfinished_runs(tmp_path, launches):
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64, 96, 128, 160, 192]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    left = {"n_embd=32": "done", "n_embd=64": "diverged", "n_embd=96": "running", "n_embd=128": "failed",
            "n_embd=160": "interrupted"}
    for name, state in left.items():  # what an interrupted sweep leaves behind
        (out / name).mkdir(parents=True)
        (out / name / "run.json").write_text(json.dumps({"status": state}))
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert launches == ["n_embd=192", "n_embd=160", "n_embd=128", "n_embd=96"]  # longest first
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert len(launches) == 4
    assert list(json.loads((out / "sweep.json").read_text())["runs"]) == [f"n_embd={n}" for n in range(32, 193, 32)]


def test_a_run_another_process_is_running_is_left_alone(tmp_path, monkeypatch, capsys):
    """A sweep started again while its first launch still runs a run (e.g. a Slurm job) must not race it."""
    def command(self, run):  # a training process that finishes at once
        record = run.dir / "run.json"
        script = f"import json, pathlib; pathlib.Path({str(record)!r}).write_text(json.dumps({{'status': 'done'}}))"
        return [sys.executable, "-c", script]

    monkeypatch.setattr(processes.Subprocess, "command", command)
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32})
    out, args = tmp_path / "out", [str(path), "--out", str(tmp_path / "out")]
    held = out / "n_embd=32"
    held.mkdir(parents=True)
    (held / "run.json").write_text(json.dumps({"status": "running", "step": 5}))
    with open(held / processes.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the process running that run holds it
        assert sweep.main(args) == 0
        assert "failed 0, interrupted 0, running elsewhere 1" in capsys.readouterr().out
        assert status(held) == {"status": "running", "step": 5} and not (held / "stdout.log").exists()
        assert status(out / "n_embd=64")["status"] == "done"
    assert sweep.main(args) == 0  # once it is no longer held, the run is launched (and resumes)
    assert status(held)["status"] == "done" and "1 to run" in capsys.readouterr().out


def test_failure_and_divergence_are_recorded_and_the_rest_run(tmp_path, tiny_corpus, monkeypatch):
    """Real runs (in a worker): one trains, one diverges, one crashes on its missing data directory."""
    g = [{"data.dataset": [str(tiny_corpus)], "log2_lr": [-7, 20]},
         {"data.dataset": [str(tmp_path / "missing")], "log2_lr": [-7]}]
    overrides = {**TINY_SWEEP, "optim.warmup_iters": 0, "optim.grad_clip": 0.0, "train.max_iters": 8,
                 "train.ckpt_interval": 4}
    path = write_sweep(tmp_path / "s.yaml", g, overrides)
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--workers", "1"]) == 1  # 1: a run failed
    runs = grid.load_sweep(path, out).runs
    done, diverged, failed = (status(r.dir) for r in runs)
    assert done["status"] == "done" and done["final_val_loss"] < 6 and done["step"] == 8
    assert diverged["status"] == "diverged" and diverged["final_val_loss"] is None
    assert failed["status"] == "failed" and "missing does not exist" in failed["error"]
    assert failed["config"]["data"]["dataset"] == str(tmp_path / "missing")
    assert (runs[0].dir / "ckpt.pt").exists() and "step 8" in (runs[0].dir / "stdout.log").read_text()

    relaunched = []
    monkeypatch.setattr(processes, "launch",
                        lambda run, env, children, execute: relaunched.append(execute.command(run)) or "failed")
    sweep.main([str(path), "--out", str(out), "--isolate"])  # a process per run: its command line to read
    (cmd,) = relaunched  # only the failed run goes again, resuming from its checkpoint if it has one
    assert cmd[1:3] == [str(ROOT / "train.py"), str(ROOT / "configs" / "default.yaml")]
    assert f"train.out_dir={runs[2].dir}" in cmd and "train.resume=auto" in cmd


def logged_steps(run_dir, after=0):
    """The steps train.py has printed to the run's stdout.log, from byte `after` on."""
    try:
        text = (run_dir / "stdout.log").read_bytes()[after:].decode(errors="replace")
    except FileNotFoundError:
        return []
    return [int(s) for s in re.findall(r"^step (\d+)\b", text, re.M)]


def wait_until(condition, proc, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended early:\n{proc.communicate()[1]}"
        assert time.time() < deadline, "timed out waiting for the runs to train"
        time.sleep(0.1)


def test_sigterm_stops_the_running_runs_at_a_checkpoint_and_a_rerun_resumes_them(tmp_path, tiny_corpus):
    """Two workers, three runs far too long to finish: SIGTERM to the sweep alone reaches both running
    train.py processes, which checkpoint and say interrupted; the third never starts; the sweep says so and
    exits 143. The same command then continues each run from the step it stopped at."""
    overrides = {**TINY_SWEEP, "data.dataset": str(tiny_corpus), "train.max_iters": 100_000,
                 "train.eval_interval": 100_000, "train.ckpt_interval": 100_000}
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7, -6, -5]}, overrides)
    out = tmp_path / "out"
    running, queued = [out / "log2_lr=-7", out / "log2_lr=-6"], out / "log2_lr=-5"
    cmd = [*SWEEP_PY, str(path), "--out", str(out), "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}  # CPU runs: 2 workers on any machine

    def interrupt(condition):
        """Start the sweep, SIGTERM it once `condition` holds; its exit code and stderr."""
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            wait_until(condition, proc)
            proc.send_signal(signal.SIGTERM)  # to the sweep's process only, not its group
            return proc.wait(timeout=120), proc.communicate()[1]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    code, stderr = interrupt(lambda: all(logged_steps(d) for d in running))
    assert code == 143 and "Traceback" not in stderr, stderr
    assert "sweep stopped by SIGTERM: 2 runs interrupted, 1 not started" in stderr
    assert "Rerun the same command to resume the sweep" in stderr
    stopped = {}
    for d in running:
        record = status(d)
        assert record["status"] == "interrupted" and record["step"] >= 1 and (d / "ckpt.pt").exists()
        assert f"  interrupted  {d.name}\n" in stderr
        stopped[d] = (record["step"], (d / "stdout.log").stat().st_size)
    assert not (queued / "run.json").exists() and not (queued / "stdout.log").exists()

    code, stderr = interrupt(lambda: all(logged_steps(d, after=size) for d, (_, size) in stopped.items()))
    assert code == 143, stderr
    for d, (step, size) in stopped.items():
        assert logged_steps(d, after=size)[0] == step + 1  # resumed where it stopped, not from step 1
        assert status(d)["status"] == "interrupted" and status(d)["step"] > step


def test_submitit_backend_runs_a_two_run_sweep(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setattr(processes, "visible_gpus", lambda: [])  # CPU runs, both at once, on any machine
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7, -6]}, {**TINY_SWEEP, "data.dataset": str(tiny_corpus)})
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--backend", "local-submitit", "--time-min", "5"]) == 0
    assert [status(out / name)["status"] for name in ("log2_lr=-7", "log2_lr=-6")] == ["done", "done"]
    assert list((out / "submitit").glob("*_log.out"))


def test_shipped_sweeps_are_valid_and_dry_run_prints_gpu_hours(tmp_path, capsys):
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    sweeps = {f.stem: grid.load_sweep(f, tmp_path) for f in files if f.stem != "tiny_base"}
    assert len(sweeps["width"].runs) == 2 * 6 * 6 and len(sweeps["depth"].runs) == 2 * 7 * 5
    assert {r.config.model.norm for r in sweeps["depth_noln"].runs} == {"none"}
    assert all(f"tiny_{name}" in sweeps for name in sweeps if not name.startswith("tiny_"))
    assert sweep.main([str(ROOT / "configs" / "sweeps" / "width.yaml"), "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_run = [ln for ln in lines if ln.startswith("run ")]
    assert len(per_run) == 72 and all(re.search(r"  [0-9.e+-]+ GPU-h$", ln) for ln in per_run)
    assert lines[-2].startswith("72 runs (72 to run): 23.4 H100-hours (23.4 to run), training FLOPs")
    assert not list(tmp_path.iterdir())


def test_the_batch_must_divide_across_each_runs_gpus(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7]}, {**TINY_SWEEP, "train.batch_size": 16})
    args = [str(path), "--out", str(tmp_path / "out"), "--dry-run"]
    assert sweep.main([*args, "--gpus-per-run", "2"]) == 0  # 16 sequences = 4 x 2 ranks x 2
    assert sweep.main([*args, "--gpus-per-run", "3"]) == 2  # 16 sequences are not 4 x 3 x k
    assert "4 x 3 ranks" in capsys.readouterr().err


def test_finished_runs_of_another_config_are_not_silently_kept(tmp_path, launches, capsys):
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    runs = grid.load_sweep(path, out).runs
    for run in runs:
        run.dir.mkdir(parents=True)
        (run.dir / "run.json").write_text(json.dumps({"status": "done", "config": to_dict(run.config)}))
    assert sweep.main([str(path), "--out", str(out)]) == 0 and launches == []  # same config: skipped
    write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32, "optim.lr": 0.01})
    assert sweep.main([str(path), "--out", str(out)]) == 2 and launches == []
    assert "2 finished runs" in capsys.readouterr().err


# What `python scripts/sweep.py SWEEP --out DIR --dry-run` ends with (its format is pinned by the shipped
# sweeps' test above); the fake python below answers with it, saving six processes that count FLOPs.
DRY_RUN_TAIL = """run   n_embd=64,log2_lr=-7  300.1M tokens  0.109 GFLOP/token  0.0229 GPU-h
12 runs (10 to run): 1.5 H100-hours (1.25 to run), training FLOPs 2.1e+18 (1.8e+18 to run) at 40% MFU ...
first command: python train.py ...
"""


def reproduce(tmp_path, *args):
    """scripts/reproduce.sh with a `python` that logs each call and answers sweep.py --dry-run with
    DRY_RUN_TAIL (any other call runs), outputs under tmp_path/out."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "dry_run.txt").write_text(DRY_RUN_TAIL)
    (bin_dir / "python").write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        f'if [[ "$1" == scripts/sweep.py && "$*" == *--dry-run* ]]; then cat {tmp_path / "dry_run.txt"}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce.sh"), *args], env=env, capture_output=True,
                          text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("args", [(), ("--dry-run",), ("all",)])
def test_reproduce_without_a_mode_prints_usage_and_runs_nothing(tmp_path, args):
    done, calls = reproduce(tmp_path, *args)
    assert done.returncode == 2 and done.stderr.startswith("usage: ") and "paper|tiny [--dry-run]" in done.stderr
    assert calls == [] and done.stdout == "" and not (tmp_path / "out").exists()


def test_reproduce_dry_run_lists_the_commands_and_their_gpu_hours(tmp_path):
    done, calls = reproduce(tmp_path, "paper", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    out = tmp_path / "out"
    assert lines[0] == "python -m data.prepare openwebtext --tokenizer gpt2"
    assert lines[1] == f"python scripts/coord_check.py configs/coord/width.yaml --out {out}/coord_width"
    assert lines[3] == (f"python scripts/sweep.py configs/sweeps/width.yaml --out {out}/width"
                        "   # 12 runs (10 to run): 1.5 H100-hours (1.25 to run)")
    assert lines[4] == f"python scripts/plot.py {out}/width"
    sweeps = [ln for ln in lines if ln.startswith("python scripts/sweep.py")]
    assert [ln.split()[2] for ln in sweeps] == [f"configs/sweeps/{name}.yaml" for name in
                                                ("width", "depth", "depth_noln", "depth_k1", "wd_width", "width_muon",
                                                 "width_shampoo", "width_sophia")]
    assert lines[-1] == "# all sweeps: 96 runs (80 to run), 12 H100-hours (10 to run)"
    assert len(calls) == 8 and all(c.startswith("scripts/sweep.py") and c.endswith("--dry-run") for c in calls)
    assert not out.exists()


def test_dry_run_marks_exactly_the_runs_over_an_80gb_gpu(tmp_path, capsys):
    """Each run's estimated peak GPU memory per GPU at its micro-batch; OVER 80 GB on the runs whose estimate
    exceeds cost.CARD_GIB (here micro-batch 64 at n = 2048, L = 16 without activation checkpointing, ~94 GiB)
    and on no other (micro-batch 1; checkpointing keeps only each block's input), a count line that says what to
    do; a CPU run (train.device cpu) prints `-` and is never marked."""
    shape = {"model.n_embd": 2048, "model.head_dim": 64, "model.n_layer": 16, "model.block_size": 1024,
             "train.batch_size": 64}
    g = [{"train.device": ["auto"], "train.micro_batch_size": [1, 64], "model.activation_checkpointing": [False, True]},
         {"train.device": ["cpu"], "train.micro_batch_size": [64]}]
    path = write_sweep(tmp_path / "s.yaml", g, shape)
    runs = grid.load_sweep(path, tmp_path / "out").runs
    gpu, cpu = runs[:4], runs[4]
    assert len(runs) == 5 and cpu.config.train.device == "cpu"
    assert sweep.main([str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_run = {ln.split()[1]: ln for ln in lines if ln.startswith("run ")}
    assert list(per_run) == [run.name for run in runs]
    estimates = {run.name: cost.peak_memory_gib(run.config, world=1)["total"] for run in gpu}
    over = {name for name, gib in estimates.items() if gib > cost.CARD_GIB}
    big = gpu[2]  # micro-batch 64, no checkpointing
    assert big.config.train.micro_batch_size == 64 and not big.config.model.activation_checkpointing
    assert over == {big.name}
    assert estimates[big.name] > 1.2 * cost.CARD_GIB  # clear of the line, both ways
    assert max(gib for name, gib in estimates.items() if name != big.name) < 0.5 * cost.CARD_GIB
    for run in gpu:
        line = per_run[run.name]
        assert line.endswith(f"GPU-h  {launch.OVER}") == (run.name in over), line
        assert f"  {estimates[run.name]:.3g} GiB/GPU  " in line
    assert "  - GiB/GPU  " in per_run[cpu.name] and per_run[cpu.name].endswith(" GPU-h")
    assert ("1 runs over an 80 GB GPU (estimated peak above 71 GiB per GPU on 1 GPU): use"
            " model.activation_checkpointing=true or a smaller train.micro_batch_size") in lines
    assert lines[-2].startswith("5 runs (5 to run): ")
    assert not (tmp_path / "out").exists()


def test_finished_runs_of_another_config_are_refused_but_an_older_version_of_the_same_is_kept(tmp_path, launches):
    """Skipping a finished run made with other settings would mix two configs in one table; a record written
    before a key existed (it lacks the key) is the same run, and is kept."""
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out)]) == 0
    run = next(r for r in grid.load_sweep(path, out).runs if r.name == "n_embd=32")
    record = {**status(run.dir), "config": to_dict(run.config)}
    del record["config"]["optim"]["ns_batched"]  # written before the key existed
    (run.dir / "run.json").write_text(json.dumps(record))
    assert sweep.main([str(path), "--out", str(out)]) == 0 and sorted(launches) == ["n_embd=32", "n_embd=64"]
    record["config"]["optim"]["lr"] = 0.5  # made with another lr
    (run.dir / "run.json").write_text(json.dumps(record))
    assert sweep.main([str(path), "--out", str(out)]) != 0
    assert sorted(launches) == ["n_embd=32", "n_embd=64"]  # nothing relaunched


def test_a_finished_run_is_kept_whatever_its_watching_and_launching_keys_say(tmp_path, launches):
    """Keys that do not change what is trained (wandb's group and name, absent from older records; intervals)
    may differ between a finished run's record and the sweep: the run is kept, not refused as stale."""
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    (run,) = grid.load_sweep(path, out).runs
    record = {"status": "done", "config": to_dict(run.config)}
    del record["config"]["log"]["wandb_group"], record["config"]["log"]["wandb_name"]  # written before they existed
    record["config"]["train"]["log_interval"] = 7
    run.dir.mkdir(parents=True)
    (run.dir / "run.json").write_text(json.dumps(record))
    assert sweep.main([str(path), "--out", str(out)]) == 0 and launches == []


def test_eval_data_scores_every_done_run_once(tmp_path, tiny_corpus, capsys):
    """Real runs, then each done run's checkpoint scored on a second corpus, as scripts/evaluate.py measures
    it; a diverged run is not scored, and running the sweep again scores nothing twice."""
    from data.prepare import prepare
    from trainer.saved import evaluate_run

    prose = tmp_path / "prose.txt"
    prose.write_text("\n\n".join(["Plain English prose, unlike the Python the runs saw. " * 40] * 10))
    other = prepare("files", out=tmp_path / "other", tokenizer="bytes", inputs=[str(prose)], val_fraction=0.5,
                    num_proc=1)
    overrides = {**TINY_SWEEP, "data.dataset": str(tiny_corpus), "optim.warmup_iters": 0, "optim.grad_clip": 0.0}
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7, 20]}, overrides)
    out = tmp_path / "out"
    args = [str(path), "--out", str(out), "--workers", "1", "--eval-data", str(other)]
    assert sweep.main(args) == 0
    done, diverged = grid.load_sweep(path, out).runs
    assert status(diverged.dir)["status"] == "diverged" and not (diverged.dir / "evals.jsonl").exists()
    (line,) = map(json.loads, (done.dir / "evals.jsonl").read_text().splitlines())
    assert line == evaluate_run(done.dir, str(other))
    assert line["step"] == TINY_SWEEP["train.max_iters"] and line["val_loss"] != status(done.dir)["final_val_loss"]
    assert "1 runs scored, 0 scored before" in capsys.readouterr().out
    assert sweep.main(args) == 0
    assert len((done.dir / "evals.jsonl").read_text().splitlines()) == 1
    assert "0 runs scored, 1 scored before" in capsys.readouterr().out


def test_eval_data_the_runs_cannot_read_is_refused_before_anything_runs(tmp_path, launches, capsys):
    from data.prepare import prepare

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(["Some text to tokenize. " * 100] * 4))
    gpt2 = prepare("files", out=tmp_path / "gpt2", tokenizer="gpt2", inputs=[str(text)], val_fraction=0.5, num_proc=1)
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7]}, TINY_SWEEP)
    out = tmp_path / "out"
    capsys.readouterr()
    for dataset, message in ((tmp_path / "missing", "missing does not exist"),
                             (gpt2, "smaller than the data's vocabulary (50257, gpt2)")):
        assert sweep.main([str(path), "--out", str(out), "--eval-data", str(dataset)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sweep error: --eval-data {dataset}: ") and message in err
        assert len(err.strip().splitlines()) == 1
    assert launches == [] and not out.exists()
