"""Checkpoints: one file per run (out_dir/ckpt.pt, replaced atomically), and the strict rule for resuming one.

A resume continues the same trajectory or does not start: every setting that changes training must equal the
checkpoint's. What may differ is what only changes how the run is watched or launched (below): a resumed
run then ends with the same weights, losses and final numbers as one that went straight through.
"""

from pathlib import Path

import torch

from atomic import atomic_path
from config import Config, ConfigError, flat_dict, with_defaults

CKPT = "ckpt.pt"
# Keys a resume may change: intervals of logging, evaluation and checkpoints, where to stop this time, the
# micro-batch (the global batch and its samples are fixed; ranks and micro-batches only split it), and
# activation recomputation. Prefixes end with a dot.
FREE = ("train.log_interval", "train.eval_interval", "train.ckpt_interval", "train.stop_after",
        "train.micro_batch_size", "train.out_dir", "train.resume", "model.activation_checkpointing", "log.")


def is_free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE)


def differences(saved: dict, cfg: Config) -> list[str]:
    """'key: checkpoint A vs config B' for every trajectory setting that differs."""
    ours, saved = flat_dict(cfg), with_defaults(saved)
    return [f"{k}: checkpoint {saved[k]!r} vs config {ours[k]!r}" for k in ours if not is_free(k) and saved[k] != ours[k]]


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


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
