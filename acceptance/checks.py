"""The acceptance checks (see acceptance/__init__.py): each runs what GPU training uses, on the GPUs or, in
smoke mode, on CPU at tiny shapes, and returns (passed, what it found) or raises Skip; a check that breaks is
a failed check, and the others still run."""

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import perf
from acceptance.memory import RandomBatches, largest_run
from acceptance.verdicts import (compare_runs, count_recompiles, finite, judge_memory, judge_optimizers, judge_run,
                                 judge_split, judge_throughput, window_rates)
from bench.common import print_table
from config import ROOT, load_config
from data.format import default_dir
from data.loader import open_dataset
from model import GPT
from mup.scaling import build_model, multipliers
from optim.hybrid import build_optimizer
from optim.muon import Muon, newton_schulz, newton_schulz_batched
from trainer.records import METRICS, read_jsonl
from trainer.run_record import DONE, read_record
from trainer.runtime import Runtime
from trainer.step import train_step

BASE_CONFIG = "configs/owt_base.yaml"
SWEEPS = {"memory-width": "configs/sweeps/width.yaml", "memory-depth": "configs/sweeps/depth.yaml"}
CHECKS = ("device", "data", "optimizer", "optimizers", "split", "train", "throughput", "ddp", "recompiles",
          "memory-width", "memory-depth")
DDP_RUN = {"model.activation_checkpointing": True}  # the ddp run's own: recomputing blocks, compiled, under DDP


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
    optimizer_steps: int  # steps of each optimizer in the optimizers check
    split_tol: float  # largest difference of split from unsplit weights, over the largest update (0: bitwise)
    timeouts: dict  # seconds, per check that runs a subprocess
    memory: dict = field(default_factory=dict)  # check -> overrides of the sweep's largest run (smoke: tiny)


GPU = Mode(
    smoke=False, device="cuda", tokenizer="gpt2", micro=30, min_drop=1.0, loss_tol=0.05, optimizer_steps=8,
    split_tol=0.01,
    run={"data.dataset": "stdlib", "data.tokenizer": "gpt2", "train.max_iters": 60, "optim.warmup_iters": 10,
         "train.log_interval": 10, "train.eval_interval": 20, "train.eval_windows": 48, "train.ckpt_interval": 1000,
         "train.device": "cuda", "train.dtype": "auto", "train.compile": True},
    timeouts={"data": 180, "optimizers": 300, "split": 180, "train": 300, "ddp": 300, "memory": 180})

SMOKE_MODEL = {"model.block_size": 64, "model.vocab_size": 256, "data.tokenizer": "bytes", "train.device": "cpu",
               "train.dtype": "bfloat16", "optim.ns_dtype": "bfloat16", "optim.ns_batched": True,
               "train.micro_batch_size": 4}  # bf16 and batched Newton-Schulz: what CUDA takes by default
SMOKE = Mode(
    smoke=True, device="cpu", tokenizer="bytes", micro=4, min_drop=0.5, loss_tol=0.05, optimizer_steps=6,
    split_tol=0.0,
    run={**SMOKE_MODEL, "data.dataset": "stdlib", "model.n_embd": 64, "model.head_dim": 16, "model.n_layer": 2,
         "train.max_iters": 12, "optim.warmup_iters": 3, "train.log_interval": 3, "train.eval_interval": 6,
         "train.eval_windows": 16, "train.ckpt_interval": 1000, "train.compile": True},
    timeouts={"data": 120, "optimizers": 240, "split": 180, "train": 240, "ddp": 240, "memory": 120},
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


def nccl_version() -> str:
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


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

    def train_args(self, out_dir: Path, extra: dict | None = None) -> list[str]:
        run = {**self.mode.run, "train.micro_batch_size": self.mode.micro, "train.batch_size": self.batch(),
               "train.out_dir": str(out_dir), **(extra or {})}
        return [BASE_CONFIG, *(f"{k}={v}" for k, v in run.items())]

    def train_run(self, name: str, launcher: list[str], extra: dict | None = None) -> dict:
        out_dir = self.out / name
        shutil.rmtree(out_dir, ignore_errors=True)  # this tool's own run directory from a previous time
        trace = os.environ.get("TORCH_LOGS")
        env = {"TORCH_LOGS": f"{trace},recompiles" if trace else "recompiles", "PYTHONUNBUFFERED": "1"}
        rc, text, timed_out = run_command([*launcher, "train.py", *self.train_args(out_dir, extra)],
                                          self.out / f"{name}.log", self.timeout(name), env)
        metrics = out_dir / METRICS
        run = {"rc": rc, "text": text, "timed_out": timed_out, "record": read_record(out_dir),
               "metrics": read_jsonl(metrics) if metrics.exists() else []}
        self.runs[name] = run
        return run

    def worker(self, check: str, cmd: list[str], limit: str | None = None) -> tuple[dict | None, str]:
        """Run `check`'s worker, which prints RESULT {json}, within the timeout of `limit` (default: `check`):
        (that json, or None with why)."""
        rc, text, timed_out = run_command(cmd, self.out / f"{check}.log", self.timeout(limit or check))
        result = next((json.loads(ln[len("RESULT "):]) for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        if timed_out or rc != 0 or result is None:
            return None, f"worker {'timed out' if timed_out else f'exit code {rc}'}: {tail(text)}"
        return result, ""

    def torchrun(self) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.world}"]

    def failed_run(self, run: dict) -> str | None:
        if run["timed_out"]:
            return f"timed out: {tail(run['text'])}"
        if run["rc"] != 0:
            return f"exit code {run['rc']}: {tail(run['text'], 2)}"
        return None

    def flops_per_token(self) -> float:
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
            found.append(f"Muon ns_dtype={str(o.ns_dtype).removeprefix('torch.')} ns_batched={o.ns_batched}")
            if o.ns_dtype != torch.bfloat16:
                problems.append(f"Muon's Newton-Schulz in {o.ns_dtype}, not bfloat16")
            if not o.ns_batched:
                problems.append("Muon's Newton-Schulz is not batched")
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
            # the batched iteration over every matrix of that shape against the per-matrix one, in Muon's dtype
            stack = [muon[0].state[p]["momentum_buffer"] for gr in muon[0].param_groups for p in gr["params"]
                     if p.shape == g.shape]
            batched = newton_schulz_batched(torch.stack(stack), *args, muon[0].ns_dtype).float()
            err = max(((b - newton_schulz(m, *args, muon[0].ns_dtype).float()).norm() / b.norm()).item()
                      for b, m in zip(batched, stack))
            found.append(f"batched vs per-matrix Newton-Schulz rel. error {err:.2g} over {len(stack)} matrices")
            if not err < 0.05:
                problems.append("batched Newton-Schulz differs from the per-matrix one")
        del model, opt, before
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()  # leave the GPU to the runs that follow
        text = (f"{cfg.model.n_embd}x{cfg.model.n_layer} on {rt.device.type}: " + ", ".join(found)
                + f"; one step: loss {loss:.3f}" + ("" if unmoved else ", every tensor moved"))
        return not problems, text if not problems else f"{text}; " + "; ".join(problems)

    def check_optimizers(self):
        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        overrides = {**self.mode.run, "train.micro_batch_size": self.mode.micro, "train.batch_size": self.mode.micro}
        result, why = self.worker("optimizers", [sys.executable, "-m", "acceptance.optimizers", BASE_CONFIG,
                                                 json.dumps(overrides), str(self.mode.optimizer_steps)])
        return (False, why) if result is None else judge_optimizers(result)

    def check_split(self):
        if not self.mode.smoke and not torch.cuda.is_available():
            raise Skip("needs CUDA")
        if self.world < 2:
            raise Skip(f"{self.gpus} GPU visible: a split needs 2 or more (see CUDA_VISIBLE_DEVICES)")
        overrides = {**self.mode.run, "train.micro_batch_size": 2, "train.batch_size": 2 * self.world}
        result, why = self.worker("split", [*self.torchrun(), "-m", "acceptance.split", BASE_CONFIG,
                                            json.dumps(overrides)])
        return (False, why) if result is None else judge_split(result, self.mode.split_tol)

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
        run = self.train_run("ddp", self.torchrun(), DDP_RUN)
        backend = "gloo" if self.mode.device == "cpu" else "NCCL"
        bad = self.failed_run(run)
        if bad:
            return False, f"{self.world} x {backend}: {bad}"
        ok, text = judge_run(run["record"], run["metrics"], self.mode.run["train.max_iters"], self.mode.min_drop)
        text = f"{self.world} x {self.mode.device} ({backend}, activation checkpointing): {text}"
        one = self.runs.get("train")
        if not ok:
            return False, text
        if one is None or one["record"].get("status") != DONE:
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
        result, why = self.worker(check, [sys.executable, "-m", "acceptance.memory", str(base), json.dumps(overrides)],
                                  "memory")
        return (False, why) if result is None else judge_memory(result, result["limit_gib"])

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


