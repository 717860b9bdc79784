"""Numbers you can trust: one validation set for every launch, strict resume, final numbers that do not
depend on where a run was interrupted, and the signals clusters send."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from config import load_config
from data.loader import FixedWindows
from mup.scaling import build_model
from optim import registry
from tests.conftest import TINY_RUN, assert_same_state, losses, overrides, tree_digest
from trainer.runtime import Runtime
from trainer.step import evaluate

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(out, data, **extra) -> dict:
    train.main(overrides({**TINY_RUN, "data.dataset": data, "train.out_dir": out, **extra}))
    return json.loads((out / "run.json").read_text())


@pytest.fixture
def finished_run(tmp_path, tiny_corpus):
    run(tmp_path / "run", tiny_corpus)
    return tmp_path / "run"


# --- the validation set -------------------------------------------------------------------------------

def val_loss(cfg_values: dict, data, micro: int) -> float:
    cfg = load_config(None, {**TINY_RUN, "data.dataset": str(data), **cfg_values})
    torch.manual_seed(0)  # the same weights whatever cfg_values say about training
    model, _ = build_model(cfg)
    val = FixedWindows(data, "val", cfg.model.block_size, cfg.train.eval_windows, cfg.train.eval_seed)
    return evaluate(model, val, micro, Runtime(cfg))


def test_validation_set_ignores_micro_batch_and_train_seed(tiny_corpus):
    base = val_loss({"train.eval_windows": 24}, tiny_corpus, micro=4)
    assert val_loss({"train.eval_windows": 24}, tiny_corpus, micro=8) == pytest.approx(base, rel=1e-6)
    assert val_loss({"train.eval_windows": 24}, tiny_corpus, micro=5) == pytest.approx(base, rel=1e-6)  # ragged
    assert val_loss({"train.eval_windows": 24, "train.seed": 7}, tiny_corpus, micro=4) == pytest.approx(base, rel=1e-6)
    assert val_loss({"train.eval_windows": 24, "train.eval_seed": 1}, tiny_corpus, micro=4) != base  # its own seed


def test_ranks_share_the_windows_exactly_once(tiny_corpus):
    val = FixedWindows(tiny_corpus, "val", 16, 11, 0)
    whole = torch.cat([x for x, _ in val.shard(0, 1, 4)])
    parts = [torch.cat([x for x, _ in val.shard(r, 3, 2)]) for r in range(3)]
    assert sorted(map(tuple, whole.tolist())) == sorted(tuple(w) for p in parts for w in p.tolist())


def test_two_ranks_and_one_report_the_same_validation_loss(tmp_path, tiny_corpus):
    """Trained alike by 1 process and by 2 (micro-batch 4 each, 8 alone): the same final val loss, where
    per-rank windows once gave 2.6253 and 2.6773."""
    common = {**TINY_RUN, "data.dataset": tiny_corpus, "train.batch_size": 8, "train.max_iters": 3,
              "train.eval_windows": 24}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "train.py", *overrides({**common, "train.micro_batch_size": 8,
                                                             "train.out_dir": one})],
                   env=ENV, check=True, stdout=subprocess.DEVNULL)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *overrides({**common, "train.micro_batch_size": 4, "train.out_dir": two})],
                         env=ENV, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (json.loads((d / "run.json").read_text())["final_val_loss"] for d in (one, two))
    assert a == pytest.approx(b, abs=1e-4)


# --- strict resume ------------------------------------------------------------------------------------

def test_resume_with_other_settings_is_refused_listing_every_key(finished_run, tiny_corpus):
    before = tree_digest(finished_run)
    with pytest.raises(SystemExit) as e:
        run(finished_run, tiny_corpus, **{"train.resume": "auto", "train.max_iters": 9, "optim.lr": 0.05,
                                          "train.seed": 3})
    msg = str(e.value.code)
    assert "optim.lr: checkpoint 0.0078125 vs config 0.05" in msg
    assert "train.max_iters: checkpoint 6 vs config 9" in msg and "train.seed: checkpoint 1 vs config 3" in msg
    assert tree_digest(finished_run) == before


@pytest.mark.parametrize("change,message", [
    ({"model.n_embd": 64}, "model.n_embd: checkpoint 32 vs config 64"),
    ({"scaling.parameterization": "sp"}, "scaling.parameterization: checkpoint 'mup' vs config 'sp'"),
    ({"train.batch_size": 8}, "train.batch_size: checkpoint 4 vs config 8"),
    ({"optim.warmup_iters": 3}, "optim.warmup_iters"),
    ({"data.dataset": "elsewhere"}, "data.dataset"),
])
def test_checkpoint_of_another_trajectory_is_refused(finished_run, tiny_corpus, change, message):
    if change.get("data.dataset") == "elsewhere":
        shutil.copytree(tiny_corpus, finished_run.parent / "elsewhere")
        change = {"data.dataset": finished_run.parent / "elsewhere"}
    before = tree_digest(finished_run)
    with pytest.raises(SystemExit, match=message):
        run(finished_run, tiny_corpus, **{"train.resume": "auto", **change})
    assert tree_digest(finished_run) == before


def test_settings_that_do_not_change_training_may_differ_on_resume(tmp_path, tiny_corpus):
    straight = run(tmp_path / "a", tiny_corpus, **{"train.max_iters": 8, "train.batch_size": 8})
    run(tmp_path / "b", tiny_corpus, **{"train.max_iters": 8, "train.batch_size": 8, "train.stop_after": 4})
    resumed = run(tmp_path / "b", tiny_corpus, **{"train.max_iters": 8, "train.batch_size": 8, "train.resume": "auto",
                                                  "train.micro_batch_size": 2, "train.log_interval": 3,
                                                  "train.ckpt_interval": 5, "train.eval_interval": 7})
    assert resumed["status"] == "done"
    assert resumed["final_train_loss"] == pytest.approx(straight["final_train_loss"], rel=1e-5)


def test_corrupt_checkpoint_is_refused_and_kept(finished_run, tiny_corpus):
    (finished_run / "ckpt.pt").write_bytes(b"not a checkpoint")
    before = tree_digest(finished_run)
    with pytest.raises(SystemExit, match="ckpt.pt is unreadable"):
        run(finished_run, tiny_corpus, **{"train.resume": "auto"})
    assert tree_digest(finished_run) == before


def test_existing_checkpoint_is_not_overwritten_by_a_fresh_run(finished_run, tiny_corpus):
    before = tree_digest(finished_run)
    with pytest.raises(SystemExit, match="train.resume=auto"):
        run(finished_run, tiny_corpus)
    assert tree_digest(finished_run) == before


def test_truncated_bin(tmp_path, tiny_corpus):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    with open(data / "train.bin", "r+b") as f:
        f.truncate(1000)
    before = tree_digest(data)
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        run(tmp_path / "out", data)
    assert tree_digest(data) == before and not (tmp_path / "out").exists()


# --- final numbers independent of interruption ------------------------------------------------------------

@pytest.mark.parametrize("stop_at", [3, 5, 7])
def test_final_numbers_do_not_depend_on_where_the_run_stopped(tmp_path, tiny_corpus, stop_at):
    """Log every 4 steps of 8: a stop inside a window must not restart the window (40 steps straight gave
    2.6019 and stopped at 30 of them 2.5325)."""
    common = {"train.max_iters": 8, "train.log_interval": 4, "train.ckpt_interval": 100}
    straight = run(tmp_path / "straight", tiny_corpus, **common)
    run(tmp_path / "split", tiny_corpus, **common, **{"train.stop_after": stop_at})
    resumed = run(tmp_path / "split", tiny_corpus, **common, **{"train.resume": "auto"})
    assert resumed["final_train_loss"] == straight["final_train_loss"]
    assert resumed["final_val_loss"] == straight["final_val_loss"]


# --- every optimizer: stopped and resumed, and on two processes --------------------------------------------

EVERY = {**TINY_RUN, "train.batch_size": 8, "train.micro_batch_size": 4, "train.max_iters": 4,
         "train.ckpt_interval": 100, "optim.weight_decay": 0.1}


def every(name, data) -> dict:
    """A 4-step run of optimizer `name` with its refresh intervals at 2 (preconditioners, eigenbases, Sophia's
    Hessian estimates fall on both sides of a stop at step 3)."""
    intervals = {f"optim.{k}": 2 for k in ("precondition_interval", "hessian_interval") if registry.reads(name, k)}
    return {**EVERY, "data.dataset": data, "optim.name": name, **intervals}


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, tiny_corpus):
    """{optimizer: directory} of each optimizer's straight one-process run, made once for the tests below."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def get(name):
        if name not in made:
            run(root / name, tiny_corpus, **every(name, tiny_corpus))
            made[name] = root / name
        return made[name]

    return get


def checkpoint_of(out) -> dict:
    return torch.load(out / "ckpt.pt", weights_only=True)


def assert_same_weights_and_state(a: dict, b: dict):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert_same_state(a["optim"], b["optim"])


@pytest.mark.parametrize("name", list(registry.OPTIMIZERS))
def test_every_optimizer_resumes_bitwise(tmp_path, tiny_corpus, straight_runs, name):
    """Stopped after step 3 of 4 and resumed from its checkpoint: every logged loss, the final val loss, the
    weights and the optimizer state are the straight run's bit for bit."""
    straight = straight_runs(name)
    common = every(name, tiny_corpus)
    run(tmp_path / "r", tiny_corpus, **common, **{"train.stop_after": 3})
    resumed = run(tmp_path / "r", tiny_corpus, **common, **{"train.resume": "auto"})
    assert losses(tmp_path / "r") == losses(straight)
    assert resumed["final_val_loss"] == json.loads((straight / "run.json").read_text())["final_val_loss"]
    assert_same_weights_and_state(checkpoint_of(tmp_path / "r"), checkpoint_of(straight))


def train_on_ranks(rank, world, runs):
    """train.main on rank `rank` of `world` for each (overrides, port) of `runs`, as torchrun starts it: the
    rendezvous store is already listening on `port` (the agent's, here the test's), every rank its client."""
    torch.set_num_threads(1)
    for argv, port in runs:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
        train.main(argv)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tiny_corpus):
    """{optimizer: directory} of each optimizer's run on 2 gloo processes (micro-batch 4 each), all in one pair
    of spawned processes: Python and torch start once for every optimizer."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("two")
    # one store per run, bound to a port the kernel picks and held until the runs end: a port picked free
    # and bound later could meanwhile be taken by another test's process
    stores = [dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False) for _ in registry.OPTIMIZERS]
    runs = [(overrides({**every(name, tiny_corpus), "train.out_dir": root / name}), store.port)
            for name, store in zip(registry.OPTIMIZERS, stores)]
    mp.spawn(train_on_ranks, args=(2, runs), nprocs=2)
    return {name: root / name for name in registry.OPTIMIZERS}


@pytest.mark.parametrize("name", list(registry.OPTIMIZERS))
def test_every_optimizer_trains_the_same_on_two_processes_as_on_one(straight_runs, two_process_runs, name):
    """2 gloo processes with one micro-batch of 4 each against 1 process with two: the weights, the optimizer
    state (the matrix optimizers split across the ranks, optim/split.py; Sophia's curvature pass too) and every
    logged train loss are bit for bit equal. Exact because one process's two micro-batch gradients, each of
    the loss halved, add up to DDP's halved sum of the two ranks' gradients (halving is exact, and a sum of
    two is the same in either order); Sophia's estimate likewise sums two halves. The val loss is not: each
    rank takes every other window, so its micro-batches group other windows into their float32 mean loss
    (SOAP's: 3.2407040596 on 1 process, 3.2407039404 on 2, the same weights). With more than 2 ranks the
    all-reduce's order of summation would make the weights differ by rounding too."""
    one, two = straight_runs(name), two_process_runs[name]
    assert losses(two) == losses(one)
    assert_same_weights_and_state(checkpoint_of(two), checkpoint_of(one))
    final = [json.loads((d / "run.json").read_text())["final_val_loss"] for d in (one, two)]
    assert final[0] == pytest.approx(final[1], rel=1e-6)


# --- signals ---------------------------------------------------------------------------------------------

def start(out, data, **extra):
    slow = {"data.dataset": data, "train.max_iters": 3000, "train.ckpt_interval": 1000, "train.log_interval": 5,
            "train.eval_interval": 10000, "model.n_embd": 64, "model.block_size": 64, "train.out_dir": out, **extra}
    return subprocess.Popen([sys.executable, "train.py", *overrides({**TINY_RUN, **slow})], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, out, step):
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") * 5 >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step} (exit {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_sigterm_checkpoints_and_resume_continues(tmp_path, tiny_corpus, sig):
    out = tmp_path / "preempted"
    proc = start(out, tiny_corpus)
    wait_for_step(proc, out, 20)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in stderr
    rec = json.loads((out / "run.json").read_text())
    at = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert rec["status"] == "interrupted" and rec["step"] == at >= 20  # saved at the signal, not at step 1000
    assert f"checkpointed step {at}; continue with train.resume=auto" in stdout


def test_ctrl_c_stops_cleanly(tmp_path, tiny_corpus):
    out = tmp_path / "interrupted"
    proc = start(out, tiny_corpus, **{"train.ckpt_interval": 10})
    wait_for_step(proc, out, 25)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["step"] >= 20 and rec["step"] % 10 == 0  # the last checkpoint
    assert f"continue from step {rec['step']} with train.resume=auto" in stderr


def test_a_checkpoint_from_before_a_key_existed_resumes(tmp_path, tiny_corpus):
    """A key added since a checkpoint was written takes its default there (the behaviour the run had), so an
    upgrade alone never blocks a resume; a removed key is ignored."""
    common = {"train.max_iters": 8, "train.ckpt_interval": 100}
    straight = run(tmp_path / "straight", tiny_corpus, **common)
    run(tmp_path / "old", tiny_corpus, **common, **{"train.stop_after": 4})
    ckpt = torch.load(tmp_path / "old" / "ckpt.pt", weights_only=True)
    del ckpt["config"]["optim.ns_batched"]  # as written before the key existed
    ckpt["config"]["train.eval_iters"] = 20  # and with a key that has since gone
    torch.save(ckpt, tmp_path / "old" / "ckpt.pt")
    resumed = run(tmp_path / "old", tiny_corpus, **common, **{"train.resume": "auto"})
    assert resumed["final_train_loss"] == straight["final_train_loss"]


def test_train_says_where_it_is(tmp_path, tiny_corpus, capsys):
    """At start: out_dir, parameters, tokens and steps; each log line: step/total, tokens/s and an ETA; at the
    end: where run.json is."""
    run(tmp_path / "r", tiny_corpus, **{"train.log_interval": 2, "train.eval_interval": 100})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'r'}: ") and "M parameters, 6 steps x 64 tokens" in lines[0]
    logged = [ln for ln in lines if ln.startswith("step ") and "train_loss" in ln]
    assert [ln.split()[1] for ln in logged] == ["2/6", "4/6", "6/6"]
    assert all("tokens_per_s" in ln and " eta " in ln for ln in logged)
    assert lines[-1] == f"done: {tmp_path / 'r' / 'run.json'}"


def test_more_ranks_than_gpus_is_one_line_before_anything_starts(monkeypatch):
    from config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match=r"local rank 3 has no GPU: 2 visible .*--nproc_per_node=2 or fewer"):
        Runtime(load_config(None, {**TINY_RUN, "train.device": "cuda"}))
