"""train.py: exact resume (clean stop and SIGKILL), DDP equivalence, divergence, and the embedded default."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from config import load_config
from mup.scaling import build_model
from trainer.run_record import RECORD_FIELDS
from tests.conftest import TINY_RUN, losses, overrides, run_inprocess


def params(out):
    return torch.load(out / "ckpt.pt", weights_only=True)["model"]


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [{"model.dropout": 0.0}, {"model.dropout": 0.2},
                                   {"optim.name": "sophia", "optim.hessian_interval": 3},
                                   {"optim.name": "soap", "optim.precondition_interval": 3},
                                   {"optim.name": "sso"}], ids=["plain", "dropout", "sophia", "soap", "sso"])
def test_resume_is_exact(tmp_path, tiny_corpus, extra):
    """Bitwise, whatever the optimizer keeps: Sophia's Hessian estimate and SOAP's eigenbases refresh on both
    sides of the stop at step 4."""
    run = {"train.max_iters": 8, **extra}
    straight = run_inprocess(tmp_path / "straight", tiny_corpus, **run, **{"train.ckpt_interval": 4})
    half = run_inprocess(tmp_path / "split", tiny_corpus, **run, **{"train.stop_after": 4})
    assert half["status"] == "running" and half["step"] == 4 and set(RECORD_FIELDS) <= half.keys()
    torch.manual_seed(12345)  # whatever the global generator holds, dropout masks follow (seed, step, micro-batch)
    resumed = run_inprocess(tmp_path / "split", tiny_corpus, **run, **{"train.resume": "auto"})
    assert straight["status"] == resumed["status"] == "done"
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")  # steps 5-8 included, bitwise
    assert straight["final_val_loss"] == resumed["final_val_loss"]
    assert resumed["tokens"] == 8 * 4 * 16
    assert_same_params(params(tmp_path / "straight"), params(tmp_path / "split"))


def test_resume_is_exact_after_sigkill(tmp_path, tiny_corpus):
    slow = {"data.dataset": tiny_corpus, "train.max_iters": 400, "train.ckpt_interval": 25, "model.n_embd": 64,
            "model.block_size": 64, "train.batch_size": 8, "train.micro_batch_size": 8, "train.eval_interval": 1000}
    cmd = [sys.executable, "train.py", *overrides({**TINY_RUN, **slow})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"train.out_dir={killed}"], env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "ckpt.pt").exists() and max(losses(killed), default=0) >= 60:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = torch.load(killed / "ckpt.pt", weights_only=True)["step"]
    assert 0 < at < 400 and max(losses(killed)) > at  # metrics went past the checkpoint
    subprocess.run([*cmd, f"train.out_dir={killed}", "train.resume=auto"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    straight = tmp_path / "straight"
    subprocess.run([*cmd, f"train.out_dir={straight}"], env=env, check=True, stdout=subprocess.DEVNULL)
    assert losses(killed) == losses(straight)
    assert sorted(losses(killed)) == list(range(1, 401))  # no duplicated records from the killed attempt
    assert_same_params(params(killed), params(straight))


@pytest.mark.parametrize("extra", [{"model.dropout": 0.0}, {"model.dropout": 0.2},
                                   {"optim.name": "sophia", "optim.hessian_interval": 1},
                                   {"optim.name": "shampoo"}], ids=["plain", "dropout", "sophia", "shampoo"])
def test_ddp_two_processes_match_one(tmp_path, tiny_corpus, extra):
    """Same global batch, same model; with dropout too, since each micro-batch's masks follow its global index;
    with Sophia, whose curvature pass every rank makes alike on the global first micro-batch; with Shampoo,
    whose preconditioners see the all-reduced gradients."""
    common = {**TINY_RUN, "data.dataset": tiny_corpus, "train.batch_size": 8, "train.micro_batch_size": 4,
              "train.max_iters": 3, **extra}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "train.py", *overrides({**common, "train.out_dir": one})], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *overrides({**common, "train.out_dir": two})], env=env, capture_output=True,
                         text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]  # also at exit: every rank must end cleanly
    a, b = params(one), params(two)
    torch.manual_seed(1)  # train.seed: the weights both runs started from
    init = build_model(load_config(None, {**common, "data.dataset": str(tiny_corpus)}))[0].state_dict()
    assert not torch.equal(a["blocks.0.attn.q.weight"], init["blocks.0.attn.q.weight"])  # and they trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() and all(abs(l1[s] - l2[s]) < 1e-4 for s in l1)
    assert json.loads((two / "run.json").read_text())["tokens"] == 3 * 8 * 16


def test_divergence_is_recorded_not_raised(tmp_path, tiny_corpus):
    rec = run_inprocess(tmp_path / "nan", tiny_corpus, **{"optim.lr": 2.0**20, "optim.warmup_iters": 0,
                                                         "optim.grad_clip": 0.0, "train.max_iters": 30,
                                                         "train.ckpt_interval": 1000, "train.log_interval": 5})
    assert rec["status"] == "diverged" and rec["final_train_loss"] is None and 0 < rec["diverged_step"] <= 30
    assert not (tmp_path / "nan" / "ckpt.pt").exists()  # nothing non-finite was saved


def test_failure_is_recorded(tmp_path, tiny_corpus, monkeypatch):
    evaluate, calls = train.evaluate, []

    def broken(*a, **k):  # the final evaluation fails, after step 3's went through and steps 3, 6 checkpointed
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return evaluate(*a, **k)

    monkeypatch.setattr(train, "evaluate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_inprocess(tmp_path / "f", tiny_corpus)
    rec = json.loads((tmp_path / "f" / "run.json").read_text())
    assert rec["status"] == "failed" and "boom" in rec["error"]
    assert set(RECORD_FIELDS) <= rec.keys() and rec["step"] == 6  # the resume point


def test_killed_between_last_checkpoint_and_record_resumes_to_a_full_record(tmp_path, tiny_corpus):
    first = run_inprocess(tmp_path / "k", tiny_corpus)
    (tmp_path / "k" / "run.json").write_text(json.dumps({"status": "running", "step": 6}))  # as a kill leaves it
    with (tmp_path / "k" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "train_lo')  # and a line torn in mid-write
    again = run_inprocess(tmp_path / "k", tiny_corpus, **{"train.resume": "auto"})
    assert again["status"] == "done"
    assert again["final_train_loss"] == first["final_train_loss"] == losses(tmp_path / "k")[6]
    assert again["final_val_loss"] == first["final_val_loss"]


def test_print_scaling_needs_no_device():
    res = subprocess.run([sys.executable, "train.py", "configs/owt_base.yaml", "--print-scaling", "model.n_embd=512"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("mup, muon_kimi: n=512 L=4") and "blocks.3.mlp.proj.weight" in res.stdout


def test_done_run_is_not_rerun(tmp_path, tiny_corpus, capsys):
    first = run_inprocess(tmp_path / "d", tiny_corpus)
    again = run_inprocess(tmp_path / "d", tiny_corpus, **{"train.resume": "auto"})
    assert again == first and "already done" in capsys.readouterr().out


def test_embedded_default_learns(tmp_path):
    """`python train.py` as README runs it, shortened: the loss falls well below its start."""
    train.main([f"train.out_dir={tmp_path}", "train.max_iters=150", "train.eval_interval=1000"])
    rec = json.loads((tmp_path / "run.json").read_text())
    first = losses(tmp_path)[min(losses(tmp_path))]
    assert rec["status"] == "done" and rec["config"]["data"]["dataset"] == "stdlib"
    # measured: first logged window 4.2 (ln 256 = 5.55 at init), val 2.6 after 150 steps
    assert first > 3.5 and rec["final_val_loss"] < 3.0


def test_spectral_diagnostics_in_metrics(tmp_path, tiny_corpus):
    run_inprocess(tmp_path / "s", tiny_corpus, **{"log.spectral_interval": 2, "train.log_interval": 3})
    records = [json.loads(ln) for ln in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    with_spec = [r["step"] for r in records if any(k.startswith("spec/") for k in r)]
    assert with_spec == [2, 4, 6]
    r = next(r for r in records if r["step"] == 2)
    assert r["spec/blocks.1.mlp/alpha_dW2_W1"] > 0 and r["spec/blocks.0.attn.q/dW"] > 0


def gradients_under_ddp(rank, world, data, out):
    """Three steps of 2 micro-batches under DDP; records the storage each gradient is accumulated into."""
    import os

    from torch.nn.parallel import DistributedDataParallel

    from data.loader import TokenBatches
    from optim.hybrid import build_optimizer
    from trainer.runtime import Runtime
    from trainer.step import train_step

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    cfg = load_config(None, {**TINY_RUN, "data.dataset": str(data), "train.batch_size": 8, "train.micro_batch_size": 2})
    rt = Runtime(cfg)
    torch.manual_seed(1)
    raw, table = build_model(cfg)
    opt = build_optimizer(cfg, raw, table)
    model = DistributedDataParallel(raw, gradient_as_bucket_view=True)
    storages = {n: [] for n, _ in raw.named_parameters()}
    for n, p in raw.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, n=n: storages[n].append(p.grad.untyped_storage().data_ptr()))
    batches = TokenBatches(data, "train", cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)
    for step in range(3):
        train_step(model, opt, batches, step, cfg, rt, raw)
    torch.save(storages, out / f"storages{rank}.pt")


def test_ddp_gradients_stay_bucket_views_on_every_micro_step(tmp_path, tiny_corpus):
    """No second copy of the gradients: after the first step every micro-step (no_sync ones included) accumulates
    into the same few storages, DDP's buckets; with zero_grad(set_to_none=True) each no_sync micro-step made fresh
    gradients next to the buckets."""
    from bench.common import gloo

    gloo(gradients_under_ddp, 2, tiny_corpus, tmp_path)
    for rank in range(2):
        storages = torch.load(tmp_path / f"storages{rank}.pt")
        assert all(len(s) == 6 for s in storages.values())  # 3 steps x 2 micro-batches
        assert all(len(set(s[2:])) == 1 for s in storages.values())  # after the first step: one storage each
        assert len({s[-1] for s in storages.values()}) < len(storages) / 4  # shared: a few buckets


def threads_around_a_group(rank, world, init, out):
    """This process's threads before a gloo group, while it and an optimizer exist, and after its destroy."""
    import torch.distributed as dist

    from trainer.runtime import init_process_group

    def threads():
        return len(os.listdir("/proc/self/task"))  # C++ threads too, which threading does not list

    torch.set_num_threads(1)
    before = threads()
    init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])  # torch.optim imports dynamo
    dist.all_reduce(torch.ones(2))
    during = threads()
    dist.destroy_process_group()
    (out / f"threads{rank}.json").write_text(json.dumps([before, during, threads()]))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_destroying_the_group_ends_gloos_threads(tmp_path):
    """After destroy_process_group no gloo worker thread is left to run into interpreter shutdown, where freeing
    a collective's tensor aborts the process that has finished its run (trainer/runtime.py's
    init_process_group)."""
    import torch.multiprocessing as mp

    mp.spawn(threads_around_a_group, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2)
    for rank in range(2):
        before, during, after = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert during > before and after == before
