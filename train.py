"""One training run.

    python train.py [CONFIG.yaml] [key=value ...] [--resume]       (no CONFIG: configs/default.yaml)
    torchrun --nproc_per_node=N train.py CONFIG.yaml [key=value ...]

config -> scaling table -> model and optimizer -> loop. Everything that can be wrong with the input (config,
data, an existing checkpoint) is checked before the model is built. Outputs in train.out_dir: config.yaml
(resolved), metrics.jsonl, ckpt.pt (latest; atomic), run.json (status and final numbers; sweeps read it).
"""

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

import perf
from atomic import atomic_path, write_json, write_text
from config import Config, ConfigError, flat_dict, load_config, to_dict, validate
from data.loader import TokenBatches, ensure_offline_corpus, open_dataset, resolve_data_dir
from mup.scaling import build_model
from optim.hybrid import build_optimizer
from optim.schedule import lr_factor

CKPT = "ckpt.pt"
RECORD_FIELDS = ("step", "final_train_loss", "final_val_loss", "tokens", "wall_s")
# Keys a checkpoint must share with the config that resumes it: they fix the shapes and the rules.
MUST_MATCH = ("model.", "scaling.", "optim.name", "data.tokenizer")


def load_checkpoint(path: Path, cfg: Config) -> dict:
    """The checkpoint at `path`, refused with a clear message if it is unreadable or of another model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["config"]
    except Exception as e:
        raise ConfigError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it is left as is:"
                          f" move it away to start over, or point train.out_dir elsewhere") from e
    ours = flat_dict(cfg)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in ours.items()
            if k.startswith(MUST_MATCH) and saved.get(k) != v]
    if diff:
        raise ConfigError(f"checkpoint {path} does not match this config ({'; '.join(diff)})")
    return ckpt


class Run:
    """Distributed context, device and numerics of this process."""

    def __init__(self, cfg: Config):
        self.ddp = "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        want = cfg.train.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
        self.device = torch.device(f"cuda:{self.local_rank}" if want == "cuda" else "cpu")
        dtype = cfg.train.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                         else nullcontext())
        self.master = self.rank == 0

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.ddp:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def to_device(self, batch):
        """Pinned host memory makes the copy asynchronous: the GPU does not wait for the next batch."""
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
        return batch

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t / self.world
        return t


def check_data(cfg: Config, master: bool = True) -> Path:
    """The prepared corpus of `cfg`, checked against the model; the offline one is prepared on first use
    (offline and quick, so the embedded default runs on a fresh machine)."""
    data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.tokenizer)
    if cfg.data.dataset == "stdlib" and master:
        ensure_offline_corpus(cfg.data.tokenizer)
    if dist.is_initialized():
        dist.barrier()
    meta = open_dataset(data_dir, cfg.model.block_size)
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary"
                          f" ({meta['vocab_size']}, {meta['tokenizer']})")
    if meta["tokenizer"] != cfg.data.tokenizer:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer!r} but {data_dir} holds {meta['tokenizer']!r} tokens")
    return data_dir


def check(cfg: Config, run: Run) -> tuple[Path, dict | None]:
    """Everything about the input that can be wrong, before any compute: data, vocab, checkpoint."""
    validate(cfg, run.world)
    data_dir = check_data(cfg, run.master)
    if cfg.log.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise ConfigError("log.wandb=true needs wandb: pip install wandb") from e
    out = Path(cfg.train.out_dir)
    ckpt = None
    if (out / CKPT).exists():
        if cfg.train.resume != "auto":
            raise ConfigError(f"{out / CKPT} exists; continue it with train.resume=auto (or --resume),"
                              f" or choose another train.out_dir")
        ckpt = load_checkpoint(out / CKPT, cfg)
    return data_dir, ckpt


def dropout_seed(seed: int, step: int, micro_step: int) -> int:
    """The seed of a micro-batch's dropout masks. Like its tokens, they are a function of (seed, step, global
    micro-batch), not of a generator's history: ranks draw different masks, any number of ranks trains the
    same model, and a resumed run needs no RNG state from its checkpoint."""
    return int(np.random.SeedSequence([seed, step, micro_step]).generate_state(1, np.uint64)[0])


def run_record(cfg: Config, status: str, **fields) -> dict:
    """A run.json record: every field DESIGN.md names (null until known), any extra ones, the config."""
    return {"status": status, **dict.fromkeys(RECORD_FIELDS), **fields, "config": to_dict(cfg)}


def record_failure(cfg: Config, error: str) -> None:
    """Make run.json say failed, keeping how far the run got (the step a resume continues from)."""
    path = Path(cfg.train.out_dir) / "run.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    progress = {k: previous.get(k) for k in ("step", "tokens", "wall_s")}
    write_json(path, run_record(cfg, "failed", **progress, error=error))


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a last line torn by a kill in mid-write is dropped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def evaluate(model, batches: TokenBatches, iters: int, run: Run) -> float:
    """Mean loss over a fixed set of validation batches (the same ones at every evaluation)."""
    model.eval()
    total = torch.zeros((), device=run.device)
    with torch.no_grad():
        for i in range(iters):
            x, y = run.to_device(batches.get(i, run.rank))
            with run.autocast:
                total += model(x, y)[1].float()
    model.train()
    return run.mean(total / iters).item()


def train(cfg: Config, run: Run, data_dir: Path, ckpt: dict | None) -> dict:
    out, t = Path(cfg.train.out_dir), cfg.train
    if ckpt is not None and ckpt["step"] >= t.max_iters and (out / "run.json").exists():
        result = json.loads((out / "run.json").read_text())
        if result.get("status") == "done":
            if run.master:
                print(f"{out} is already done ({t.max_iters} steps)")
            return result
    accum = t.batch_size // (t.micro_batch_size * run.world)
    tokens_per_step = t.batch_size * cfg.model.block_size
    if run.master:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    torch.manual_seed(t.seed)
    model, table = build_model(cfg, run.device)
    opt = build_optimizer(cfg, model, table)
    start, elapsed = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        start, elapsed = ckpt["step"], ckpt["wall_s"]
    raw = model
    if t.compile:
        model = torch.compile(model)
    if run.ddp:
        model = DDP(model, device_ids=[run.local_rank] if run.device.type == "cuda" else None)

    train_batches = TokenBatches(data_dir, "train", cfg.model.block_size, t.micro_batch_size, t.seed)
    val_batches = TokenBatches(data_dir, "val", cfg.model.block_size, t.micro_batch_size, t.seed)
    peak = perf.peak_flops(run.device)
    flops_per_token = perf.train_flops_per_token(raw) if peak else None
    metrics_path = out / "metrics.jsonl"
    train_loss = None  # of the last log window
    if run.master and metrics_path.exists():  # drop records a killed run wrote after its last checkpoint
        kept = [r for r in read_metrics(metrics_path) if r["step"] <= start]
        write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        train_loss = next((r["train_loss"] for r in reversed(kept) if "train_loss" in r), None)
    wandb_run = None
    if cfg.log.wandb and run.master:
        import wandb

        run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]  # one wandb run per out_dir
        wandb_run = wandb.init(project=cfg.log.wandb_project, mode=cfg.log.wandb_mode, dir=str(out),
                               name=str(out), config=to_dict(cfg), id=run_id, resume="allow")

    def log(record: dict):
        if not run.master:
            return
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                       if not k.startswith("spec/")), flush=True)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if wandb_run is not None:
            wandb_run.log(record, step=record["step"])

    def checkpoint(step: int):
        state = {"model": raw.state_dict(), "optim": opt.state_dict(), "step": step,
                 "wall_s": elapsed + time.time() - t0, "config": flat_dict(cfg)}
        if run.master:
            with atomic_path(out / CKPT) as tmp:
                torch.save(state, tmp)
            write_json(out / "run.json", run_record(cfg, "running", step=step, tokens=step * tokens_per_step,
                                                    wall_s=state["wall_s"]))

    def finish(status: str, step: int, train_loss: float | None, **extra) -> dict:
        val = evaluate(model, val_batches, t.eval_iters, run) if status == "done" else None
        record = run_record(cfg, status, step=step, final_train_loss=train_loss, final_val_loss=val,
                            tokens=step * tokens_per_step, wall_s=elapsed + time.time() - t0, **extra)
        if run.master:
            write_json(out / "run.json", record)
        return record

    t0 = time.time()
    if run.master:
        write_json(out / "run.json", run_record(cfg, "running", step=start, tokens=start * tokens_per_step,
                                                wall_s=elapsed))
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    loss_sum = torch.zeros((), device=run.device)
    window_t0, window_start = time.time(), start
    if cfg.log.spectral_interval:
        from mup import spectral  # optional diagnostics
    for step in range(start, t.max_iters):
        factor = lr_factor(step, cfg.optim, t.max_iters)
        opt.set_lr_factor(factor)
        for micro in range(accum):
            # the global micro-batch index fixes each sample, so any number of ranks sees the same batch
            global_micro = run.rank * accum + micro
            x, y = run.to_device(train_batches.get(step, micro_step=global_micro))
            if cfg.model.dropout > 0:
                torch.manual_seed(dropout_seed(t.seed, step, global_micro))
            sync = model.no_sync() if run.ddp and micro < accum - 1 else nullcontext()
            with sync, run.autocast:
                loss = model(x, y)[1] / accum
            loss.backward()
            loss_sum += loss.detach()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        spectral_due = cfg.log.spectral_interval and (step + 1) % cfg.log.spectral_interval == 0
        before = spectral.snapshot(raw, table) if spectral_due else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        nonfinite |= ~torch.isfinite(loss_sum)
        done = step + 1
        eval_due = done % t.eval_interval == 0 and done != t.max_iters  # the end always evaluates
        log_due = done % t.log_interval == 0 or done == t.max_iters or spectral_due or eval_due
        ckpt_due = done % t.ckpt_interval == 0 or done == t.max_iters
        # the one host sync, at log and checkpoint steps only: no non-finite state is ever saved
        if (log_due or ckpt_due) and run.mean(nonfinite.float()).item() > 0:
            log({"step": done, "status": "diverged"})
            return finish("diverged", done, None, diverged_step=done)
        if log_due:
            dt = time.time() - window_t0
            train_loss = run.mean(loss_sum / (done - window_start)).item()
            record = {"step": done, "train_loss": train_loss, "lr": cfg.optim.lr * factor,
                      "tokens": done * tokens_per_step,
                      "tokens_per_s": (done - window_start) * tokens_per_step / dt}
            if peak:
                record["mfu"] = record["tokens_per_s"] * flops_per_token / (peak * run.world)
            if before is not None:
                record.update(spectral.report(raw, table, before))
            if eval_due:
                record["val_loss"] = evaluate(model, val_batches, t.eval_iters, run)
            log(record)
            loss_sum.zero_()
            window_t0, window_start = time.time(), done
        if ckpt_due or done == t.stop_after:
            checkpoint(done)
        if done == t.stop_after:
            if run.master:
                print(f"stopped after step {done}; continue with train.resume=auto")
            return finish("running", done, train_loss)
    result = finish("done", t.max_iters, train_loss)
    log({"step": t.max_iters, "val_loss": result["final_val_loss"]})
    if wandb_run is not None:
        wandb_run.finish()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description="One training run (see DESIGN.md for the keys).")
    ap.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    ap.add_argument("--resume", action="store_true", help="same as train.resume=auto")
    ap.add_argument("--print-scaling", action="store_true", help="print the scaling table and exit")
    a = ap.parse_intermixed_args(argv)
    path = a.args[0] if a.args and "=" not in a.args[0] else None
    overrides = a.args[1:] if path else a.args
    if a.resume:
        overrides.append("train.resume=auto")
    try:
        cfg = load_config(path, overrides)
        if a.print_scaling:  # needs no device: the table is the same everywhere
            from mup.table import format_table, table_for

            print(format_table(cfg, table_for(cfg)))
            return
        run = Run(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    run.start()
    try:
        try:
            data_dir, ckpt = check(cfg, run)
        except (ConfigError, OSError, ValueError) as e:  # rejected before any compute: nothing written
            sys.exit(f"error: {e}")
        try:
            train(cfg, run, data_dir, ckpt)
            if run.ddp:  # end together: a rank tearing gloo down while rank 0 still writes can abort its peer
                dist.barrier()
        except BaseException:
            if run.master and Path(cfg.train.out_dir).is_dir():
                record_failure(cfg, traceback.format_exc()[-4000:])
            raise
    finally:
        if run.ddp and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
