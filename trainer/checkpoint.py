"""Checkpoints: one file per run (out_dir/ckpt.pt, replaced atomically), and the strict rule for resuming one.

A resume continues the same trajectory or does not start: every setting that changes training must equal the
checkpoint's. What may differ is what only changes how the run is watched or launched (below): a resumed
run then ends with the same weights, losses and final numbers as one that went straight through.
"""

from pathlib import Path

import torch

from atomic import atomic_path
from config import Config, ConfigError, flat_dict, from_flat, with_defaults

CKPT = "ckpt.pt"
SAVED = ("model", "optim", "step", "config")  # what every checkpoint of this repository holds
# Keys a resume may change: intervals of logging, evaluation and checkpoints, where to stop this time, the
# micro-batch (the global batch and its samples are fixed; ranks and micro-batches only split it), and
# activation recomputation. Prefixes end with a dot.
FREE = ("train.log_interval", "train.eval_interval", "train.ckpt_interval", "train.stop_after",
        "train.micro_batch_size", "train.out_dir", "train.resume", "model.activation_checkpointing", "log.")


def is_free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE)


def differences(saved: dict, cfg: Config, saved_as: str = "checkpoint") -> list[str]:
    """'key: checkpoint A vs config B' for every trajectory setting that differs (`saved_as` names the saved side)."""
    ours, saved = flat_dict(cfg), with_defaults(saved)
    return [f"{k}: {saved_as} {saved[k]!r} vs config {ours[k]!r}" for k in ours
            if not is_free(k) and saved[k] != ours[k]]


def load(path: Path, cfg: Config) -> dict:
    """The checkpoint at `path`, refused with a clear message if it is unreadable or of another trajectory."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt["config"]
    except Exception as e:
        raise ConfigError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it is left as is:"
                          f" move it away to start over, or point train.out_dir elsewhere") from e
    diff = differences(saved, cfg)
    if diff:
        raise ConfigError(f"checkpoint {path} was trained with other settings; a resume must continue the same"
                          f" run, so nothing was changed. Differing keys:\n  " + "\n  ".join(diff)
                          + "\nResume with the checkpoint's values, or start a new run in another train.out_dir")
    return ckpt


def read(run_dir) -> dict:
    """The checkpoint of the run in `run_dir` (its ckpt.pt, on the CPU), or a one-line ConfigError saying why there
    is none to use: no such run, no checkpoint yet, an unreadable file, or a file this repository did not write."""
    path = Path(run_dir) / CKPT
    if not path.is_file():
        what = "has no checkpoint (ckpt.pt): train it with python train.py ... train.out_dir=" if Path(
            run_dir).is_dir() else "does not exist: give a run directory (a train.out_dir), e.g. "
        raise ConfigError(f"{run_dir} {what}{run_dir if Path(run_dir).is_dir() else 'out/default'}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or not set(SAVED) <= set(ckpt):
        raise ConfigError(f"{path} is not a checkpoint of this repository (it lacks"
                          f" {', '.join(k for k in SAVED if not isinstance(ckpt, dict) or k not in ckpt)})")
    return ckpt


def run_config(ckpt: dict) -> Config:
    """The config a checkpoint was trained with, read in today's keys."""
    return from_flat(with_defaults(ckpt["config"]))


# What a fork may not change: every key that fixes a parameter's shape or existence.
SHAPE_KEYS = ("model.n_layer", "model.n_embd", "model.block_size", "model.vocab_size", "model.bias", "model.norm",
              "model.tie_embeddings")


def parent(cfg: Config) -> dict:
    """The checkpoint that train.init_from names, checked against `cfg` before any compute: same parameter
    shapes (a differing key is named), the same optimizer when its state is taken, and steps left to train."""
    t = cfg.train
    if Path(t.init_from).resolve() == Path(t.out_dir).resolve():
        raise ConfigError(f"train.init_from={t.init_from} is this run's own train.out_dir: a fork writes a new run"
                          f" (to continue this one, use train.resume=auto)")
    ckpt = read(t.init_from)
    theirs, ours = with_defaults(ckpt["config"]), flat_dict(cfg)
    changed = [f"{k} (parent {theirs[k]!r}, this run {ours[k]!r})" for k in SHAPE_KEYS if theirs[k] != ours[k]]
    if changed:
        raise ConfigError(f"train.init_from={t.init_from}: a fork keeps the parent's shapes, but {', '.join(changed)}"
                          f" differ")
    if t.init_from_optim and theirs["optim.name"] != ours["optim.name"]:
        raise ConfigError(f"train.init_from={t.init_from}: optim.name differs (parent {theirs['optim.name']}, this run"
                          f" {ours['optim.name']}), so its optimizer state does not fit; set train.init_from_optim=false"
                          f" to take the weights only")
    if ckpt["step"] >= t.max_iters:
        raise ConfigError(f"train.init_from={t.init_from} is at step {ckpt['step']}: a fork continues from there, so"
                          f" train.max_iters={t.max_iters} must exceed it")
    return ckpt


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
