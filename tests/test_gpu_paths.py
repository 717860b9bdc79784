"""The GPU code paths, exercised on CPU where torch allows: bf16 autocast and torch.compile (inductor)."""

import pytest

from tests.test_train import losses, run_inprocess


def test_bf16_autocast_trains_close_to_fp32(tmp_path, tiny_corpus):
    fp32 = run_inprocess(tmp_path / "fp32", tiny_corpus)
    bf16 = run_inprocess(tmp_path / "bf16", tiny_corpus, **{"train.dtype": "bfloat16"})
    assert bf16["status"] == "done"
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a != b  # autocast really ran in bf16
    assert all(abs(a[s] - b[s]) < 0.1 for s in a)
    assert abs(fp32["final_val_loss"] - bf16["final_val_loss"]) < 0.1


def test_compiled_model_matches_eager(tmp_path, tiny_corpus):
    pytest.importorskip("torch._inductor")
    run_inprocess(tmp_path / "eager", tiny_corpus, **{"train.max_iters": 3})
    run_inprocess(tmp_path / "compiled", tiny_corpus, **{"train.max_iters": 3, "train.compile": True})
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-3 for s in a)
