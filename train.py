"""One training run.

    python train.py [CONFIG.yaml] [key=value ...] [--resume]       (no CONFIG: configs/default.yaml)
    torchrun --nproc_per_node=N train.py CONFIG.yaml [key=value ...]
    python train.py --worker        (a sweep's worker: runs' arguments on stdin, one run after another)

build (config -> scaling table -> model and optimizer) -> resume -> loop -> finish. Everything that can be
wrong with the input (config, machine, data, output directory, an existing checkpoint) is checked before the
model is built. Outputs in train.out_dir: config.yaml (resolved), metrics.jsonl, ckpt.pt (latest; atomic),
run.json (status and final numbers; sweeps read it). SIGTERM or SIGUSR2 checkpoints and exits (143);
Ctrl-C exits at once (130); either way run.json says `interrupted` and train.resume=auto continues.
"""

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

import perf
from atomic import write_text
from config import Config, ConfigError, describe_keys, flat_dict, load_config, split_command_line, to_dict, validate
from data.loader import FixedWindows, TokenBatches
from mup.scaling import build_model
from optim.hybrid import build_optimizer
from trainer import checkpoint
from trainer.records import Log
from trainer.run_record import (DIVERGED, DONE, INTERRUPTED, RUN_JSON, RUNNING, read_record, record_failure,
                                record_stop, run_record, write_record)
from trainer.runtime import Runtime, check_data, check_out_dir, check_wandb, compile_blocks
from trainer.signals import StopRequest
from trainer.step import evaluate, train_step
from trainer.worker import serve

STOPPED = "stopped"  # how loop() ends at train.stop_after: the record says running, a resume continues it


def check(cfg: Config, rt: Runtime) -> tuple[Path, dict | None, dict | None]:
    """Everything about the input that can be wrong, before any compute: data, output, wandb, checkpoint, and a
    fork's parent. Returns (data directory, this run's checkpoint to resume, the parent's checkpoint to fork)."""
    validate(cfg, rt.world)
    data_dir = check_data(cfg, rt.master)
    out = Path(cfg.train.out_dir)
    check_out_dir(out)
    check_wandb(cfg)
    ckpt = parent = None
    if (out / checkpoint.CKPT).exists():
        if cfg.train.resume != "auto":
            raise ConfigError(f"{out / checkpoint.CKPT} exists; continue it with train.resume=auto (or --resume),"
                              f" or choose another train.out_dir")
        ckpt = checkpoint.load(out / checkpoint.CKPT, cfg)
    elif cfg.train.init_from:
        parent = checkpoint.parent(cfg)
    return data_dir, ckpt, parent


class Run:
    """One run's model, optimizer, data and progress: what a checkpoint saves and a resume restores.

    The log window (the steps since the last logged train loss, and their loss sum) is progress too: keeping
    it in the checkpoint makes the logged and final losses independent of where a run was interrupted.

    A fork (train.init_from) starts from its parent's checkpoint: its weights, its optimizer state by parameter
    name under this run's hyperparameters (unless train.init_from_optim is false), and its step, so batches and
    the schedule go on from there; every run.json of the fork names the parent and that step."""

    def __init__(self, cfg: Config, rt: Runtime, data_dir: Path, ckpt: dict | None, parent: dict | None = None):
        self.cfg, self.rt, self.out, t = cfg, rt, Path(cfg.train.out_dir), cfg.train
        torch.manual_seed(t.seed)
        self.raw, self.table = build_model(cfg, rt.device)
        self.opt = build_optimizer(cfg, self.raw, self.table)
        self.step, self.elapsed, self.train_loss = 0, 0.0, None
        self.window_sum, self.window_start = torch.zeros((), device=rt.device), 0
        self.lineage = {}
        if ckpt is not None:
            self.raw.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optim"])
            self.step, self.elapsed, self.train_loss = ckpt["step"], ckpt["wall_s"], ckpt["train_loss"]
            self.window_sum, self.window_start = ckpt["window_sum"].to(rt.device), ckpt["window_start"]
            self.lineage = ckpt.get("lineage", {})
        elif parent is not None:
            self.raw.load_state_dict(parent["model"])
            if t.init_from_optim:
                self.opt.load_param_states(parent["optim"])
            self.step = self.window_start = parent["step"]
            self.lineage = {"parent": {"run": str(Path(t.init_from).resolve()), "step": parent["step"]}}
        self.model = compile_blocks(self.raw) if t.compile else self.raw
        if rt.ddp:  # gradients live in DDP's buckets: no second fp32 copy of them
            self.model = DDP(self.model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None,
                             gradient_as_bucket_view=True)
        self.batches = TokenBatches(data_dir, "train", cfg.model.block_size, t.batch_size, t.seed)
        self.val = FixedWindows(data_dir, "val", cfg.model.block_size, t.eval_windows, t.eval_seed)
        self.tokens_per_step = t.batch_size * cfg.model.block_size
        self.flops_per_token = perf.train_flops_per_token(self.raw) if perf.peak_flops(rt.device) else None
        self.started = time.time()

    def wall_s(self) -> float:
        return self.elapsed + time.time() - self.started

    def lr(self) -> float:
        """η_base as the last step scheduled it: a group's lr is its own base lr times the schedule's factor."""
        group = self.opt.param_groups[0]
        return self.cfg.optim.lr * (group["lr"] / group["base_lr"])

    def progress(self) -> dict:
        return {"step": self.step, "tokens": self.step * self.tokens_per_step, "wall_s": self.wall_s()}

    def evaluate(self) -> float:
        return evaluate(self.raw, self.val, self.cfg.train.micro_batch_size, self.rt)

    def save(self) -> None:
        """Checkpoint (all ranks take part: the window's loss sum is averaged over them), then run.json."""
        state = {"model": self.raw.state_dict(), "optim": self.opt.state_dict(), "step": self.step,
                 "wall_s": self.wall_s(), "config": flat_dict(self.cfg), "train_loss": self.train_loss,
                 "window_sum": self.rt.mean(self.window_sum.clone()).cpu(), "window_start": self.window_start,
                 "lineage": self.lineage}
        if self.rt.master:
            checkpoint.save(self.out / checkpoint.CKPT, state)
            write_record(self.cfg, RUNNING, **self.progress(), **self.lineage)

    def finish(self, status: str, log: Log, **extra) -> dict:
        val = self.evaluate() if status == DONE else None
        fields = {**self.progress(), "final_train_loss": None if status == DIVERGED else self.train_loss,
                  "final_val_loss": val, **self.lineage, **extra}
        record = (write_record if self.rt.master else run_record)(self.cfg, status, **fields)
        if val is not None:
            log({"step": self.step, "val_loss": val})
        return record


def log_window(run: Run, log: Log, spectral_report: dict | None, eval_due: bool, seconds: float, steps: int):
    """Close the log window at run.step: its mean train loss, throughput, ETA and any diagnostics."""
    cfg, rt = run.cfg, run.rt
    run.train_loss = rt.mean(run.window_sum / (run.step - run.window_start)).item()
    tokens_per_s = steps * run.tokens_per_step / max(seconds, 1e-9)
    record = {"step": run.step, "train_loss": run.train_loss, "lr": run.lr(),
              "tokens": run.step * run.tokens_per_step, "tokens_per_s": tokens_per_s}
    if run.flops_per_token:
        record["mfu"] = tokens_per_s * run.flops_per_token / (perf.peak_flops(rt.device) * rt.world)
    if spectral_report:
        record.update(spectral_report)
    if eval_due:
        record["val_loss"] = run.evaluate()
    log(record, eta_s=(cfg.train.max_iters - run.step) * seconds / max(steps, 1))
    run.window_sum.zero_()
    run.window_start = run.step


def loop(run: Run, log: Log, stop: StopRequest) -> str:
    """Steps until max_iters, stop_after, divergence or a stop signal; returns how it ended."""
    cfg, rt, t = run.cfg, run.rt, run.cfg.train
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)
    window_start, window_steps, paused = time.time(), 0, 0.0  # throughput leaves checkpoints and evals out
    if cfg.log.spectral_interval:
        from mup import spectral  # optional diagnostics
    first = run.step
    for step in range(first, t.max_iters):
        spectral_due = cfg.log.spectral_interval and (step + 1) % cfg.log.spectral_interval == 0
        before = spectral.snapshot(run.raw, run.table) if spectral_due else None
        run.window_sum += train_step(run.model, run.opt, run.batches, step, cfg, rt, run.raw)
        nonfinite |= ~torch.isfinite(run.window_sum)
        run.step, window_steps = step + 1, window_steps + 1
        if step == first and t.compile:  # this process's first step compiles: timed on its own, not in tokens/s
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            log.say(f"first step (compiles the model): {time.time() - window_start:.1f} s")
            window_start, window_steps = time.time(), 0
        done = run.step
        eval_due = done % t.eval_interval == 0 and done != t.max_iters  # the end always evaluates
        log_due = done % t.log_interval == 0 or done == t.max_iters or spectral_due or eval_due
        ckpt_due = done % t.ckpt_interval == 0 or done == t.max_iters or done == t.stop_after
        stopping = stop.requested and not rt.ddp  # one process checks every step; DDP ranks agree at syncs
        if log_due or ckpt_due or stopping:  # the one host sync: no non-finite state is ever saved
            flags = torch.stack([nonfinite.float(), torch.tensor(float(stop.requested), device=rt.device)])
            diverged, stopping = (v > 0 for v in rt.sum(flags).tolist())
            if diverged:
                log({"step": done, "status": DIVERGED})
                return DIVERGED
        if log_due:
            report = spectral.report(run.raw, run.table, before) if before is not None else None
            log_window(run, log, report, eval_due, time.time() - window_start - paused, window_steps)
            window_start, window_steps, paused = time.time(), 0, 0.0
        if ckpt_due or stopping:
            save_start = time.time()
            run.save()
            paused += time.time() - save_start
        if stopping:
            return INTERRUPTED
        if done == t.stop_after:
            return STOPPED
    return DONE


def train(cfg: Config, rt: Runtime, data_dir: Path, ckpt: dict | None, stop: StopRequest,
          parent: dict | None = None) -> dict:
    """build -> resume (or fork) -> loop -> finish; returns the run.json record."""
    out, t = Path(cfg.train.out_dir), cfg.train
    if ckpt is not None and ckpt["step"] >= t.max_iters and read_record(out).get("status") == DONE:
        if rt.master:
            print(f"{out} is already done ({t.max_iters} steps): {out / RUN_JSON}")
        return read_record(out)
    if rt.master:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    run = Run(cfg, rt, data_dir, ckpt, parent)
    log = Log(cfg, rt.master, run.step)
    n_params = sum(p.numel() for p in run.raw.parameters())
    log.say(f"{out}: {n_params / 1e6:.2f}M parameters, {t.max_iters} steps x {run.tokens_per_step:,} tokens"
            f" = {t.max_iters * run.tokens_per_step / 1e6:.1f}M tokens, {rt.world} x {rt.device.type}"
            + (f"; resuming at step {run.step}" if ckpt is not None else "")
            + (f"; forked from {t.init_from} at step {run.step}" if parent is not None else ""))
    if rt.master:
        write_record(cfg, RUNNING, **run.progress(), **run.lineage)
    ended = loop(run, log, stop)
    if ended == INTERRUPTED:
        name = stop.signum.name
        log.say(f"{name}: checkpointed step {run.step}; continue with train.resume=auto (or --resume)")
        result = run.finish(INTERRUPTED, log, signal=name)
    elif ended == STOPPED:
        log.say(f"stopped after step {run.step}; continue with train.resume=auto")
        result = run.finish(RUNNING, log)
    else:
        result = run.finish(ended, log, **({"diverged_step": run.step} if ended == DIVERGED else {}))
    log.say(f"{ended}: {out / RUN_JSON}")
    log.close(result)
    return result


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="One training run: python train.py [CONFIG.yaml] [key=value ...]",
        epilog="config keys (type = default, doc):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]; no CONFIG: configs/default.yaml")
    ap.add_argument("--resume", action="store_true", help="same as train.resume=auto")
    ap.add_argument("--print-scaling", action="store_true", help="print the scaling table and exit")
    ap.add_argument("--worker", action="store_true",
                    help="train the runs a sweep sends on stdin one after another in this process (trainer/worker.py)")
    a = ap.parse_intermixed_args(argv)
    if a.worker and (a.args or a.resume or a.print_scaling):
        ap.error("--worker takes no other arguments: each run's arguments come on stdin")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return serve(main)
    path, overrides = split_command_line(a.args)
    if a.resume:
        overrides.append("train.resume=auto")
    try:
        cfg = load_config(path, overrides)
        if a.print_scaling:  # needs no device: the table is the same everywhere
            from mup.table import format_table, table_for

            print(format_table(cfg, table_for(cfg)))
            return
        rt = Runtime(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    rt.start()
    together = False  # every rank reached the end: they may meet at a barrier before leaving
    try:
        try:
            data_dir, ckpt, parent = check(cfg, rt)
        except (ConfigError, OSError, ValueError) as e:  # rejected before any compute: nothing written
            sys.exit(f"error: {e}")
        try:
            with StopRequest() as stop:
                ended = train(cfg, rt, data_dir, ckpt, stop, parent)["status"]
            together = True
        except KeyboardInterrupt:
            if rt.master and Path(cfg.train.out_dir).is_dir():
                at = record_stop(cfg, INTERRUPTED, signal="SIGINT")["step"]
                print(f"\ninterrupted; continue from step {at or 0} with train.resume=auto (or --resume)",
                      file=sys.stderr)
            sys.exit(130)
        except BaseException:
            if rt.master and Path(cfg.train.out_dir).is_dir():
                record_failure(cfg, traceback.format_exc()[-4000:])
            raise
    finally:
        rt.stop(together)
    if ended == INTERRUPTED:
        sys.exit(143)


if __name__ == "__main__":
    main()
