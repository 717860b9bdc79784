"""Atomic file writes: a reader, a sweep or a resumed run sees the old file or the new one, never half of
one. Write to a temporary name in the same directory, flush to disk, then rename over the target."""

import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it replaces `path` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj, indent=1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")
