"""python -m acceptance, the GPU acceptance check: its CPU smoke mode end to end, a failing check failing the run, and
the verdicts it draws from run records (without running anything)."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from acceptance import checks
from acceptance.__main__ import main
from acceptance.checks import CHECKS
from acceptance.memory import largest_run
from acceptance.verdicts import (compare_runs, count_recompiles, judge_memory, judge_optimizers, judge_run,
                                 judge_split, judge_throughput)
from config import load_config, split_command_line, validate
from optim import registry

H100 = 989e12


def verdicts(stdout: str) -> dict:
    """{check: verdict} from the verdict table at the end of the output."""
    table = stdout[stdout.rindex("acceptance verdict"):]
    return {m[1]: m[2] for m in re.finditer(r"^(\S+)\s+(PASS|FAIL|SKIP)\s", table, re.MULTILINE)}


def test_smoke_mode_passes_every_check(tmp_path):
    """Every check on CPU (about 3 minutes on one thread): each optimizer, the split against one rank, DDP with
    activation checkpointing under compile, batched Newton-Schulz, memory against the estimate."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "acceptance", "--smoke", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert verdicts(res.stdout) == dict.fromkeys(CHECKS, "PASS"), res.stdout[-4000:]
    assert res.stdout.rstrip().endswith("ACCEPTED")
    assert (tmp_path / "train" / "run.json").exists() and (tmp_path / "ddp" / "run.json").exists()
    ddp = load_config(str(tmp_path / "ddp" / "config.yaml"))
    assert ddp.model.activation_checkpointing and ddp.train.compile and ddp.optim.ns_batched
    assert "bitwise" in res.stdout and all(f"{name} " in res.stdout for name in registry.OPTIMIZERS)


def test_a_failing_check_fails_the_run_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import optim.hybrid

    def broken_device(self):
        raise RuntimeError("injected")

    monkeypatch.setattr(checks.Acceptance, "check_device", broken_device)
    monkeypatch.setattr(optim.hybrid, "ns_dtype", lambda cfg, device: torch.float16)  # Muon off bf16
    code = main(["--smoke", "--only", "device,optimizer", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert verdicts(out) == {"device": "FAIL", "optimizer": "FAIL"}
    assert "RuntimeError: injected" in out and "Newton-Schulz in torch.float16, not bfloat16" in out
    assert "NOT ACCEPTED: 2 check(s) failed" in out


def test_the_optimizer_check_passes_unbroken(tmp_path, capsys):
    assert main(["--smoke", "--only", "optimizer", "--out", str(tmp_path)]) == 0
    assert verdicts(capsys.readouterr().out) == {"optimizer": "PASS"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answers")
def test_gpu_mode_without_cuda_fails_the_device_and_skips_what_needs_it(tmp_path, capsys):
    assert main(["--only", "device,optimizer,optimizers,split,train,ddp,memory-width", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert verdicts(out) == {"device": "FAIL", "optimizer": "SKIP", "optimizers": "SKIP", "split": "SKIP",
                             "train": "SKIP", "ddp": "SKIP", "memory-width": "SKIP"}
    assert "use --smoke" in out
    # skipped checks alone do not fail it
    assert main(["--only", "optimizer", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_gpu_runs_are_valid_configs_on_any_number_of_gpus(tmp_path, world):
    check = checks.Acceptance(checks.GPU, tmp_path, 600, 0.05)
    check.world = world
    path, overrides = split_command_line(check.train_args(tmp_path / "run"))
    cfg = load_config(path, overrides)
    validate(cfg, world)
    m, t = cfg.model, cfg.train
    assert (m.n_embd, m.n_layer, m.block_size, m.vocab_size, t.micro_batch_size) == (256, 4, 1024, 50304, 30)
    assert t.compile and t.device == "cuda" and t.dtype == "auto" and cfg.data.tokenizer == "gpt2"
    assert t.batch_size >= 240 and t.batch_size % (30 * world) == 0
    assert t.eval_interval < t.max_iters  # an evaluation between steps: what the recompile check needs


def test_memory_checks_take_the_papers_largest_shapes():
    width, _ = largest_run(checks.SWEEPS["memory-width"])
    depth, _ = largest_run(checks.SWEEPS["memory-depth"])
    shape = lambda c: (c.model.n_embd, c.model.n_layer, c.train.micro_batch_size, c.model.block_size,  # noqa: E731
                       c.model.vocab_size)
    assert shape(width.config) == (4096, 4, 15, 1024, 50304)
    assert shape(depth.config) == (256, 256, 10, 1024, 50304)
    assert width.config.scaling.parameterization == depth.config.scaling.parameterization == "mup"


def metrics(*losses, tps=1e6, mfu=0.2):
    return [{"step": 10 * (i + 1), "train_loss": v, "tokens_per_s": tps, "mfu": mfu} for i, v in enumerate(losses)]


def test_judge_run():
    done = {"status": "done", "step": 30, "final_val_loss": 6.0}
    assert judge_run(done, metrics(9.0, 7.0, 6.1), 30, 1.0)[0]
    assert not judge_run(done, metrics(9.0, 8.8, 8.5), 30, 1.0)[0]  # not falling enough
    assert not judge_run(done, metrics(9.0, math.nan, 6.0), 30, 1.0)[0]
    assert not judge_run({**done, "final_val_loss": math.inf}, metrics(9.0, 7.0, 6.1), 30, 1.0)[0]
    assert not judge_run({**done, "step": 20}, metrics(9.0, 7.0), 30, 1.0)[0]
    ok, text = judge_run({"status": "failed", "step": 0, "error": "Traceback\nRuntimeError: boom"}, [], 30, 1.0)
    assert not ok and "failed" in text and "boom" in text
    assert not judge_run({"status": "diverged", "step": 12}, metrics(9.0), 30, 1.0)[0]


def test_judge_throughput():
    flops = 0.109e9
    ok, text = judge_throughput(metrics(9, 8, 7, mfu=0.2), flops, H100, 1, 0.05, "H100")
    assert ok and "20.0% MFU" in text and "3.63M" in text  # 40% of 989 TFLOP/s at 0.109 GFLOP/token
    assert not judge_throughput(metrics(9, 8, 7, mfu=0.01), flops, H100, 1, 0.05, "H100")[0]
    assert judge_throughput(metrics(9, 8), flops, None, 1, 0.05, "CPU")[0]  # no peak: no MFU to hold it to
    assert not judge_throughput([], flops, H100, 1, 0.05, "H100")[0]


def test_compare_runs():
    one, rec = metrics(9.0, 7.0, 6.0), {"final_val_loss": 6.0}
    assert compare_runs(one, metrics(9.0, 7.01, 6.0), rec, {"final_val_loss": 6.02}, 0.05)[0]
    assert not compare_runs(one, metrics(9.0, 7.2, 6.0), rec, rec, 0.05)[0]
    assert not compare_runs(one, metrics(9.0, 7.0, math.nan), rec, rec, 0.05)[0]
    assert not compare_runs(one, metrics(9.0, 7.0), rec, rec, 0.05)[0]  # a log missing
    assert not compare_runs(one, one, rec, {"final_val_loss": 6.5}, 0.05)[0]


def test_judge_memory():
    r = {"n_embd": 4096, "n_layer": 4, "micro": 15, "seq": 1024, "estimate_gib": 25.6, "estimate_8_gib": 29.4,
         "peak_gib": 24.0, "losses": [10.9, 10.8, 10.7], "tokens_per_s": 60000.0, "mfu": 0.38, "step_s": 0.4}
    assert judge_memory(r, 71)[0]
    assert not judge_memory({**r, "peak_gib": 72.0, "estimate_gib": 70.0}, 71)[0]  # beyond an 80 GB card
    assert not judge_memory({**r, "peak_gib": 40.0}, 71)[0]  # 1.56 x the estimate the configs are sized with
    assert not judge_memory({**r, "losses": [10.9, math.nan]}, 71)[0]
    assert not judge_memory({**r, "oom": "CUDA out of memory", "card_gib": 39.5}, 71)[0]


def family(first=5.7, last=4.0, later=0, peak=1.0, estimate=1.0):
    return {"losses": [first, 5.0, last], "graphs_first_step": 1, "graphs_later": later, "peak_gib": peak,
            "estimate_gib": estimate}


def test_judge_optimizers():
    assert judge_optimizers({"adamw": family(), "sgd": family(peak=1.4)})[0]
    assert not judge_optimizers({"adamw": family(), "sgd": family(last=5.8)})[0]  # its loss did not fall
    assert not judge_optimizers({"adamw": family(last=math.nan)})[0]
    ok, text = judge_optimizers({"adamw": family(later=1)})
    assert not ok and "compiled after the first step" in text
    ok, text = judge_optimizers({"soap": family(peak=1.6)})
    assert not ok and "1.60 x the estimate" in text


def test_judge_split():
    def result(**r):
        return {"world": 2, "optimizers": {"muon": {"tensors": 36, "unequal": 0, "max_diff": 0.0, "max_update": 0.01,
                                                    **r}}}

    assert judge_split(result(), 0.0) == (True, "2 ranks, split vs every rank stepping every matrix, 3 steps: "
                                                "muon bitwise")
    assert not judge_split(result(unequal=3, max_diff=1e-6), 0.0)[0]  # on CPU: bit for bit or nothing
    assert judge_split(result(unequal=3, max_diff=5e-5), 0.01)[0]  # on GPUs: 0.5% of the update
    assert not judge_split(result(unequal=3, max_diff=5e-4), 0.01)[0]
    assert not judge_split(result(max_update=0.0), 0.01)[0]  # nothing moved: nothing compared


def test_count_recompiles():
    log = ("step 10/60 train_loss 7.1\n"
           "V1129 torch/_dynamo/guards.py:5396] [0/1] [__recompiles] Recompiling function forward in model.py:150\n"
           "V1129 torch/_dynamo/guards.py:5396] [0/1] [__recompiles]   triggered by the following guard failure(s):\n")
    assert count_recompiles(log) == 1 and count_recompiles("step 10/60 train_loss 7.1\n") == 0
