"""Bad input fails before any compute, with one line naming the problem, and leaves every file untouched."""

import os
import subprocess
import sys
import types

import pytest

import train
from config import ConfigError, load_config, validate
from tests.conftest import TINY_RUN, overrides, tree_digest

FILES = {  # written into a fresh directory for every row; rows name them as {name}
    "bad_syntax.yaml": "model:\n  n_layer: 2\n  n_embd: [64\ntrain:\n  max_iters: 3\n",
    "sweep.yaml": "base: plain.yaml\ngrid:\n  log2_lr: [-8, -7]\n",
    "coord.yaml": "coord:\n  axis: width\n  widths: [32, 64]\nmodel:\n  n_layer: 2\n",
    "loop.yaml": "base: loop.yaml\n",
    "list.yaml": "- model.n_layer: 2\n",
    "plain.yaml": "model:\n  n_layer: 2\n",
    "a_file": "not a directory\n",
}

# (id, command-line arguments after the tiny run's own, the message the error must contain)
ROWS = [
    ("unknown key", ["model.n_embed=64"], "unknown config key 'model.n_embed' (did you mean model.n_embd?)"),
    ("unknown section", ["trian.max_iters=3"], "no section 'trian'"),
    ("key is a section", ["model=3"], "model: is a section; set its keys, e.g. model.n_layer"),
    ("not an int", ["train.max_iters=abc"], "train.max_iters: expected int, got 'abc'"),
    ("not a float", ["optim.lr=[1, 2]"], "optim.lr: expected float"),
    ("not a bool", ["train.compile=maybe"], "train.compile: expected bool"),
    ("width vs head_dim", ["model.n_embd=40"], "model.n_embd=40 is not divisible by model.head_dim=16"),
    ("zero multiplier", ["scaling.alpha_attn=0"], "scaling.alpha_attn: must be > 0"),
    ("negative multiplier", ["scaling.alpha_out=-1.0"], "scaling.alpha_out: must be > 0"),
    ("negative lr", ["optim.lr=-0.01"], "optim.lr: must be > 0"),
    ("negative weight decay", ["optim.weight_decay=-1"], "optim.weight_decay: must be >= 0"),
    ("floor above lr", ["optim.min_lr=1.0"], "optim.min_lr=1 exceeds optim.lr"),
    ("dropout of one", ["model.dropout=1.0"], "model.dropout: must be >= 0 and < 1"),
    ("beta of one", ["optim.betas=[0.9, 1.0]"], "optim.betas: must be >= 0 and < 1"),
    ("three betas", ["optim.betas=[0.9, 0.95, 0.99]"], "optim.betas: expected two values"),
    ("stop_after zero", ["train.stop_after=0"], "train.stop_after: must be > 0"),
    ("empty validation set", ["train.eval_windows=0"], "train.eval_windows: must be > 0"),
    ("unknown parameterization", ["scaling.parameterization=ntk"],
     "scaling.parameterization: 'ntk' is not one of sp, mup, mup_k1, mup_width"),
    ("unknown optimizer", ["optim.name=nope"], "optim.name: 'nope' is not one of muon_kimi, muon, "),
    ("batch does not split", ["train.batch_size=6"],
     "train.batch_size=6 is not divisible by train.micro_batch_size=4 x 1 ranks; with 1 ranks use"
     " train.micro_batch_size in {1, 2, 3, 6} (the largest <= 4: 3)"),
    ("malformed override", ["optim.betas=[0.9"], "override optim.betas=[0.9: YAML syntax error"),
    ("override without value", ["{plain.yaml}", "model.n_embd"], "override 'model.n_embd' is not of the form"),
    ("yaml syntax error", ["{bad_syntax.yaml}"], "bad_syntax.yaml line 4: YAML syntax error"),
    ("config not found", ["{missing.yaml}"], "config file not found"),
    ("base chain loops", ["{loop.yaml}"], "`base:` chain loops"),
    ("not a mapping", ["{list.yaml}"], "expected a mapping at the top level"),
    ("sweep file", ["{sweep.yaml}"], "is a sweep file: run it with python scripts/sweep.py"),
    ("coordinate-check file", ["{coord.yaml}"], "is a coordinate-check config: run it with python scripts/coord_check.py"),
    ("no data", ["data.dataset=/nonexistent/corpus"], "make it with: python -m data.prepare"),
    ("vocabulary too small", ["model.vocab_size=100"], "smaller than the data's vocabulary (256, bytes)"),
    ("tokenizer mismatch", ["data.tokenizer=gpt2", "model.vocab_size=50304"], "holds 'bytes' tokens"),
    ("out_dir is a file", ["train.out_dir={a_file}"], "a_file is a file, not a directory"),
    ("out_dir below a file", ["train.out_dir={a_file}/run"], "a_file is a file, not a directory"),
    ("no CUDA", ["train.device=cuda"], "no CUDA device is visible; use train.device=cpu"),
    ("wandb missing", ["log.wandb=true"], "log.wandb=true needs wandb: pip install wandb"),
    ("wandb online, logged out", ["log.wandb=true", "log.wandb_mode=online", "+fake_wandb"],
     "log.wandb_mode=online needs credentials"),
]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A directory holding FILES; returns a function that fills {name} placeholders with their paths."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    def fill(arg: str) -> str:
        for name in [*FILES, "missing.yaml"]:
            arg = arg.replace("{" + name + "}", str(tmp_path / name))
        return arg
    return fill


@pytest.mark.parametrize("args,message", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(args, message, place, tmp_path, tiny_corpus, monkeypatch):
    if "+fake_wandb" in args:  # wandb installed but never logged in
        args = [a for a in args if a != "+fake_wandb"]
        monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(api=types.SimpleNamespace(api_key=None)))
    else:
        monkeypatch.setitem(sys.modules, "wandb", None)  # import fails, as where it is not installed
    args = [place(a) for a in args]
    config = [a for a in args[:1] if "=" not in a]
    run = {**TINY_RUN, "data.dataset": tiny_corpus, "train.out_dir": tmp_path / "out"}
    before = tree_digest(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.main(config + overrides(run) + args[len(config):])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code.strip()  # a message (exit 1), not a trace
    assert message in e.value.code
    assert tree_digest(tmp_path) == before


def test_rows_read_the_same_from_a_shell(tmp_path, tiny_corpus):
    """The table runs train.main in process; from a shell the same input gives exit 1, the message and no
    traceback on stderr."""
    (tmp_path / "bad.yaml").write_text(FILES["bad_syntax.yaml"])
    res = subprocess.run([sys.executable, "train.py", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert res.returncode == 1 and "line 4: YAML syntax error" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "train.py", "optim.betas=[0.9"], capture_output=True, text=True)
    assert res.returncode == 1 and "override optim.betas" in res.stderr and "Traceback" not in res.stderr


def test_table_piped_into_head_ends_quietly():
    """`python -m mup.table ... | head` closes the pipe early: no BrokenPipeError traceback."""
    cmd = f"{sys.executable} -m mup.table configs/owt_base.yaml model.n_layer=256 | head -n 2"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.stdout.count("\n") == 2 and "Traceback" not in res.stderr and "Broken" not in res.stderr
    assert res.returncode == 0


def test_help_lists_every_key_with_type_default_choices_and_doc():
    from config import KEYS

    res = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.startswith("  ") and "." in ln.split()[0]}
    assert set(KEYS) <= set(lines)
    assert "muon_kimi|muon|" in lines["optim.name"] and "|sgd" in lines["optim.name"]
    assert "'muon_kimi'" in lines["optim.name"]
    assert "int" in lines["model.n_layer"] and "= 4" in lines["model.n_layer"] and "depth L" in lines["model.n_layer"]


def test_world_size_must_divide_the_batch_and_the_message_says_what_fits():
    cfg = load_config(None, {**TINY_RUN, "train.batch_size": 8, "train.micro_batch_size": 4})
    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"x 3 ranks; no micro-batch splits 8 sequences over 3 ranks"):
        validate(cfg, world_size=3)


def test_yaml_inheritance_and_typed_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("model:\n  n_layer: 8\n  n_embd: 512\noptim:\n  lr: 0.001\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nmodel:\n  n_embd: 128\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.betas=[0.8, 0.9]", "optim.lr=2e-3", "train.compile=true"])
    assert (cfg.model.n_layer, cfg.model.n_embd) == (8, 128)
    assert cfg.optim.betas == [0.8, 0.9] and cfg.optim.lr == 0.002 and cfg.train.compile is True
