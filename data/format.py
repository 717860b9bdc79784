"""What a prepared data directory is, and how to tell a finished one from a broken one.

A prepared directory holds train.bin and val.bin (token ids as uint16, documents concatenated, each
followed by EOT) and meta.json. data.prepare writes meta.json last, so a directory whose meta.json
exists and agrees with the sizes of both .bin files is finished; anything else must be rebuilt. This
module stays free of heavy imports: train.py reads it on every start.
"""

import json
from pathlib import Path

import numpy as np

DTYPE = np.uint16
SPLITS = ("train", "val")
CORPORA = ("openwebtext", "stdlib", "files")
PREPARED_ROOT = Path(__file__).resolve().parent / "prepared"  # data/prepared/, git-ignored


def default_dir(name, tokenizer):
    """Where `python -m data.prepare NAME --tokenizer TOKENIZER` writes when no --out is given."""
    return PREPARED_ROOT / f"{name}-{tokenizer}"


def prepare_command(data_dir, meta=None):
    """The command that (re)builds `data_dir`, for error messages."""
    data_dir = Path(data_dir)
    if meta is not None:
        name, tokenizer = meta["source"]["name"], meta["tokenizer"]
    else:
        name, _, tokenizer = data_dir.name.rpartition("-")
    if name not in CORPORA:
        return f"python -m data.prepare NAME --out {data_dir}"
    command = f"python -m data.prepare {name} --tokenizer {tokenizer}"
    if name == "files":
        command += " --input PATH ..."
    if data_dir.resolve() != default_dir(name, tokenizer).resolve():
        command += f" --out {data_dir}"
    return command


def read_meta(data_dir):
    """meta.json of a finished directory; a clear error naming the fix for anything else."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        what = "is not a finished prepared directory" if data_dir.is_dir() else "does not exist"
        raise FileNotFoundError(f"{data_dir} {what} (no meta.json); make it with: {prepare_command(data_dir)}")
    try:
        meta = json.loads(meta_path.read_text())
        sizes = {split: meta[f"{split}_tokens"] * np.dtype(DTYPE).itemsize for split in SPLITS}
        command = prepare_command(data_dir, meta)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path} is unreadable ({e!r}); re-run: {prepare_command(data_dir)} --force") from e
    for split, expected in sizes.items():
        path = data_dir / f"{split}.bin"
        found = path.stat().st_size if path.is_file() else None
        if found != expected:
            raise ValueError(
                f"{path} is truncated or corrupt ({found} bytes, meta.json says {expected}); re-run: {command} --force"
            )
    return meta


def is_prepared(data_dir):
    try:
        read_meta(data_dir)
    except (OSError, ValueError):
        return False
    return True
