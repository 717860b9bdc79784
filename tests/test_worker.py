"""Sweeps without a process per run (trainer/worker.py, experiments/processes.Workers): a worker process trains run
after run, each bit for bit as `python train.py` trains it alone; a failing run, a worker killed mid-run, a stop
signal and compiled graphs of other shapes are handled as a process per run would handle them."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

import train
from experiments import grid, launch, processes
from tests.conftest import ROOT, TINY_RUN, losses, overrides
from trainer import worker

TINY = {**TINY_RUN, "model.n_layer": 1}
ENV = {"OMP_NUM_THREADS": "1"}  # every process of these tests: the same threads, the same float sums


def make_sweep(tmp_path, grid_, extra=None):
    """A sweep of TINY runs (with `extra`) over `grid_`, whose keys it leaves to the grid."""
    path = tmp_path / "s.yaml"
    swept = {k for sub in (grid_ if isinstance(grid_, list) else [grid_]) for k in sub}
    fixed = {k: v for k, v in {**TINY, **(extra or {})}.items() if k not in swept}
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid_, "overrides": fixed}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def status(run):
    return json.loads((run.dir / "run.json").read_text())


def state(run_dir) -> dict:
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=True)
    return {"model": ckpt["model"], "optim": ckpt["optim"]}


def assert_bitwise_equal(a, b, where=""):
    """Tensors equal bit for bit, anywhere in nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def logged(run_dir) -> list[dict]:
    """metrics.jsonl without the timings."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")}
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


# --- the worker's side: one process, many calls -------------------------------------------------------------

FAKE_MAIN = """
import os, sys
sys.path.insert(0, {root!r})

def main(args):
    os.write(1, b"fd-level out\\n")
    os.write(2, b"fd-level err\\n")
    print("python out", args[0])
    if args[0] == "message":
        sys.exit("config error: a message")
    if args[0] == "code":
        sys.exit(3)
    if args[0] == "raise":
        raise ValueError("boom")

if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        from trainer.worker import serve
        serve(main)
    else:
        main(sys.argv[1:])
"""


def test_a_worker_answers_what_the_process_would_exit_with_and_logs_at_the_fd_level(tmp_path):
    """Each call's code is what `python script.py ARGS` exits with; what it writes to fds 1 and 2 (C-level output
    included) lands in its run directory's logs, and nothing of it among the answers; a call that raised
    retires the worker."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_MAIN.format(root=str(ROOT)))
    kinds = ["ok", "message", "code", "raise", "never"]
    dirs = {k: tmp_path / k for k in kinds}
    for d in dirs.values():
        d.mkdir()
    requests = "".join(worker.request([k], dirs[k]) for k in kinds)
    done = subprocess.run([sys.executable, str(script), "--worker"], input=requests, capture_output=True, text=True,
                          timeout=120)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    alone = [subprocess.run([sys.executable, str(script), k], capture_output=True).returncode for k in kinds[:4]]
    assert [a["code"] for a in answers] == alone == [0, 1, 3, 1]
    assert [a["retire"] for a in answers] == [False, False, False, True]  # "never" is not served
    assert done.returncode == 0
    for k in kinds[:4]:
        assert (dirs[k] / "stdout.log").read_text() == f"fd-level out\npython out {k}\n"
        assert (dirs[k] / "stderr.log").read_text().startswith("fd-level err\n")
    assert (dirs["message"] / "stderr.log").read_text().endswith("config error: a message\n")
    assert (dirs["raise"] / "stderr.log").read_text().endswith("ValueError: boom\n")
    assert not (dirs["never"] / "stdout.log").exists()


# --- runs in a worker ---------------------------------------------------------------------------------------

def test_runs_in_one_worker_equal_the_same_runs_launched_alone_bit_for_bit(tmp_path, tiny_corpus):
    """The first run changes what a process carries (another shape, dropout drawing from torch's RNG, another
    seed); it and the run after it in the same worker log the same losses and end with the same weights and
    optimizer state as `python train.py` gives each of them alone."""
    g = [{"model.n_embd": [48], "model.dropout": [0.1], "train.seed": [3]}, {"model.n_embd": [32]}]
    path = make_sweep(tmp_path, g, {"data.dataset": str(tiny_corpus)})
    together, alone = grid.load_sweep(path, tmp_path / "together"), grid.load_sweep(path, tmp_path / "alone")
    children = processes.Children()
    with processes.Workers(together) as execute:
        for run in together.runs:
            assert processes.launch(run, ENV, children, execute) == "done"
        (proc,) = execute._workers.values()  # one process trained both
        assert proc.poll() is None
    for run in alone.runs:
        assert processes.launch(run, ENV, children, processes.Subprocess(alone, 1)) == "done"
    for a, b in zip(together.runs, alone.runs):
        assert logged(a.dir) == logged(b.dir) and len(logged(a.dir)) > TINY["train.max_iters"]
        ra, rb = status(a), status(b)
        assert (ra["final_val_loss"], ra["final_train_loss"]) == (rb["final_val_loss"], rb["final_train_loss"])
        assert_bitwise_equal(state(a.dir), state(b.dir))
        assert f"done: {a.dir}/run.json" in (a.dir / "stdout.log").read_text()


def test_a_failed_run_does_not_stop_the_next_and_only_an_exception_retires_the_worker(tmp_path, tiny_corpus):
    """A run refused before any compute (missing data: sys.exit) leaves its worker serving; a run that raises
    mid-training (its checkpoint cannot be written) is recorded failed with its traceback and retires its
    worker, so that the next run starts in a fresh process; the runs after either train."""
    g = [{"data.dataset": [str(tmp_path / "missing"), str(tiny_corpus)], "train.seed": [1, 2, 3]}]
    path = make_sweep(tmp_path, g)
    s = grid.load_sweep(path, tmp_path / "out")
    missing, _, _, raises, after, last = s.runs
    raises.dir.mkdir(parents=True)
    (raises.dir / ".ckpt.pt.tmp").mkdir()  # where the first checkpoint is written: torch.save raises
    children, pids = processes.Children(), []
    with processes.Workers(s) as execute:
        for run in (missing, after, raises, last):
            assert processes.launch(run, ENV, children, execute) == ("done" if run in (after, last) else "failed")
            (proc,) = execute._workers.values()
            pids.append(proc.pid)
    assert pids[0] == pids[1] == pids[2] != pids[3]  # the refused run's worker went on; the raising run's did not
    assert "does not exist" in status(missing)["error"]
    assert status(raises)["error"].startswith("Traceback") and "IsADirectoryError" in status(raises)["error"]


def start_and_signal(execute, run, children, signum):
    """Launch `run` in a thread; once it has logged a step, send `signum` to the worker process training it.
    Returns what launch returned."""
    result = []
    thread = threading.Thread(target=lambda: result.append(processes.launch(run, ENV, children, execute)))
    thread.start()
    deadline = time.time() + 120
    while not ((run.dir / "metrics.jsonl").exists() and (run.dir / "metrics.jsonl").read_text()):
        assert time.time() < deadline and thread.is_alive(), "the run did not start training"
        time.sleep(0.05)
    (proc,) = execute._workers.values()
    proc.send_signal(signum)
    thread.join(120)
    return result[0], proc.pid


@pytest.mark.parametrize("signum, ends", [(signal.SIGKILL, "failed"), (signal.SIGINT, "interrupted")])
def test_a_worker_killed_or_interrupted_mid_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_corpus, signum,
                                                                                   ends):
    """SIGKILL (the OOM killer) takes the worker down: its run is failed, saying so, and the next run gets a new
    worker. Ctrl-C reaches the worker from the terminal: its run checkpoints, says interrupted, the worker
    serves the next run."""
    g = {"train.max_iters": [100_000, 3]}
    path = make_sweep(tmp_path, g, {"data.dataset": str(tiny_corpus), "train.eval_interval": 100_000})
    s = grid.load_sweep(path, tmp_path / "out")
    long, short = s.runs
    with processes.Workers(s) as execute:
        code, pid = start_and_signal(execute, long, processes.Children(), signum)
        assert code == ends
        assert processes.launch(short, ENV, processes.Children(), execute) == "done"
        assert (next(iter(execute._workers.values())).pid != pid) == (signum == signal.SIGKILL)
    record = status(long)
    if signum == signal.SIGKILL:
        assert f"died with exit code {-signal.SIGKILL}" in record["error"]
    else:
        assert record["signal"] == "SIGINT"


def test_sigterm_to_the_sweep_checkpoints_the_worker_run_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path,
                                                                                                     tiny_corpus):
    """The sweep passes SIGTERM on to the worker, whose run checkpoints at the next step and says interrupted;
    the same command then finishes it with the losses and weights of a run that was never stopped."""
    steps = 300
    extra = {"data.dataset": str(tiny_corpus), "train.max_iters": steps, "train.eval_interval": 100,
             "train.ckpt_interval": steps, "train.log_interval": 1}
    path = make_sweep(tmp_path, {"log2_lr": [-7]}, extra)
    out = tmp_path / "out"
    (run,) = grid.load_sweep(path, out).runs
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--out", str(out)]
    env = {**os.environ, **ENV, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run.dir / "metrics.jsonl").exists() and (run.dir / "metrics.jsonl").read_text()):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.communicate()
    stopped = status(run)
    assert stopped["status"] == "interrupted" and 1 <= stopped["step"] < steps
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    assert status(run)["status"] == "done"
    straight = tmp_path / "straight"
    alone = [sys.executable, "train.py", str(ROOT / "configs" / "default.yaml"),
             *overrides({**TINY, **extra, "train.out_dir": straight})]
    assert subprocess.run(alone, cwd=ROOT, env=env, capture_output=True).returncode == 0
    assert losses(run.dir) == losses(straight)
    assert status(run)["final_val_loss"] == json.loads((straight / "run.json").read_text())["final_val_loss"]
    assert_bitwise_equal(state(run.dir)["model"], state(straight)["model"])


# --- compiled graphs ----------------------------------------------------------------------------------------

def test_compiled_graphs_are_kept_for_the_same_shapes_and_dropped_for_others(tmp_path, tiny_corpus, monkeypatch):
    """A second compiled run of the same shapes compiles nothing; one with another micro-batch compiles a
    static graph, as a fresh process does (dynamo left alone would recompile it with a dynamic batch size)."""
    compile_ = torch.compile
    graphs = []

    def backend(gm, example_inputs):
        shapes = [n.meta["example_value"].shape for n in gm.graph.nodes if n.op == "placeholder"
                  and isinstance(n.meta.get("example_value"), torch.Tensor)]
        graphs.append(any(isinstance(d, torch.SymInt) for shape in shapes for d in shape))
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend=backend))
    torch._dynamo.reset()
    kept = worker.CompiledGraphs()
    for i, extra in enumerate([{}, {"optim.lr": 0.01}, {"train.micro_batch_size": 2}]):
        args = overrides({**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": tmp_path / str(i),
                          "train.compile": True, "train.max_iters": 1, **extra})
        kept.before(args)
        train.main(args)
        assert len(graphs) == (1 if i < 2 else 2)
    assert graphs[-1] is False  # static: the batch size is a constant of the graph
    torch._dynamo.reset()


# --- scheduling --------------------------------------------------------------------------------------------

def test_runs_are_launched_longest_first(tmp_path, monkeypatch):
    """By estimated compute, not by width alone: ten times the steps of a small model outlast a wider one."""
    names = []
    monkeypatch.setattr(processes, "launch", lambda run, env, children, execute: names.append(run.name) or "done")
    path = make_sweep(tmp_path, [{"model.n_embd": [32, 64], "train.max_iters": [6]},
                                 {"model.n_embd": [32], "train.max_iters": [60]}])
    assert launch.launch_sweep(launch.Options(path, tmp_path / "out", workers=1)) == 0
    assert names == ["n_embd=32,max_iters=60", "n_embd=64,max_iters=6", "n_embd=32,max_iters=6"]


def test_worker_mode_takes_no_run_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--worker", "configs/default.yaml"])
    assert e.value.code == 2 and "--worker takes no other arguments" in capsys.readouterr().err
