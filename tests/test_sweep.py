"""scripts/sweep.py: the grid and its names, validation before anything runs, resuming, failures and
divergence recorded per run, worker environments, the submitit path, and the shipped sweep files."""

import fcntl
import json
import sys

import pytest
import yaml

from config import ConfigError, parse_overrides
from tests.conftest import ROOT, TINY_RUN

sys.path.insert(0, str(ROOT / "scripts"))
import sweep  # noqa: E402

TINY_SWEEP = {**TINY_RUN, "model.n_layer": 1, "train.max_iters": 3, "train.eval_interval": 3}


def write_sweep(path, grid, overrides=None, **extra):
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid, "overrides": overrides or {}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def status(run_dir):
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture
def launches(monkeypatch):
    """Replace the training process by one that records its run as done, and count the launches."""
    names = []

    def fake(cmd, run, env):
        names.append(run.name)
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "run.json").write_text(json.dumps({"status": "done", "final_val_loss": 1.0}))
        return "done"

    monkeypatch.setattr(sweep, "launch", fake)
    return names


def test_grid_is_expanded_in_file_order_with_stable_names(tmp_path):
    grid = {"scaling.parameterization": ["sp", "mup"], "model.n_embd": [32, 64], "log2_lr": [-7, -6.5]}
    path = write_sweep(tmp_path / "s.yaml", grid, {"model.head_dim": 16}, seeds=[1, 2])
    runs = sweep.load_sweep(path, tmp_path / "out").runs
    assert [r.name for r in runs] == [r.name for r in sweep.load_sweep(path, tmp_path / "out").runs]
    assert len(runs) == 16
    assert [r.name for r in runs[:3]] == [
        "parameterization=sp,n_embd=32,log2_lr=-7,seed=1",
        "parameterization=sp,n_embd=32,log2_lr=-7,seed=2",
        "parameterization=sp,n_embd=32,log2_lr=-6.5,seed=1",
    ]
    assert runs[-1].name == "parameterization=mup,n_embd=64,log2_lr=-6.5,seed=2"
    first = runs[0]
    assert first.overrides == {"model.head_dim": 16, "scaling.parameterization": "sp", "model.n_embd": 32,
                               "optim.lr": 2**-7, "train.seed": 1}
    assert first.config.optim.lr == 2**-7 and runs[2].config.optim.lr == 2**-6.5
    assert first.dir == tmp_path / "out" / first.name and first.config.train.out_dir == str(first.dir)


def test_a_list_of_grids_is_concatenated(tmp_path):
    grid = [{"scaling.parameterization": ["sp"], "log2_lr": [-13, -12]},
            {"scaling.parameterization": ["mup"], "log2_wd": [-4]}]
    runs = sweep.load_sweep(write_sweep(tmp_path / "s.yaml", grid), tmp_path).runs
    assert [r.name for r in runs] == ["parameterization=sp,log2_lr=-13", "parameterization=sp,log2_lr=-12",
                                      "parameterization=mup,log2_wd=-4"]
    assert runs[2].config.optim.weight_decay == 2**-4


@pytest.mark.parametrize("value", [1e-5, 2.0**-20, "/a/b=c,d", "true", [0.9, 0.95], None, ""])
def test_values_reach_train_py_unchanged(value):
    assert parse_overrides([f"k={sweep.yaml_scalar(value)}"]) == {"k": value}


@pytest.mark.parametrize("grid, overrides, message", [
    ({"model.n_emb": [32]}, {}, "model.n_emb"),  # a typo, reported with its closest key
    ({"model.n_embd": [32, 48]}, {"model.head_dim": 32}, "n_embd=48"),  # an invalid value names its run
    ({"log2_lr": ["big"]}, {}, "log2_lr"),
    ({"optim.lr": [0.1]}, {"optim.lr": 0.2}, "set twice"),
    ({"log2_lr": [-7]}, {"train.out_dir": "x"}, "train.out_dir"),
    ({"model.n_embd": 32}, {}, "non-empty list"),
])
def test_a_bad_grid_is_rejected_before_anything_runs(tmp_path, launches, capsys, grid, overrides, message):
    path = write_sweep(tmp_path / "s.yaml", grid, {"model.head_dim": 16, **overrides})
    with pytest.raises(ConfigError, match=message):
        sweep.load_sweep(path, tmp_path / "out")
    assert sweep.main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert launches == [] and not (tmp_path / "out").exists()


def test_rerun_launches_only_unfinished_runs(tmp_path, launches):
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64, 96, 128, 160]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    left = {"n_embd=32": "done", "n_embd=64": "diverged", "n_embd=96": "running", "n_embd=128": "failed"}
    for name, state in left.items():  # what an interrupted sweep leaves behind
        (out / name).mkdir(parents=True)
        (out / name / "run.json").write_text(json.dumps({"status": state}))
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert launches == ["n_embd=96", "n_embd=128", "n_embd=160"]
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert len(launches) == 3
    assert list(json.loads((out / "sweep.json").read_text())["runs"]) == [f"n_embd={n}" for n in (32, 64, 96, 128, 160)]


def test_a_run_another_process_is_running_is_left_alone(tmp_path, monkeypatch, capsys):
    """A sweep started again while its first launch still runs a run (e.g. a Slurm job) must not race it."""
    def command(sweep_, run, gpus_per_run):  # a training process that finishes at once
        record = run.dir / "run.json"
        script = f"import json, pathlib; pathlib.Path({str(record)!r}).write_text(json.dumps({{'status': 'done'}}))"
        return [sys.executable, "-c", script]

    monkeypatch.setattr(sweep, "command", command)
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32})
    out, args = tmp_path / "out", [str(path), "--out", str(tmp_path / "out")]
    held = out / "n_embd=32"
    held.mkdir(parents=True)
    (held / "run.json").write_text(json.dumps({"status": "running", "step": 5}))
    with open(held / sweep.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the process running that run holds it
        assert sweep.main(args) == 0
        assert "failed 0, running elsewhere 1" in capsys.readouterr().out
        assert status(held) == {"status": "running", "step": 5} and not (held / "stdout.log").exists()
        assert status(out / "n_embd=64")["status"] == "done"
    assert sweep.main(args) == 0  # once it is no longer held, the run is launched (and resumes)
    assert status(held)["status"] == "done" and "1 to run" in capsys.readouterr().out


def test_failure_and_divergence_are_recorded_and_the_rest_run(tmp_path, tiny_corpus, monkeypatch):
    """Real train.py processes: one trains, one diverges, one crashes on its missing data directory."""
    grid = [{"data.dataset": [str(tiny_corpus)], "log2_lr": [-7, 20]},
            {"data.dataset": [str(tmp_path / "missing")], "log2_lr": [-7]}]
    overrides = {**TINY_SWEEP, "optim.warmup_iters": 0, "optim.grad_clip": 0.0, "train.max_iters": 8,
                 "train.ckpt_interval": 4}
    path = write_sweep(tmp_path / "s.yaml", grid, overrides)
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--workers", "1"]) == 1  # 1: a run failed
    runs = sweep.load_sweep(path, out).runs
    done, diverged, failed = (status(r.dir) for r in runs)
    assert done["status"] == "done" and done["final_val_loss"] < 6 and done["step"] == 8
    assert diverged["status"] == "diverged" and diverged["final_val_loss"] is None
    assert failed["status"] == "failed" and "missing does not exist" in failed["error"]
    assert failed["config"]["data"]["dataset"] == str(tmp_path / "missing")
    assert (runs[0].dir / "ckpt.pt").exists() and "step 8" in (runs[0].dir / "stdout.log").read_text()

    relaunched = []
    monkeypatch.setattr(sweep, "launch", lambda cmd, run, env: relaunched.append(cmd) or "failed")
    sweep.main([str(path), "--out", str(out)])
    (cmd,) = relaunched  # only the failed run goes again, resuming from its checkpoint if it has one
    assert cmd[1:3] == [str(ROOT / "train.py"), str(ROOT / "configs" / "default.yaml")]
    assert f"train.out_dir={runs[2].dir}" in cmd and cmd[-1] == "train.resume=auto"


def test_submitit_backend_runs_a_two_run_sweep(tmp_path, tiny_corpus):
    path = write_sweep(tmp_path / "s.yaml", {"log2_lr": [-7, -6]}, {**TINY_SWEEP, "data.dataset": str(tiny_corpus)})
    out = tmp_path / "out"
    assert sweep.main([str(path), "--out", str(out), "--backend", "local-submitit", "--time-min", "5"]) == 0
    assert [status(out / name)["status"] for name in ("log2_lr=-7", "log2_lr=-6")] == ["done", "done"]
    assert list((out / "submitit").glob("*_log.out"))


def test_workers_get_their_own_gpus_or_a_share_of_the_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setattr(sweep, "visible_gpus", lambda: [])
    assert sweep.worker_envs(3, 1) == [{"OMP_NUM_THREADS": "2"}] * 3
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["4", "5", "6", "7"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in sweep.worker_envs(2, 2)] == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="visible GPUs"):
        sweep.worker_envs(3, 2)


def test_shipped_sweeps_are_valid_and_dry_run_prints_gpu_hours(tmp_path, capsys):
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    sweeps = {f.stem: sweep.load_sweep(f, tmp_path) for f in files if f.stem != "tiny_base"}
    assert len(sweeps["width"].runs) == 2 * 6 * 6 and len(sweeps["depth"].runs) == 2 * 7 * 5
    assert {r.config.model.norm for r in sweeps["depth_noln"].runs} == {"none"}
    assert all(f"tiny_{name}" in sweeps for name in sweeps if not name.startswith("tiny_"))
    assert sweep.main([str(ROOT / "configs" / "sweeps" / "width.yaml"), "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([ln for ln in lines if ln.startswith("run ")]) == 72 and "H100-hours" in lines[-2]
    assert not list(tmp_path.iterdir())


def test_flop_count_is_6n_plus_attention():
    """The dry run's FLOPs per token: 6 x (matmul parameters, LM head included) + 12 L n T."""
    cfg = sweep.load_sweep(ROOT / "configs" / "sweeps" / "width.yaml", ROOT / "out").runs[-1].config
    n, L, T, V = cfg.model.n_embd, cfg.model.n_layer, cfg.model.block_size, cfg.model.vocab_size
    matmul_params = L * 12 * n * n + V * n
    expected = 6 * matmul_params + 12 * L * n * T
    assert sweep.train_flops(cfg) / (1221 * 240 * T) == pytest.approx(expected, rel=2e-3)


def test_the_batch_must_divide_across_each_runs_gpus(tmp_path, capsys):
    args = [str(ROOT / "configs" / "sweeps" / "width.yaml"), "--out", str(tmp_path), "--dry-run"]
    assert sweep.main([*args, "--gpus-per-run", "4"]) == 2  # 240 sequences are not 24 x 4 x k
    assert "24 x 4 ranks" in capsys.readouterr().err


def test_finished_runs_of_another_config_are_not_silently_kept(tmp_path, launches, capsys):
    path = write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32})
    out = tmp_path / "out"
    runs = sweep.load_sweep(path, out).runs
    for run in runs:
        run.dir.mkdir(parents=True)
        (run.dir / "run.json").write_text(json.dumps({"status": "done", "config": sweep.to_dict(run.config)}))
    assert sweep.main([str(path), "--out", str(out)]) == 0 and launches == []  # same config: skipped
    write_sweep(tmp_path / "s.yaml", {"model.n_embd": [32, 64]}, {"model.head_dim": 32, "optim.lr": 0.01})
    assert sweep.main([str(path), "--out", str(out)]) == 2 and launches == []
    assert "2 finished runs" in capsys.readouterr().err
