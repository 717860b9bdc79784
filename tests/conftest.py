import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # the repo runs from its root
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

import pytest  # noqa: E402

TINY_RUN = {  # a run that takes well under a second per step on one CPU thread
    "model.n_embd": 32, "model.head_dim": 16, "model.n_layer": 2, "model.block_size": 16,
    "model.vocab_size": 256, "data.tokenizer": "bytes", "train.batch_size": 4, "train.micro_batch_size": 4,
    "train.max_iters": 6, "train.eval_interval": 3, "train.eval_windows": 8, "train.log_interval": 1,
    "train.ckpt_interval": 3, "train.device": "cpu", "optim.warmup_iters": 2,
}


def overrides(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A prepared byte-level corpus of a few dozen standard-library files, in a temporary directory."""
    import sysconfig

    from data.prepare import prepare

    root = tmp_path_factory.mktemp("corpus")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "hf"))
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf" / "datasets"))
        return prepare("files", out=root / "prepared", tokenizer="bytes", inputs=[str(f) for f in files],
                       val_fraction=0.1, num_proc=1)


def tree_digest(root) -> dict:
    """{relative path: sha256} of every file under `root`: equal before and after means nothing changed."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


TINY_MODEL = {"model.n_embd": 64, "model.head_dim": 16, "model.n_layer": 2, "model.block_size": 16,
              "model.vocab_size": 64, "data.tokenizer": "bytes"}


def tiny(**extra):
    """A validated config of a model small enough to build in milliseconds."""
    from config import load_config

    return load_config(None, {**TINY_MODEL, **extra})


def tokens(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.model.vocab_size, (B, cfg.model.block_size), generator=g)


def run_inprocess(out, data, **extra) -> dict:
    """train.main on TINY_RUN with `extra` set; returns the run's run.json."""
    import json

    import train

    train.main(overrides({**TINY_RUN, "data.dataset": data, "train.out_dir": out, **extra}))
    return json.loads((Path(out) / "run.json").read_text())


def losses(out) -> dict:
    """{step: train_loss} of a run's metrics.jsonl."""
    import json

    return {r["step"]: r["train_loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in r}


def same(a, b) -> bool:
    """Equal bit for bit, through the lists and dicts of an optimizer's state."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for rule in a:
        assert a[rule]["param_groups"] == b[rule]["param_groups"], rule
        assert a[rule]["state"].keys() == b[rule]["state"].keys(), rule
        for i, s in a[rule]["state"].items():
            assert same(s, b[rule]["state"][i]), (rule, i)
