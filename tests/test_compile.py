"""torch.compile as train.py uses it: the model compiles once per process, and evaluation (no grad, eval
mode, a ragged last batch) never makes it compile again."""

import torch

import train
from tests.conftest import TINY_RUN, overrides

COMPILE = torch.compile


def compiles(monkeypatch, out, data, **extra) -> int:
    """How many graphs dynamo hands its backend during a run (an eager backend: seconds, not minutes)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model: COMPILE(model, backend=backend))
    torch._dynamo.reset()
    train.main(overrides({**TINY_RUN, "data.dataset": data, "train.out_dir": out, "train.compile": True, **extra}))
    return len(graphs)


def test_evaluation_does_not_recompile(tmp_path, tiny_corpus, monkeypatch):
    one_step = compiles(monkeypatch, tmp_path / "a", tiny_corpus, **{"train.max_iters": 1})
    with_evals = compiles(monkeypatch, tmp_path / "b", tiny_corpus, **{"train.max_iters": 6, "train.eval_interval": 2,
                                                                       "train.eval_windows": 7})
    assert one_step >= 1 and with_evals == one_step
