"""scripts/plot.py: tables, optima and spread from run.json files with known losses; an unfinished sweep's
missing runs, provisional optima and a spread over complete rows only; the figure files."""

import json
import math
import sys

import pytest

from config import from_flat, read_yaml, to_dict
from experiments.grid import expand, run_name
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import plot  # noqa: E402

NAN = math.nan
BASE = read_yaml(ROOT / "configs" / "sweeps" / "tiny_base.yaml")

# Final val losses of seed 1 and seed 2 per (parameterization, width) and log2 LR -8, -7, -6.
WIDTH = {
    ("sp", 32): [(3.0, 3.2), (2.5, 2.7), (2.8, 2.8)],
    ("sp", 64): [(2.4, 2.4), (2.6, 2.5), (2.9, NAN)],  # seed 2 at 2^-6 diverged: the cell is NaN
    ("mup", 32): [(3.1, 3.1), (2.6, 2.6), (2.9, 2.7)],
    ("mup", 64): [(2.7, 2.5), (2.3, 2.3), (2.4, 2.4)],
}


def write_run(sweep_dir, settings, loss, status=None):
    """A run.json as train.py writes it, with the config resolved from tiny_base.yaml and `settings`
    (status None: done if the loss is finite, else diverged; "missing": no run.json at all)."""
    name = run_name(settings)
    overrides = dict(expand(k, v) for k, v in settings.items())
    run_dir = sweep_dir / name
    status = status or ("done" if math.isfinite(loss) else "diverged")
    if status != "missing":
        run_dir.mkdir(parents=True)
        record = {"status": status, "final_val_loss": loss if status == "done" else None,
                  "config": to_dict(from_flat({**BASE, **overrides, "train.out_dir": str(run_dir)}))}
        (run_dir / "run.json").write_text(json.dumps(record))
    return name, overrides


def write_index(sweep_dir, index):
    (sweep_dir / "sweep.json").write_text(json.dumps({"runs": index}))


@pytest.fixture
def width_sweep(tmp_path):
    index = {}
    for (p, n), cells in WIDTH.items():
        for x, seeds in zip((-8, -7, -6), cells):
            for seed, loss in zip((1, 2), seeds):
                name, overrides = write_run(tmp_path, {"scaling.parameterization": p, "model.n_embd": n,
                                                       "log2_lr": x, "train.seed": seed}, loss)
                index[name] = overrides
    write_index(tmp_path, index)
    return tmp_path


def test_tables_and_summary_match_hand_computed_values(width_sweep, tmp_path, capsys):
    out = tmp_path / "plots"
    plot.main([str(width_sweep), "--out", str(out)])
    assert (out / "table_sp.md").read_text() == (
        "| n | -8 | -7 | -6 |\n"
        "|---|---|---|---|\n"
        "| 32 | 3.100 | 2.600 | 2.800 |\n"
        "| 64 | 2.400 | 2.550 | NaN |\n"
    )
    assert (out / "table_mup.csv").read_text() == "n,-8,-7,-6\n32,3.100,2.600,2.800\n64,2.600,2.300,2.400\n"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["sp", "mup"]  # the sweep's order
    sp, mup = summary["sp"], summary["mup"]
    assert sp["axis"] == mup["axis"] == "width"
    assert {n: b["log2_lr"] for n, b in sp["optima"].items()} == {"32": -7, "64": -8} and sp["spread"] == 1
    assert {n: b["log2_lr"] for n, b in mup["optima"].items()} == {"32": -7, "64": -7} and mup["spread"] == 0
    assert sp["optima"]["64"]["loss"] == pytest.approx(2.4) and mup["optima"]["32"]["loss"] == pytest.approx(2.6)
    assert not any(b["provisional"] for b in sp["optima"].values()) and sp["incomplete"] == []
    printed = capsys.readouterr().out
    assert "sp (width): optimal log2_lr n=32: -7  n=64: -8  -> spread 1\n" in printed
    assert "not finished" not in printed


def test_figure_is_a_png_and_a_pdf(width_sweep):
    plot.main([str(width_sweep)])
    assert (width_sweep / "lr_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (width_sweep / "lr_sweep.pdf").read_bytes()[:5] == b"%PDF-"
    assert (width_sweep / "summary.json").exists()


def test_an_unfinished_row_is_provisional_and_left_out_of_the_spread(tmp_path, capsys):
    """SP's optimum is 2^-5 at n = 32 and 64; n = 128 has 2 of its 6 runs done, whose better one is 2^-8.
    Counting it would report spread 3 for a sweep that has shown no drift yet."""
    index, xs = {}, (-8, -7, -6, -5, -4, -3)
    losses = {32: (3.0, 2.8, 2.6, 2.5, 2.7, 3.1), 64: (2.9, 2.7, 2.5, 2.4, 2.6, 3.0)}
    for n, row in losses.items():
        for x, loss in zip(xs, row):
            name, index[name] = write_run(tmp_path, {"model.n_embd": n, "log2_lr": x}, loss)
    left = ["done", "done", "running", "interrupted", "failed", "missing"]
    for x, status in zip(xs, left):
        name, index[name] = write_run(tmp_path, {"model.n_embd": 128, "log2_lr": x}, 2.6 + x / 100, status)
    write_index(tmp_path, index)
    plot.main([str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())["mup"]
    assert summary["spread"] == 0 and summary["incomplete"] == ["128"]
    assert summary["optima"]["32"] == {"log2_lr": -5, "loss": 2.5, "provisional": False}
    assert summary["optima"]["128"] == {"log2_lr": -8, "loss": 2.52, "provisional": True,
                                        "unfinished": [-6, -5, -4, -3]}
    assert (tmp_path / "table_mup.csv").read_text().splitlines()[-1] == "128,2.520,2.530,NaN,NaN,NaN,NaN"
    printed = capsys.readouterr().out
    assert "4 of 18 runs are not done" in printed
    for status, x in zip(left[2:], xs[2:]):
        assert f"  {'no run.json' if status == 'missing' else status:<12} n_embd=128,log2_lr={x}\n" in printed
    assert "n=128: -8?  -> spread 0 (complete rows only; not finished: n=128)" in printed


def test_depth_axis_failed_and_missing_runs(tmp_path, capsys):
    """A depth sweep: rows are L; a failed run and a run with no run.json yet are NaN holes, not errors."""
    index = {}
    for L, losses in ((2, (3.0, 2.0)), (4, (2.9, NAN))):
        for x, loss in zip((-6, -5), losses):
            status = "failed" if math.isnan(loss) else None
            name, index[name] = write_run(tmp_path, {"model.n_layer": L, "log2_lr": x}, loss, status)
    name, index[name] = write_run(tmp_path, {"model.n_layer": 8, "log2_lr": -5}, NAN, "missing")
    write_index(tmp_path, index)
    plot.main([str(tmp_path)])
    assert (tmp_path / "table_mup.md").read_text().splitlines()[0] == "| L | -6 | -5 |"
    assert (tmp_path / "table_mup.csv").read_text() == "L,-6,-5\n2,3.000,2.000\n4,2.900,NaN\n8,NaN,NaN\n"
    summary = json.loads((tmp_path / "summary.json").read_text())["mup"]
    assert summary["axis"] == "depth" and summary["spread"] == 0 and summary["incomplete"] == ["4", "8"]
    assert summary["optima"]["4"] == {"log2_lr": -6, "loss": 2.9, "provisional": True, "unfinished": [-5]}
    assert summary["optima"]["8"] == {"log2_lr": None, "loss": None, "provisional": True, "unfinished": [-5]}
    assert "2 of 5 runs are not done" in capsys.readouterr().out


def test_weight_decay_sweep_is_plotted_against_log2_wd(tmp_path):
    for n, losses in ((32, (2.5, 2.4, 2.6)), (64, (2.2, 2.3, 2.35))):
        for y, loss in zip((-2, -1, 0), losses):
            write_run(tmp_path, {"model.n_embd": n, "log2_wd": y}, loss)
    write_run(tmp_path, {"model.n_embd": 96, "log2_wd": -2}, NAN, "running")
    plot.main([str(tmp_path)])  # no sweep.json: every run.json under the directory
    summary = json.loads((tmp_path / "summary.json").read_text())["mup"]
    assert summary["optima"] == {"32": {"log2_wd": -1, "loss": 2.4, "provisional": False},
                                 "64": {"log2_wd": -2, "loss": 2.2, "provisional": False},
                                 "96": {"log2_wd": None, "loss": None, "provisional": True, "unfinished": [-2]}}
    assert summary["spread"] == 1
    assert (tmp_path / "wd_sweep.png").exists() and (tmp_path / "wd_sweep.pdf").exists()


def test_a_directory_without_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="plot error: no run.json under"):
        plot.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "plots")])
    assert not (tmp_path / "plots").exists()


def test_eval_data_tabulates_each_runs_score_on_that_corpus(tmp_path, capsys):
    """With --eval-data the cells are each run's loss on that corpus, from the evals.jsonl line measured at its
    final step on its own validation windows (not a line of another corpus, step or window count); a done run
    without one is listed and leaves its row provisional. The final validation losses are left alone."""
    index, scores = {}, {(32, -7): 3.3, (32, -6): 3.1, (64, -7): 3.0, (64, -6): None}
    for (n, x), score in scores.items():
        name, index[name] = write_run(tmp_path, {"model.n_embd": n, "log2_lr": x}, 2.0 - x / 10)  # best: -6
        record = json.loads((tmp_path / name / "run.json").read_text())
        record["step"] = record["config"]["train"]["max_iters"]
        (tmp_path / name / "run.json").write_text(json.dumps(record))
        line = {"step": record["step"], "dataset": "other", "data_dir": "/data/other", "windows": 160, "eval_seed": 0}
        lines = [{**line, "dataset": "third", "data_dir": "/data/third", "val_loss": 1.0},
                 {**line, "step": 100, "val_loss": 1.0}, {**line, "windows": 8, "val_loss": 1.0}]
        if score is not None:
            lines.insert(1, {**line, "val_loss": score})
        (tmp_path / name / "evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    write_index(tmp_path, index)
    plot.main([str(tmp_path), "--eval-data", "other"])
    out = tmp_path / "eval_other"
    assert (out / "table_mup.csv").read_text() == "n,-7,-6\n32,3.300,3.100\n64,3.000,NaN\n"
    summary = json.loads((out / "summary.json").read_text())["mup"]
    assert summary["optima"]["64"] == {"log2_lr": -7, "loss": 3.0, "provisional": True, "unfinished": [-6]}
    printed = capsys.readouterr().out
    assert "1 of 4 runs are not done or scored on other" in printed and "unscored     n_embd=64,log2_lr=-6" in printed
    plot.main([str(tmp_path), "--eval-data", "/data/third"])  # the corpus's directory names it too
    assert (tmp_path / "eval_third" / "table_mup.csv").read_text() == "n,-7,-6\n32,1.000,1.000\n64,1.000,1.000\n"
    plot.main([str(tmp_path)])
    assert (tmp_path / "table_mup.csv").read_text() == "n,-7,-6\n32,2.700,2.600\n64,2.700,2.600\n"
