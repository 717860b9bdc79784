"""Bad input fails before any compute, with a message naming the problem, and leaves files untouched."""

import hashlib
import shutil

import pytest

import train
from config import ConfigError, load_config, parse_overrides
from tests.conftest import TINY_RUN, overrides


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    train.main(overrides({**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": out}))
    return out


BAD = [
    ({"model.n_embed": 64}, "unknown config key 'model.n_embed' (did you mean model.n_embd?)"),
    ({"trian.max_iters": 3}, "did you mean train"),
    ({"train.max_iters": "abc"}, "train.max_iters: expected int, got 'abc'"),
    ({"optim.lr": "[1, 2]"}, "optim.lr: expected float"),
    ({"model.n_embd": 40}, "model.n_embd=40 is not divisible by model.head_dim=16"),
    ({"scaling.alpha_attn": 0}, "scaling.alpha_attn: must be > 0"),
    ({"scaling.alpha_out": -1.0}, "scaling.alpha_out: must be > 0"),
    ({"optim.lr": -0.01}, "optim.lr: must be > 0"),
    ({"scaling.parameterization": "ntk"}, "scaling.parameterization: 'ntk' is not one of sp, mup, mup_k1, mup_width"),
    ({"optim.name": "lion"}, "optim.name: 'lion' is not one of"),
    ({"train.batch_size": 6}, "train.batch_size=6 is not divisible by train.micro_batch_size=4"),
    ({"optim.min_lr_ratio": 0.1}, "set exactly one"),
    ({"model": 3}, "model: is a section"),
    ({"data.dataset": "/nonexistent/corpus"}, "make it with: python -m data.prepare"),
    ({"model.vocab_size": 100}, "smaller than the data's vocabulary (256, bytes)"),
    ({"data.tokenizer": "gpt2", "model.vocab_size": 50304}, "holds 'bytes' tokens"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_input_names_the_problem_and_writes_nothing(bad, message, tmp_path, tiny_corpus, capsys):
    out = tmp_path / "never"
    args = {**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": out, **bad}
    with pytest.raises(SystemExit) as e:
        train.main(overrides(args))
    assert message in str(e.value)
    assert not out.exists()


def test_world_size_must_divide_the_batch():
    cfg = load_config(None, {**TINY_RUN, "train.batch_size": 8, "train.micro_batch_size": 4})
    from config import validate

    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match="x 3 ranks"):
        validate(cfg, world_size=3)


def test_truncated_bin(tmp_path, tiny_corpus):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    with open(data / "train.bin", "r+b") as f:
        f.truncate(1000)
    before = digest(data)
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        train.main(overrides({**TINY_RUN, "data.dataset": data, "train.out_dir": tmp_path / "out"}))
    assert digest(data) == before and not (tmp_path / "out").exists()


def test_corrupt_checkpoint_is_refused_and_kept(finished_run, tiny_corpus):
    (finished_run / "ckpt.pt").write_bytes(b"not a checkpoint")
    before = digest(finished_run)
    with pytest.raises(SystemExit, match="ckpt.pt is unreadable"):
        train.main(overrides({**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": finished_run,
                              "train.resume": "auto", "train.max_iters": 9}))
    assert digest(finished_run) == before


@pytest.mark.parametrize("change,message", [
    ({"model.n_embd": 64}, "model.n_embd: checkpoint 32 vs config 64"),
    ({"scaling.parameterization": "sp"}, "scaling.parameterization: checkpoint 'mup' vs config 'sp'"),
    ({"model.norm": "none"}, "model.norm"),
])
def test_checkpoint_of_another_model_is_refused(finished_run, tiny_corpus, change, message):
    before = digest(finished_run)
    with pytest.raises(SystemExit, match=message):
        train.main(overrides({**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": finished_run,
                              "train.resume": "auto", "train.max_iters": 9, **change}))
    assert digest(finished_run) == before


def test_existing_checkpoint_is_not_overwritten_by_a_fresh_run(finished_run, tiny_corpus):
    before = digest(finished_run)
    with pytest.raises(SystemExit, match="train.resume=auto"):
        train.main(overrides({**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": finished_run}))
    assert digest(finished_run) == before


def test_yaml_inheritance_and_typed_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("model:\n  n_layer: 8\n  n_embd: 512\noptim:\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nmodel:\n  n_embd: 128\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.betas=[0.8, 0.9]", "optim.lr=2e-3", "train.compile=true"])
    assert (cfg.model.n_layer, cfg.model.n_embd) == (8, 128)
    assert cfg.optim.betas == [0.8, 0.9] and cfg.optim.lr == 0.002 and cfg.train.compile is True
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["model.n_embd"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
