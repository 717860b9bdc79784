"""experiments/: sweep files expanded into named, validated runs (grid), their cost (cost), and what the runs
came to (results); and the layering: libraries import neither train.py nor scripts/, results needs no torch."""

import ast
import math
import subprocess
import sys

import pytest
import yaml

from config import ConfigError, parse_overrides
from experiments import cost, grid, results
from tests.conftest import ROOT


def write_sweep(path, grid_, overrides=None, **extra):
    spec = {"base": str(ROOT / "configs" / "default.yaml"), "grid": grid_, "overrides": overrides or {}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_expanded_in_file_order_with_stable_names(tmp_path):
    g = {"scaling.parameterization": ["sp", "mup"], "model.n_embd": [32, 64], "log2_lr": [-7, -6.5]}
    path = write_sweep(tmp_path / "s.yaml", g, {"model.head_dim": 16}, seeds=[1, 2])
    runs = grid.load_sweep(path, tmp_path / "out").runs
    assert [r.name for r in runs] == [r.name for r in grid.load_sweep(path, tmp_path / "out").runs]
    assert len(runs) == 16
    assert [r.name for r in runs[:3]] == [
        "parameterization=sp,n_embd=32,log2_lr=-7,seed=1",
        "parameterization=sp,n_embd=32,log2_lr=-7,seed=2",
        "parameterization=sp,n_embd=32,log2_lr=-6.5,seed=1",
    ]
    assert runs[-1].name == "parameterization=mup,n_embd=64,log2_lr=-6.5,seed=2"
    first = runs[0]
    assert first.overrides == {"model.head_dim": 16, "scaling.parameterization": "sp", "model.n_embd": 32,
                               "optim.lr": 2**-7, "train.seed": 1}
    assert first.config.optim.lr == 2**-7 and runs[2].config.optim.lr == 2**-6.5
    assert first.dir == tmp_path / "out" / first.name and first.config.train.out_dir == str(first.dir)


def test_a_list_of_grids_is_concatenated(tmp_path):
    g = [{"scaling.parameterization": ["sp"], "log2_lr": [-13, -12]},
         {"scaling.parameterization": ["mup"], "log2_wd": [-4]}]
    runs = grid.load_sweep(write_sweep(tmp_path / "s.yaml", g), tmp_path).runs
    assert [r.name for r in runs] == ["parameterization=sp,log2_lr=-13", "parameterization=sp,log2_lr=-12",
                                      "parameterization=mup,log2_wd=-4"]
    assert runs[2].config.optim.weight_decay == 2**-4


@pytest.mark.parametrize("value", [1e-5, 2.0**-20, "/a/b=c,d", "true", [0.9, 0.95], None, ""])
def test_values_reach_train_py_unchanged(value):
    assert parse_overrides([f"k={grid.yaml_scalar(value)}"]) == {"k": value}


@pytest.mark.parametrize("text, message", [
    ("base: ../default.yaml\ngrid:\n  log2_lr: [-7\n", "line 4: YAML syntax error"),
    ("base: missing.yaml\ngrid:\n  log2_lr: [-7]\n", "base: config file not found"),
    ("base: ../default.yaml\ngrid:\n  model.n_emb: [32]\n", "grid: unknown config key 'model.n_emb' (did you mean"
                                                           " model.n_embd?)"),
    ("base: ../default.yaml\ngrid:\n  log2_lr: [-7]\noverrides:\n  log2_wd: -3\n", "overrides: unknown config key"),
    ("base: ../default.yaml\ngrid:\n  log2_lr: [-7]\nseed: [1]\n", "(unknown: seed)"),
    ("base: ../default.yaml\nmodel:\n  n_embd: 64\n", "is a run config, not a sweep"),
    ("base: ../default.yaml\ncoord:\n  axis: width\n", "is a coordinate-check config"),
])
def test_what_is_not_a_valid_sweep_file_is_named_in_one_line(tmp_path, text, message):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "default.yaml").write_text((ROOT / "configs" / "default.yaml").read_text())
    path = tmp_path / "sweeps" / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        grid.load_sweep(path, tmp_path / "out")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_flop_count_is_6n_plus_attention():
    """The dry run's FLOPs per token: 6 x (matmul parameters, LM head included) + 12 L n T."""
    cfg = grid.load_sweep(ROOT / "configs" / "sweeps" / "width.yaml", ROOT / "out").runs[-1].config
    n, L, T, V = cfg.model.n_embd, cfg.model.n_layer, cfg.model.block_size, cfg.model.vocab_size
    matmul_params = L * 12 * n * n + V * n
    expected = 6 * matmul_params + 12 * L * n * T
    assert cost.train_flops(cfg) / (1221 * 240 * T) == pytest.approx(expected, rel=2e-3)
    assert cost.gpu_hours(cost.PEAK * cost.MFU * 3600) == pytest.approx(1.0)


def result(loss, status="done", n=32, x=-7):
    return results.Result("r", status, {"model.n_embd": n, "optim.lr": 2.0**x, "scaling.parameterization": "mup"},
                          loss if status == "done" else math.nan)


def test_a_row_with_unfinished_runs_has_a_provisional_optimum_outside_the_spread():
    rows = {32: results.Row({-8: 2.5, -7: 2.4, -6: 2.6}, []), 64: results.Row({-8: 2.3, -7: math.nan}, [-7])}
    summary = results.summarize({"mup": rows}, "width", "log2_lr")["mup"]
    assert summary["optima"]["32"] == {"log2_lr": -7, "loss": 2.4, "provisional": False}
    assert summary["optima"]["64"] == {"log2_lr": -8, "loss": 2.3, "provisional": True, "unfinished": [-7]}
    assert summary["spread"] == 0 and summary["incomplete"] == ["64"]
    rows[64] = results.Row({-8: 2.3, -7: math.nan}, [])  # -7 diverged: the row is complete
    assert results.summarize({"mup": rows}, "width", "log2_lr")["mup"]["spread"] == 1


def test_seeds_average_and_any_unfinished_seed_makes_a_hole():
    runs = [result(2.0, n=32), result(3.0, n=32), result(2.0, n=64), result(None, "interrupted", n=64)]
    rows = results.panel_rows(runs, "model.n_embd", "optim.lr", [])["mup"]
    assert rows[32] == results.Row({-7: 2.5}, []) and math.isnan(rows[64].losses[-7]) and rows[64].unfinished == [-7]
    assert results.unfinished(runs) == {"interrupted": ["r"]}


def imports(path):
    """The modules a Python file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_tests_share_helpers_through_conftest_only():
    for path in (ROOT / "tests").glob("test_*.py"):
        bad = {m for m in imports(path) if m.startswith("tests.test_")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("module", ["experiments.results", "plot"])
def test_summarizing_a_sweep_needs_no_torch(module):
    code = (f"import sys; sys.argv = ['x']; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'scripts')!r}];"
            f" import {module}; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
