"""Batches of token windows from a prepared directory, as a pure function of (seed, split, step).

No loader state means nothing to checkpoint: a resumed run, or a run on a different number of GPUs
replaying the same ranks, sees exactly the batches it would have seen.
"""

import fcntl
from pathlib import Path

import numpy as np
import torch

from data.format import DTYPE, SPLITS, default_dir, is_prepared, read_meta


def resolve_data_dir(dataset, tokenizer):
    """`dataset` is a corpus NAME (its default prepared directory for `tokenizer`) or a directory path."""
    if dataset in ("openwebtext", "stdlib"):
        return default_dir(dataset, tokenizer)
    return Path(dataset).expanduser()


def ensure_offline_corpus(tokenizer, ranks_file=None):
    """Prepare the stdlib corpus if it is not there yet (offline, seconds); returns its directory.

    A file lock makes concurrent first runs (test workers, several jobs on one machine) prepare it once."""
    data_dir = default_dir("stdlib", tokenizer)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / f".{data_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_prepared(data_dir):
            from data.prepare import prepare  # imports datasets; only paid for when there is work to do

            prepare("stdlib", tokenizer=tokenizer, ranks_file=ranks_file)
    return data_dir


def open_dataset(data_dir, block_size=None):
    """meta.json of a finished directory whose splits each hold at least one (block_size + 1)-token window."""
    meta = read_meta(data_dir)
    for split in SPLITS:
        if block_size is not None and meta[f"{split}_tokens"] < block_size + 1:
            raise ValueError(
                f"{Path(data_dir) / split}.bin has {meta[f'{split}_tokens']} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; use a smaller block_size or a larger corpus"
            )
    return meta


class TokenBatches:
    """Random windows of one split: step `step`'s global batch is `batch_size` windows drawn from (seed, split,
    step) alone. Ranks and micro-batches take slices of it, so any split of the batch (1 or 8 ranks,
    micro-batch 4 or 24) trains on the same samples, and a resume may change the split."""

    def __init__(self, data_dir, split, block_size, batch_size, seed):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.meta = open_dataset(data_dir, block_size)
        self.path = Path(data_dir) / f"{split}.bin"
        self.n_tokens = self.meta[f"{split}_tokens"]
        self.split_id = SPLITS.index(split)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed

    def offsets(self, step):
        """Window starts of the global batch, uniform over [0, n_tokens - block_size - 1]."""
        rng = np.random.default_rng([self.seed, self.split_id, step, 0, 0])
        return rng.integers(0, self.n_tokens - self.block_size, size=self.batch_size)

    def get(self, step, index=0, size=None):
        """(x, y), int64 tensors (size, block_size): micro-batch `index` of size `size` (default: the whole
        batch) of step `step`."""
        size = size or self.batch_size
        # A fresh read-only memmap per batch: a long-lived one lets its pages pile up in the process's
        # memory (nanoGPT's note on the memmap leak), while reopening costs microseconds.
        data = np.memmap(self.path, dtype=DTYPE, mode="r")
        starts = self.offsets(step)[index * size : (index + 1) * size]
        windows = torch.from_numpy(np.stack([data[i : i + self.block_size + 1] for i in starts]).astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class FixedWindows:
    """The validation set: `n` windows of a split drawn once from their own seed, the same for every run of a
    corpus and block size whatever its train.seed, ranks or micro-batch. shard(rank, world, size) yields this
    rank's windows in batches of at most `size`; together the ranks cover every window exactly once."""

    def __init__(self, data_dir, split, block_size, n, seed):
        self.windows = TokenBatches(data_dir, split, block_size, n, seed)

    def shard(self, rank, world, size):
        x, y = self.windows.get(step=0)
        x, y = x[rank::world], y[rank::world]
        for i in range(0, len(x), size):
            yield x[i : i + size], y[i : i + size]
