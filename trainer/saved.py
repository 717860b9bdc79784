"""A run read back from its directory: its model from the checkpoint (sample.py, scripts/evaluate.py) and its loss
on any prepared corpus, measured as training measures it."""

import json
from pathlib import Path

from config import Config
from data.loader import FixedWindows
from model import GPT
from mup.scaling import multipliers
from trainer import checkpoint
from trainer.run_record import EVALS
from trainer.runtime import Runtime, check_data
from trainer.step import evaluate


def load(run_dir, device: str | None = None) -> tuple[Config, GPT, Runtime, dict]:
    """(config, model in eval mode, runtime, checkpoint) of the run in `run_dir`; `device` overrides the run's
    train.device. Errors are one-line ConfigErrors (trainer.checkpoint.read)."""
    ckpt = checkpoint.read(run_dir)
    cfg = checkpoint.run_config(ckpt)
    if device is not None:
        cfg.train.device = device
    rt = Runtime(cfg)
    model = GPT(cfg.model, **multipliers(cfg))
    model.load_state_dict(ckpt["model"])
    return cfg, model.to(rt.device).eval(), rt, ckpt


def evaluate_run(run_dir, dataset: str | None = None, windows: int | None = None, seed: int | None = None,
                 device: str | None = None) -> dict:
    """The loss of the run's checkpoint on the val split of `dataset` (default: the run's own), over `windows`
    windows drawn from `seed` (default: the run's train.eval_windows and train.eval_seed), with training's
    evaluation (trainer.step.evaluate, at the run's micro-batch and numerics). On the run's own data and a
    finished run's checkpoint it is the run's final_val_loss, bit for bit when the run had one process."""
    cfg, model, rt, ckpt = load(run_dir, device)
    if dataset is not None:
        cfg.data.dataset = dataset
    t = cfg.train
    windows, seed = windows or t.eval_windows, t.eval_seed if seed is None else seed
    data_dir = check_data(cfg)
    val = FixedWindows(data_dir, "val", cfg.model.block_size, windows, seed)
    loss = evaluate(model, val, t.micro_batch_size, rt)
    return {"run": str(run_dir), "step": ckpt["step"], "dataset": cfg.data.dataset, "data_dir": str(data_dir),
            "split": "val", "windows": windows, "eval_seed": seed, "tokens": windows * cfg.model.block_size,
            "val_loss": loss}


def record(run_dir, result: dict, path: Path | None = None) -> str:
    """Append `result` as one JSON line to `path` (default RUN_DIR/evals.jsonl); returns the line."""
    line = json.dumps(result)
    with open(Path(path) if path else Path(run_dir) / EVALS, "a") as f:  # one write of a line: never torn by a reader
        f.write(line + "\n")
    return line
