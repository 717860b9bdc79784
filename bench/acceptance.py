"""python -m bench.acceptance: the GPU acceptance check, the first command to run on a machine with GPUs.

One command, bounded by --budget (10 minutes; expected about 5 on one H100 from the FLOP counts and compile
times, not yet timed on one), that exercises what training on GPUs uses and ends with a verdict table: PASS,
FAIL or SKIP for each check, with what it found. The exit code is 0 only if no check failed (a skipped check
does not fail it). Each step says what it runs; the runs' logs stay in --out.

  device        CUDA is visible: every GPU's name, memory, bf16 support and bf16 peak (perf.PEAK_BF16); a bf16
                autocast matmul on each agrees with float32; NCCL is available
  data          the offline corpus in GPT-2 tokens (python -m data.prepare stdlib --tokenizer gpt2): tiktoken
                and the GPT-2 ranks shipped in data/gpt2.tiktoken, no network
  optimizer     the base model and its optimizer as train.py builds them on the GPU: AdamW is fused, Muon's
                Newton-Schulz runs in bfloat16; one training step under bf16 autocast (trainer.step.train_step)
                is finite and moves every parameter; bf16 Newton-Schulz agrees with float32 on a gradient
  train         python train.py configs/owt_base.yaml (the paper's base shape n=256, L=4, seq 1024, its
                micro-batch 30, torch.compile, bf16 autocast) for 60 steps of 8 x 30 sequences (245,760
                tokens; 8 x 30 over the GPUs there are) on the stdlib corpus: status done, finite loss, falling
                by at least 1 nat, finite validation loss
  throughput    that run's tokens/s and MFU (its metrics.jsonl; the compiling first step is left out) against the
                FLOP count (perf.train_flops_per_token): 40% MFU would be 0.4 x peak / FLOPs per token; FAIL
                below --min-mfu (5%)
  ddp           the same run under torchrun over every visible GPU (NCCL): done on every rank, and the same
                losses as the one-GPU run (within 0.05); tokens/s and scaling. SKIP with one GPU
  recompiles    those runs compiled their model once, evaluations in between included: no "Recompiling
                function" under TORCH_LOGS=recompiles
  memory-width  peak GPU memory (torch.cuda.max_memory_allocated) of training steps (train_step: forward,
  memory-depth  backward, clip, optimizer step; eager, bf16 autocast) at the largest shapes of
                configs/sweeps/width.yaml (n=4096, L=4, micro-batch 15) and depth.yaml (n=256, L=256,
                micro-batch 10), seq 1024, vocab 50304, on one GPU, against experiments.cost.peak_memory_gib:
                FAIL on out-of-memory, above experiments.cost.CARD_GIB (71 GiB, an 80 GB card less 10%) or above
                1.5 x the estimate the micro-batches are sized with; also forward+backward tokens/s and MFU there

--smoke runs the same checks on CPU, where the CPU can: device cpu (bf16 autocast matmul, gloo), the byte
tokenizer's corpus, a tiny model (n=64, L=2, seq 64, 12 steps) with bf16 autocast, torch.compile (inductor
on CPU) and bfloat16 Newton-Schulz, DDP as torchrun with 2 gloo processes, and the memory steps at tiny shapes
derived from the same sweep files (peak bytes from torch.profiler). tests/test_acceptance.py runs it.

    python -m bench.acceptance                      # on a GPU machine: all checks, at most 10 minutes
    python -m bench.acceptance --smoke              # on CPU: the same code at tiny shapes, 1-2 minutes
    python -m bench.acceptance --only device,train  # some checks (throughput and recompiles read train's run)
"""

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import perf
from bench.common import print_table, record
from config import load_config

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = "configs/owt_base.yaml"
SWEEPS = {"memory-width": "configs/sweeps/width.yaml", "memory-depth": "configs/sweeps/depth.yaml"}
CHECKS = ("device", "data", "optimizer", "train", "throughput", "ddp", "recompiles", "memory-width", "memory-depth")
EXPECTED_MFU = 0.4
RECOMPILE = "Recompiling function"  # what TORCH_LOGS=recompiles prints for each recompilation


@dataclass
class Mode:
    """What the checks run with: on GPUs, or the CPU smoke mode."""

    smoke: bool
    device: str
    tokenizer: str
    run: dict  # train.py overrides of the train and ddp runs over configs/owt_base.yaml (batch and out_dir aside)
    micro: int  # their micro-batch; the global batch is micro x world x ceil(8 / world)
    min_drop: float  # nats the train loss must fall from the first log window to the last
    loss_tol: float  # largest |difference| of a logged loss between the one-process and the DDP run
    timeouts: dict  # seconds, per check that runs a subprocess
    memory: dict = field(default_factory=dict)  # check -> overrides of the sweep's largest run (smoke: tiny)


GPU = Mode(
    smoke=False, device="cuda", tokenizer="gpt2", micro=30, min_drop=1.0, loss_tol=0.05,
    run={"data.dataset": "stdlib", "data.tokenizer": "gpt2", "train.max_iters": 60, "optim.warmup_iters": 10,
         "train.log_interval": 10, "train.eval_interval": 20, "train.eval_windows": 48, "train.ckpt_interval": 1000,
         "train.device": "cuda", "train.dtype": "auto", "train.compile": True},
    timeouts={"data": 180, "train": 300, "ddp": 300, "memory": 180})

SMOKE_MODEL = {"model.block_size": 64, "model.vocab_size": 256, "data.tokenizer": "bytes", "train.device": "cpu",
               "train.dtype": "bfloat16", "optim.ns_dtype": "bfloat16", "train.micro_batch_size": 4}
SMOKE = Mode(
    smoke=True, device="cpu", tokenizer="bytes", micro=4, min_drop=0.5, loss_tol=0.05,
    run={**SMOKE_MODEL, "data.dataset": "stdlib", "model.n_embd": 64, "model.head_dim": 16, "model.n_layer": 2,
         "train.max_iters": 12, "optim.warmup_iters": 3, "train.log_interval": 3, "train.eval_interval": 6,
         "train.eval_windows": 16, "train.ckpt_interval": 1000, "train.compile": True},
    timeouts={"data": 120, "train": 240, "ddp": 240, "memory": 120},
    memory={"memory-width": {**SMOKE_MODEL, "model.n_embd": 128, "model.head_dim": 32, "model.n_layer": 4},
            "memory-depth": {**SMOKE_MODEL, "model.n_embd": 32, "model.head_dim": 16, "model.n_layer": 16}})


class Skip(Exception):
    """Raised by a check that does not apply here; its message says why."""


@dataclass
class Result:
    check: str
    verdict: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str


# ---------------------------------------------------------------------------------------------------------------
# What the checks conclude from what the runs left: plain functions of records (tested without running anything)


def train_losses(metrics: list[dict]) -> dict:
    """{step: train_loss} of a run's metrics.jsonl records."""
    return {r["step"]: r["train_loss"] for r in metrics if "train_loss" in r}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def judge_run(rec: dict, metrics: list[dict], steps: int, min_drop: float) -> tuple[bool, str]:
    """A short training run went right: done at `steps`, finite losses, the train loss fell by `min_drop`."""
    status = rec.get("status")
    if status != "done":
        error = (rec.get("error") or "").strip().splitlines()
        return False, f"status {status!r} at step {rec.get('step')}" + (f": {error[-1]}" if error else "")
    losses = train_losses(metrics)
    if rec.get("step") != steps or not losses:
        return False, f"step {rec.get('step')} of {steps}, {len(losses)} logged train losses"
    if not all(finite(v) for v in losses.values()) or not finite(rec.get("final_val_loss")):
        return False, f"non-finite loss: train {list(losses.values())}, val {rec.get('final_val_loss')}"
    first, last = losses[min(losses)], losses[max(losses)]
    text = f"{steps} steps, train loss {first:.3f} -> {last:.3f}, val {rec['final_val_loss']:.3f}"
    if first - last < min_drop:
        return False, f"{text}: fell {first - last:.3f}, less than {min_drop}"
    return True, text


def window_rates(metrics: list[dict], key: str) -> list[float]:
    """`key` (tokens_per_s, mfu) of every log window but the first (warm-up), or the first if it is alone."""
    values = [r[key] for r in metrics if key in r]
    return values[1:] if len(values) > 1 else values


def judge_throughput(metrics: list[dict], flops_per_token: float, peak: float | None, world: int,
                     min_mfu: float, where: str) -> tuple[bool, str]:
    """Median tokens/s and MFU of the run's log windows against 40% MFU of `peak` (per GPU, `world` GPUs)."""
    rates = window_rates(metrics, "tokens_per_s")
    if not rates:
        return False, "no tokens/s in metrics.jsonl"
    tps = statistics.median(rates)
    text = f"{tps / 1e6:.3g}M tokens/s"
    if peak is None:
        return tps > 0, f"{text} on {where}; MFU n/a ({where} has no bf16 peak in perf.PEAK_BF16)"
    mfus = window_rates(metrics, "mfu")
    mfu = statistics.median(mfus) if mfus else tps * flops_per_token / (peak * world)
    expected = EXPECTED_MFU * peak * world / flops_per_token
    text += (f" = {mfu:.1%} MFU of {peak / 1e12:.0f} TFLOP/s x {world}; {EXPECTED_MFU:.0%} MFU would be "
             f"{expected / 1e6:.3g}M ({flops_per_token / 1e9:.3g} GFLOP/token)")
    if mfu < min_mfu:
        return False, f"{text}: below {min_mfu:.0%}"
    return True, text


def compare_runs(one: list[dict], many: list[dict], rec_one: dict, rec_many: dict, tol: float) -> tuple[bool, str]:
    """The DDP run logged the same steps as the one-process run, and its losses are within `tol` of them."""
    a, b = train_losses(one), train_losses(many)
    if not a or a.keys() != b.keys():
        return False, f"logged steps differ: {sorted(a)} vs {sorted(b)}"
    diffs = [abs(a[s] - b[s]) for s in a]
    diff = max(diffs) if all(map(math.isfinite, diffs)) else math.nan  # max() would pass a NaN over
    val = abs(rec_one["final_val_loss"] - rec_many["final_val_loss"])
    text = f"train loss max |diff| {diff:.3g} over {len(a)} logs, val |diff| {val:.3g}"
    if not diff <= tol or not val <= tol:  # also false for NaN
        return False, f"{text}: above {tol}"
    return True, text


def judge_memory(r: dict, limit_gib: float, ratio_limit: float = 1.5) -> tuple[bool, str]:
    """A memory worker's result: no OOM, finite losses, peak within `limit_gib` and `ratio_limit` x the estimate."""
    est, est8 = r["estimate_gib"], r["estimate_8_gib"]
    shape = f"n={r['n_embd']} L={r['n_layer']} micro {r['micro']} x {r['seq']}"
    if r.get("oom"):
        return False, f"{shape}: out of memory on a {r['card_gib']:.0f} GiB GPU (estimate {est:.1f} GiB): {r['oom']}"
    if not all(finite(v) for v in r["losses"]):
        return False, f"{shape}: non-finite loss {r['losses']}"
    unit, scale = ("GiB", 1) if r["peak_gib"] >= 0.1 else ("MiB", 1024)
    text = (f"{shape}: peak {r['peak_gib'] * scale:.3g} {unit}, estimate {est * scale:.3g} {unit} "
            f"({est8 * scale:.3g} on each of 8 ranks); fwd+bwd {r['tokens_per_s']:,.0f} tokens/s"
            + (f" = {r['mfu']:.0%} MFU" if r.get("mfu") is not None else "") + f", step {r['step_s']:.2f} s")
    if r["peak_gib"] > limit_gib:
        return False, f"{text}: above {limit_gib} GiB"
    if r["peak_gib"] > ratio_limit * est:
        return False, f"{text}: {r['peak_gib'] / est:.2f} x the estimate the micro-batches are sized with"
    return True, text


def nccl_version() -> str:
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def count_recompiles(text: str) -> int:
    return sum(RECOMPILE in line for line in text.splitlines())


# ---------------------------------------------------------------------------------------------------------------
# Subprocesses: train.py, torchrun, data.prepare and the memory worker, each bounded in time, logged to --out


def run_command(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, bool]:
    """Run `cmd` from the repository root, echoing its output (indented) and keeping it in `log`; killed (its
    whole process group: torchrun's workers too) after `timeout` s. Returns (exit code, output, timed out)."""
    print(f"  $ {shlex.join(cmd)}   (at most {timeout:.0f} s; log {log})", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = threading.Event()

    def kill():
        killed.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            print(f"    {line}", end="", flush=True)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
    text = "".join(lines)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return proc.returncode, text, killed.is_set()


def tail(text: str, n: int = 1) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def memory_estimate(cfg, world: int) -> tuple[float, float]:
    """(the estimated peak GiB of one of `world` ranks training `cfg` at its micro-batch, the GiB every GPU run is
    held to): experiments.cost.peak_memory_gib (what the configs' micro-batches are chosen with) and CARD_GIB."""
    from experiments.cost import CARD_GIB, peak_memory_gib

    return peak_memory_gib(cfg, world=world)["total"], CARD_GIB


# ---------------------------------------------------------------------------------------------------------------
# The memory worker: python -m bench.acceptance --worker CONFIG OVERRIDES_JSON (its own process: a clean peak)


class RandomBatches:
    """TokenBatches' interface over random tokens: a step's speed and memory do not depend on what they are."""

    def __init__(self, vocab: int, seq: int):
        self.vocab, self.seq = vocab, seq

    def get(self, step, index=0, size=1):
        g = torch.Generator().manual_seed(step * 1009 + index)
        x, y = torch.randint(0, self.vocab, (2, size, self.seq), generator=g)
        return x, y


def memory_worker(config: str, overrides: dict) -> dict:
    """Peak memory of two training steps (trainer.step.train_step at the config's micro-batch, no accumulation,
    eager) of `config` + `overrides`, the weights included; then one timed forward+backward and one timed step."""
    from bench.memory import peak_bytes
    from model import GPT
    from mup.scaling import build_model, multipliers
    from optim.hybrid import build_optimizer
    from trainer.runtime import Runtime
    from trainer.step import train_step

    cfg = load_config(config, overrides)
    rt = Runtime(cfg)
    rt.start()
    cuda = rt.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    m, micro = cfg.model, cfg.train.micro_batch_size
    (estimate, limit), (estimate_8, _) = memory_estimate(cfg, 1), memory_estimate(cfg, 8)
    out = {"n_embd": m.n_embd, "n_layer": m.n_layer, "micro": micro, "seq": m.block_size, "limit_gib": limit,
           "estimate_gib": estimate, "estimate_8_gib": estimate_8}
    torch.manual_seed(cfg.train.seed)
    model, table = build_model(cfg, rt.device)
    opt = build_optimizer(cfg, model, table)
    batches = RandomBatches(m.vocab_size, m.block_size)
    losses = []

    def steps():
        for s in range(2):  # the first creates the optimizer state
            losses.append(train_step(model, opt, batches, s, cfg, rt, model).item())

    if cuda:
        out["card_gib"] = torch.cuda.get_device_properties(rt.device).total_memory / 2**30
        torch.cuda.reset_peak_memory_stats()  # the peak starts from what is allocated now: the weights
        try:
            steps()
        except torch.cuda.OutOfMemoryError as e:
            return {**out, "oom": str(e).splitlines()[0][:200], "losses": losses}
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:  # torch.profiler's peak counts from the call's start: add what is alive before it
        alive = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        out["peak_gib"] = (alive + peak_bytes(steps)) / 2**30
    out["losses"] = losses

    x, y = rt.to_device(batches.get(2, 0, micro))
    sync()
    t0 = time.perf_counter()
    with rt.autocast:
        loss = model(x, y)[1]
    loss.backward()
    sync()
    fwd_bwd = time.perf_counter() - t0
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    losses.append(train_step(model, opt, batches, 3, cfg, rt, model).item())
    sync()
    out["step_s"] = time.perf_counter() - t0
    with torch.device("meta"):  # not a copy of the model: that would take its weights' memory again
        flops = perf.train_flops_per_token(GPT(m, **multipliers(cfg)))
    peak = perf.peak_flops(rt.device)
    out["tokens_per_s"] = micro * m.block_size / fwd_bwd
    out["mfu"] = out["tokens_per_s"] * flops / peak if peak else None
    return out


def largest_run(sweep: str):
    """The sweep's run with the largest memory estimate (μP at the base LR among equals): its base and overrides."""
    from experiments.grid import load_sweep

    s = load_sweep(ROOT / sweep, Path(tempfile.gettempdir()) / "acceptance-sweep")
    base_lr = load_config(s.base).optim.lr
    return max(s.runs, key=lambda r: (round(memory_estimate(r.config, 1)[0], 6),
                                      r.config.scaling.parameterization == "mup",
                                      -abs(math.log2(r.config.optim.lr / base_lr)))), s.base


# ---------------------------------------------------------------------------------------------------------------
# The checks


class Acceptance:
    def __init__(self, mode: Mode, out: Path, budget: float, min_mfu: float):
        self.mode, self.out, self.min_mfu = mode, out, min_mfu
        self.deadline = time.time() + budget
        self.gpus = torch.cuda.device_count() if mode.device == "cuda" and torch.cuda.is_available() else 0
        self.world = 2 if mode.smoke else self.gpus  # processes of the DDP run
        self.runs = {}  # "train", "ddp" -> what the run left: rc, output, record, metrics

    # -- helpers

    def timeout(self, check: str) -> float:
        left = self.deadline - time.time()
        if left < 10:
            raise TimeoutError("not run: the time budget (--budget) is spent")
        return min(self.mode.timeouts[check], left)

    def batch(self) -> int:
        world = max(self.world, 1)
        return self.mode.micro * world * -(-8 // world)

    def train_args(self, out_dir: Path) -> list[str]:
        run = {**self.mode.run, "train.micro_batch_size": self.mode.micro, "train.batch_size": self.batch(),
               "train.out_dir": str(out_dir)}
        return [BASE_CONFIG, *(f"{k}={v}" for k, v in run.items())]

    def train_run(self, name: str, launcher: list[str]) -> dict:
        out_dir = self.out / name
        shutil.rmtree(out_dir, ignore_errors=True)  # this tool's own run directory from a previous time
        trace = os.environ.get("TORCH_LOGS")
        env = {"TORCH_LOGS": f"{trace},recompiles" if trace else "recompiles", "PYTHONUNBUFFERED": "1"}
        rc, text, timed_out = run_command([*launcher, "train.py", *self.train_args(out_dir)], self.out / f"{name}.log",
                                          self.timeout(name), env)
        run = {"rc": rc, "text": text, "timed_out": timed_out, "record": read_json(out_dir / "run.json"),
               "metrics": [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
               if (out_dir / "metrics.jsonl").exists() else []}
        self.runs[name] = run
        return run

    def failed_run(self, run: dict) -> str | None:
        if run["timed_out"]:
            return f"timed out: {tail(run['text'])}"
        if run["rc"] != 0:
            return f"exit code {run['rc']}: {tail(run['text'], 2)}"
        return None

    def flops_per_token(self) -> float:
        from model import GPT
        from mup.scaling import multipliers

        cfg = load_config(BASE_CONFIG, {**self.mode.run, "train.micro_batch_size": self.mode.micro,
                                        "train.batch_size": self.batch()})
        with torch.device("meta"):
            return perf.train_flops_per_token(GPT(cfg.model, **multipliers(cfg)))

    # -- checks: each returns (passed, detail) or raises Skip

    def check_device(self):
        if self.mode.smoke:
            a, b = torch.randn(256, 256), torch.randn(256, 256)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                c = a @ b
            err = ((c.float() - a @ b).norm() / (a @ b).norm()).item()
            gloo = torch.distributed.is_available() and torch.distributed.is_gloo_available()
            text = (f"cpu (smoke mode), torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 autocast "
                    f"matmul {c.dtype} rel. error {err:.2g}; gloo {'available' if gloo else 'MISSING'}")
            return c.dtype == torch.bfloat16 and err < 0.02 and gloo, text
        if not torch.cuda.is_available():
            return False, (f"no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
                           f"install torch's CUDA build, check CUDA_VISIBLE_DEVICES; on CPU use --smoke")
        problems, names = [], []
        for i in range(self.gpus):
            p = torch.cuda.get_device_properties(i)
            peak = perf.peak_for_name(p.name)
            names.append(f"{p.name} (sm{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                         + (f"{peak / 1e12:.0f} TFLOP/s bf16)" if peak else "bf16 peak unknown: no MFU)"))
            with torch.cuda.device(i):
                if not torch.cuda.is_bf16_supported(including_emulation=False):
                    problems.append(f"GPU {i} has no bfloat16 (train.py needs train.dtype=float32 there)")
                    continue
                a, b = torch.randn(1024, 1024, device=i), torch.randn(1024, 1024, device=i)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    c = a @ b
                ref = a.double() @ b.double()
                err = ((c.double() - ref).norm() / ref.norm()).item()
            if not (c.dtype == torch.bfloat16 and err < 0.02):
                problems.append(f"GPU {i}: bf16 autocast matmul gave {c.dtype}, rel. error {err:.2g}")
        del a, b, c, ref
        torch.cuda.empty_cache()
        nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
        if not nccl:
            problems.append("NCCL not available")
        distinct = sorted(set(names), key=names.index)
        text = (f"{self.gpus} x " + "; ".join(distinct) + f"; CUDA {torch.version.cuda}, torch {torch.__version__}"
                + (f", NCCL {nccl_version()}" if nccl else ""))
        return not problems, text + ("; " + "; ".join(problems) if problems else "")

    def check_data(self):
        from data.format import default_dir
        from data.loader import open_dataset

        tok = self.mode.tokenizer
        rc, text, timed_out = run_command([sys.executable, "-m", "data.prepare", "stdlib", "--tokenizer", tok],
                                          self.out / "data.log", self.timeout("data"))
        if timed_out or rc != 0:
            return False, f"data.prepare {'timed out' if timed_out else f'exit code {rc}'}: {tail(text)}"
        path = default_dir("stdlib", tok)
        meta = open_dataset(path, load_config(BASE_CONFIG, self.mode.run).model.block_size)
        return meta["tokenizer"] == tok, (f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                                          f"{meta['train_tokens'] / 1e6:.3g}M train, {meta['val_tokens'] / 1e6:.3g}M "
                                          f"val tokens, {meta['tokenizer']} (vocab {meta['vocab_size']:,})")

    def check_optimizer(self):
        from optim.muon import Muon, newton_schulz
        from mup.scaling import build_model
        from optim.hybrid import build_optimizer
        from trainer.runtime import Runtime
        from trainer.step import train_step

        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        micro = 2
        cfg = load_config(BASE_CONFIG, {**self.mode.run, "train.micro_batch_size": micro, "train.batch_size": micro})
        rt = Runtime(cfg)
        rt.start()
        torch.manual_seed(0)
        model, table = build_model(cfg, rt.device)
        opt = build_optimizer(cfg, model, table)
        problems, found = [], []
        adamw = [o for o in opt.optimizers.values() if isinstance(o, torch.optim.AdamW)]
        muon = [o for o in opt.optimizers.values() if isinstance(o, Muon)]
        want_fused = rt.device.type == "cuda"
        for o in adamw:
            fused = bool(o.defaults.get("fused"))
            found.append(f"AdamW fused={fused}")
            if fused != want_fused:
                problems.append(f"AdamW fused={fused} on {rt.device.type}")
        for o in muon:
            found.append(f"Muon ns_dtype={str(o.ns_dtype).removeprefix('torch.')}")
            if o.ns_dtype != torch.bfloat16:
                problems.append(f"Muon's Newton-Schulz in {o.ns_dtype}, not bfloat16")
        if not adamw or not muon:
            problems.append(f"expected AdamW and Muon, got {sorted(opt.optimizers)}")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = train_step(model, opt, RandomBatches(cfg.model.vocab_size, cfg.model.block_size), 0, cfg, rt,
                          model).item()
        unmoved = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
        if not finite(loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
            problems.append(f"non-finite step (loss {loss})")
        if unmoved:
            problems.append(f"step left {len(unmoved)} tensors unchanged, e.g. {unmoved[0]}")
        # bf16 Newton-Schulz against float32 on a real momentum buffer (Muon's first: a q matrix)
        group = muon[0].param_groups[0] if muon else None
        if group is not None:
            g = muon[0].state[group["params"][0]]["momentum_buffer"]
            args = (group["ns_coefficients"], group["ns_steps"], group["eps"])
            ref = newton_schulz(g, *args, torch.float32)
            err = ((newton_schulz(g, *args, torch.bfloat16).float() - ref).norm() / ref.norm()).item()
            found.append(f"bf16 vs fp32 Newton-Schulz rel. error {err:.2g} on {tuple(g.shape)}")
            if not err < 0.05:
                problems.append("bf16 Newton-Schulz differs from float32")
        del model, opt, before
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()  # leave the GPU to the runs that follow
        text = (f"{cfg.model.n_embd}x{cfg.model.n_layer} on {rt.device.type}: " + ", ".join(found)
                + f"; one step: loss {loss:.3f}" + ("" if unmoved else ", every tensor moved"))
        return not problems, text if not problems else f"{text}; " + "; ".join(problems)

    def check_train(self):
        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        run = self.train_run("train", [sys.executable])
        bad = self.failed_run(run)
        if bad:
            return False, bad
        ok, text = judge_run(run["record"], run["metrics"], self.mode.run["train.max_iters"], self.mode.min_drop)
        first = next((ln for ln in run["text"].splitlines() if ln.startswith("first step")), None)
        compiled = f"; compile {first.split(':')[-1].strip()}" if first else ""
        seq = load_config(BASE_CONFIG, self.mode.run).model.block_size
        return ok, f"1 x {self.mode.device}, batch {self.batch()} x {seq}: {text}{compiled}"

    def check_throughput(self):
        run = self.runs.get("train")
        if run is None or not run["metrics"]:
            raise Skip("no train run to read (the train check did not run or logged nothing)")
        device = torch.device("cuda", 0) if self.mode.device == "cuda" else torch.device("cpu")
        where = torch.cuda.get_device_name(0) if self.mode.device == "cuda" else "CPU"
        return judge_throughput(run["metrics"], self.flops_per_token(), perf.peak_flops(device), 1, self.min_mfu, where)

    def check_recompiles(self):
        if not self.mode.run.get("train.compile"):
            raise Skip("the runs do not compile")
        runs = {k: r for k, r in self.runs.items() if r["metrics"]}
        if "train" not in runs:
            raise Skip("no train run to read")
        evals = sum(1 for r in runs["train"]["metrics"]
                    if "val_loss" in r and r["step"] < self.mode.run["train.max_iters"])
        counts = {k: count_recompiles(r["text"]) for k, r in runs.items()}
        text = ", ".join(f"{k} run {n} recompilations" for k, n in counts.items())
        text += f" (TORCH_LOGS=recompiles; {evals} evaluation{'s' * (evals != 1)} between the train run's steps)"
        if evals == 0:
            return False, text + ": no evaluation between training steps, nothing tested"
        return not any(counts.values()), text

    def check_ddp(self):
        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        if self.world < 2:
            raise Skip(f"{self.gpus} GPU visible: DDP needs 2 or more (see CUDA_VISIBLE_DEVICES)")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.world}"]
        run = self.train_run("ddp", launcher)
        backend = "gloo" if self.mode.device == "cpu" else "NCCL"
        bad = self.failed_run(run)
        if bad:
            return False, f"{self.world} x {backend}: {bad}"
        ok, text = judge_run(run["record"], run["metrics"], self.mode.run["train.max_iters"], self.mode.min_drop)
        text = f"{self.world} x {self.mode.device} ({backend}): {text}"
        one = self.runs.get("train")
        if not ok:
            return False, text
        if one is None or one["record"].get("status") != "done":
            return ok, f"{text}; no one-process run to compare with"
        same, diff = compare_runs(one["metrics"], run["metrics"], one["record"], run["record"], self.mode.loss_tol)
        rates = (window_rates(one["metrics"], "tokens_per_s"), window_rates(run["metrics"], "tokens_per_s"))
        speed = ""
        if all(rates):
            t1, tn = map(statistics.median, rates)
            speed = f"; {tn / 1e6:.3g}M tokens/s, {tn / (self.world * t1):.2f} of {self.world} x one process"
        return same, f"{text}; vs one process: {diff}{speed}"

    def check_memory(self, check: str):
        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        run, base = largest_run(SWEEPS[check])
        overrides = {**run.overrides, **self.mode.memory.get(check, {})}
        overrides |= {"train.device": self.mode.device, "train.compile": False,
                      "train.batch_size": overrides.get("train.micro_batch_size", run.config.train.micro_batch_size)}
        cmd = [sys.executable, "-m", "bench.acceptance", "--worker", str(base), json.dumps(overrides)]
        rc, text, timed_out = run_command(cmd, self.out / f"{check}.log", self.timeout("memory"))
        result = next((json.loads(ln[len("RESULT "):]) for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        if timed_out or rc != 0 or result is None:
            return False, f"worker {'timed out' if timed_out else f'exit code {rc}'}: {tail(text)}"
        return judge_memory(result, result["limit_gib"])

    # -- running them

    def run(self, selected: list[str]) -> list[Result]:
        results = []
        for name in selected:
            fn = getattr(self, f"check_{name}", None) or (lambda name=name: self.check_memory(name))
            print(f"\n[{name}]", flush=True)
            t0 = time.time()
            try:
                ok, detail = fn()
                verdict = "PASS" if ok else "FAIL"
            except Skip as e:
                verdict, detail = "SKIP", str(e)
            except TimeoutError as e:
                verdict, detail = "FAIL", str(e)
            except Exception as e:  # a check that breaks is a failed check, and the others still run
                traceback.print_exc()
                verdict, detail = "FAIL", f"{type(e).__name__}: {e}"
            results.append(Result(name, verdict, time.time() - t0, detail))
            print(f"[{name}] {verdict}: {detail}", flush=True)
        return results


def print_verdict(results: list[Result], smoke: bool) -> None:
    counts = {v: sum(r.verdict == v for r in results) for v in ("PASS", "FAIL", "SKIP")}
    rows = [{"check": r.check, "verdict": r.verdict, "s": f"{r.seconds:.0f}", "detail": r.detail} for r in results]
    print_table(rows,
                f"acceptance verdict ({'CPU smoke mode' if smoke else 'GPU'}): "
                + ", ".join(f"{n} {v}" for v, n in counts.items()))
    print("\nACCEPTED" if not counts["FAIL"] else f"\nNOT ACCEPTED: {counts['FAIL']} check(s) failed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.acceptance", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--smoke", action="store_true", help="CPU smoke mode: the same checks at tiny shapes")
    ap.add_argument("--out", help="where the runs and logs go (default out/acceptance, out/acceptance-smoke)")
    ap.add_argument("--only", help=f"comma-separated checks of: {','.join(CHECKS)}")
    ap.add_argument("--budget", type=float, default=600, help="seconds for all checks (default 600)")
    ap.add_argument("--min-mfu", type=float, default=0.05, help="throughput fails below this MFU (default 0.05)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "OVERRIDES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(memory_worker(args.worker[0], json.loads(args.worker[1]))), flush=True)
        return 0
    selected = args.only.split(",") if args.only else list(CHECKS)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    mode = SMOKE if args.smoke else GPU
    out = Path(args.out or ROOT / ("out/acceptance-smoke" if args.smoke else "out/acceptance")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU acceptance check ({'CPU smoke mode, tiny shapes' if args.smoke else 'GPU'}): "
          f"{', '.join(selected)}; runs and logs in {out}; at most {args.budget:.0f} s")
    results = Acceptance(mode, out, args.budget, args.min_mfu).run(selected)
    print_verdict(results, args.smoke)
    if not args.smoke and not args.no_record and torch.cuda.is_available():
        record("acceptance", {"checks": selected, "min_mfu": args.min_mfu},
               {r.check: {"verdict": r.verdict, "seconds": r.seconds, "detail": r.detail} for r in results})
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
