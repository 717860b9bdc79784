"""scripts/transfer.py (tune small, train big) on real tiny sweeps and on synthetic records: the tuned values
of an interior optimum become a run config that trains; every refusal is one line, a nonzero exit and no file;
a different horizon is a warning. And scripts/plot.py on 2-D grids (LR x weight decay, LR x init std) and on
rows of training horizons, from synthetic run.json records."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

import train
from config import flat_dict, from_flat, load_config, read_yaml, to_dict
from experiments import grid, results
from experiments.grid import expand, run_name
from experiments.transfer import MARK
from tests.conftest import ROOT, TINY_RUN

sys.path.insert(0, str(ROOT / "scripts"))
import plot  # noqa: E402
import transfer  # noqa: E402  (scripts/transfer.py)

TRANSFER_PY = [sys.executable, str(ROOT / "scripts" / "transfer.py")]
# ~0.2 s a run on one thread. At 10 steps of 8 x 16 tokens the base shape (32, 2) does best at 2^-4:
# final val losses 2.968, 2.907, 2.966 at 2^-5, 2^-4, 2^-3 (the same under SP: at the base shape SP is muP).
REAL = {**TINY_RUN, "train.max_iters": 10, "train.batch_size": 8, "train.micro_batch_size": 8,
        "train.eval_interval": 1000, "train.eval_windows": 16, "train.log_interval": 10, "train.ckpt_interval": 1000,
        "scaling.base_width": 32, "scaling.base_depth": 2}
LRS = [-5, -4, -3]
WIDE = ["model.n_embd=64", "model.n_layer=4"]  # 2x the base width and depth


@pytest.fixture(scope="module")
def real(tmp_path_factory, tiny_corpus):
    """A finished sweep made as scripts/sweep.py makes one (each run is train.py with the run's key=value
    arguments; DIR/sweep.json lists them), its runs trained in process: SP and muP at the base shape, LR 2^-5,
    2^-4, 2^-3. Returns (sweep directory, target config: the run config the sweep is based on)."""
    root = tmp_path_factory.mktemp("real")
    target = root / "configs" / "target.yaml"
    target.parent.mkdir()
    target.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "default.yaml"), **REAL,
                                      "data.dataset": str(tiny_corpus)}, sort_keys=False))
    spec = root / "configs" / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": "target.yaml", "grid": {"scaling.parameterization": ["sp", "mup"],
                                                                     "log2_lr": LRS}}, sort_keys=False))
    out = root / "sweep"
    sweep = grid.load_sweep(spec, out)
    for run in sweep.runs:
        train.main([str(sweep.base), *grid.train_args(run.overrides, run.dir)])
    (out / "sweep.json").write_text(json.dumps({"sweep": str(spec), "base": str(sweep.base),
                                                "runs": {r.name: r.overrides for r in sweep.runs}}))
    return out, target


def edit_copy(sweep_dir, tmp_path, edit):
    """A copy of the sweep with edit(name, record) applied to each run.json: a record replaces it, None deletes
    it (the run is planned but has no record yet), "drop" takes the run out of the sweep altogether."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    index = json.loads((copy / "sweep.json").read_text())
    for path in sorted(copy.glob("*/run.json")):
        record = edit(path.parent.name, json.loads(path.read_text()))
        if record == "drop":
            shutil.rmtree(path.parent)
            del index["runs"][path.parent.name]
        elif record is None:
            path.unlink()
        else:
            path.write_text(json.dumps(record))
    (copy / "sweep.json").write_text(json.dumps(index))
    return copy


def refused(capsys, args, out, message, code=1, prefix="transfer refused: "):
    assert transfer.main([*args, "--out", str(out)]) == code
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(prefix) and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and captured.out == ""
    assert not out.exists()


def test_an_interior_optimum_becomes_a_config_that_trains(real, tmp_path, capsys):
    sweep_dir, target = real
    out = tmp_path / "cfgs" / "wide.yaml"
    args = [str(sweep_dir), str(target), *WIDE, f"train.out_dir={tmp_path / 'wide'}"]
    assert transfer.main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"tuned at n=32 L=2 (base shape) of {sweep_dir}: log2_lr=-4 (optim.lr=0.0625); final val loss" in printed
    assert "target: mup, muon_kimi: n=64 L=4 (base 32, 2; r_n=2, r_L=2" in printed and "4 heads of 16" in printed
    roles = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith("  ")}
    assert {"role", "input", "hidden", "hidden_vector"} <= set(roles) and roles["hidden"][2] == "muon_kimi"
    assert "tokens: 1,280 = 10 steps x 8 x 16; training FLOPs" in printed and "H100-hours at 40% MFU" in printed
    assert captured.err == ""  # same horizon, batch and sequence as the sweep: no warning
    text = out.read_text()
    assert text.startswith(MARK) and f"\nbase: {os.path.relpath(target, out.parent)}\n" in text
    assert "\noptim.lr: 0.0625  # 2^-4\n" in text and "\nmodel.n_embd: 64\nmodel.n_layer: 4\n" in text
    cfg = load_config(out)
    assert cfg == load_config(target, {"optim.lr": 2**-4, "model.n_embd": 64, "model.n_layer": 4,
                                       "train.out_dir": str(tmp_path / "wide")})
    train.main([str(out)])
    record = json.loads((tmp_path / "wide" / "run.json").read_text())
    assert record["status"] == "done" and record["config"]["optim"]["lr"] == 2**-4
    assert record["config"]["model"]["n_embd"] == 64 and record["config"]["scaling"]["parameterization"] == "mup"


def test_from_a_shell_a_refusal_is_one_line_and_a_horizon_change_a_warning(real, tmp_path):
    sweep_dir, target = real
    edge = edit_copy(sweep_dir, tmp_path, lambda name, r: {**r, "final_val_loss": 1.0} if name.endswith("=-3") else r)
    out = tmp_path / "edge.yaml"
    done = subprocess.run([*TRANSFER_PY, str(edge), str(target), *WIDE, "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stdout == "" and not out.exists()
    assert done.stderr == ("transfer refused: the optimum of row n=32 L=2 sits at the edge of the grid: log2_lr=-3"
                           " (optim.lr=0.125) is the largest value swept; the best value may lie beyond it: widen the"
                           " grid and rerun the sweep\n")
    out = tmp_path / "long.yaml"
    done = subprocess.run([*TRANSFER_PY, str(sweep_dir), str(target), *WIDE, "train.max_iters=40",
                           "train.batch_size=16", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "warning: the training horizon (steps) differs: the sweep used train.max_iters=10, the target 40" in done.stderr
    assert "warning: the batch (sequences per step) differs: the sweep used train.batch_size=8, the target 16" in done.stderr
    assert "sequence length" not in done.stderr and "Traceback" not in done.stderr
    assert load_config(out).optim.lr == 2**-4 and load_config(out).train.max_iters == 40
    assert load_config(out).train.out_dir == "out/long"  # the default: out/<FILE's stem>


def only_mup_diverged(name, record):
    if "parameterization=mup" in name:
        return {**record, "status": "diverged", "final_val_loss": None, "final_train_loss": None}
    return record


@pytest.mark.parametrize("edit, extra, message", [
    (lambda n, r: {**r, "final_val_loss": 1.0} if n == "parameterization=mup,log2_lr=-5" else r, [],
     "sits at the edge of the grid: log2_lr=-5 (optim.lr=0.03125) is the smallest value swept"),
    (lambda n, r: "drop" if "parameterization=mup" in n else r, [], "the sweep is SP: its optimum holds at the"
                                                                     " shapes"),
    (None, ["scaling.parameterization=sp"], "the target is SP: under SP no hyperparameter transfers"),
    (None, ["scaling.parameterization=mup_k1"], "the sweep's parameterization (sp, mup) differs from the target's"
                                                " (mup_k1)"),
    (None, ["scaling.base_width=64"], "the sweep's base shape (scaling.base_width, scaling.base_depth) = (32, 2)"
                                      " differs from the target's (64, 2)"),
    (None, ["scaling.base_depth=4"], "differs from the target's (32, 4)"),
    (lambda n, r: {**r, "status": "running", "final_val_loss": None} if n == "parameterization=mup,log2_lr=-4" else r,
     [], "row n=32 L=2 of the sweep is incomplete: 1 of 3 runs are not finished (running); rerun the sweep"),
    (lambda n, r: None if n == "parameterization=mup,log2_lr=-3" else r, [], "1 of 3 runs are not finished"
                                                                            " (no run.json)"),
    (only_mup_diverged, [], "row n=32 L=2 of the sweep diverged: none of its runs finished with a loss"),
    (None, ["optim.lr=0.01"], "optim.lr is what the sweep tuned: drop the override"),
])
def test_refusals_are_one_line_with_no_file(real, tmp_path, capsys, edit, extra, message):
    sweep_dir, target = real
    source = edit_copy(sweep_dir, tmp_path, edit) if edit else sweep_dir
    refused(capsys, [str(source), str(target), *WIDE, *extra], tmp_path / "out" / "t.yaml", message)


def test_bad_arguments_are_errors_and_nothing_is_overwritten(real, tmp_path, capsys):
    sweep_dir, target = real
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  n_embd: 64\n")
    assert transfer.main([str(sweep_dir), str(target), "--out", str(mine)]) == 2
    assert "exists and was not written by scripts/transfer.py" in capsys.readouterr().err
    assert mine.read_text() == "model:\n  n_embd: 64\n"
    before = target.read_text()
    assert transfer.main([str(sweep_dir), str(target), "--out", str(target)]) == 2
    assert "is the target config itself" in capsys.readouterr().err and target.read_text() == before
    refused(capsys, [str(tmp_path / "nothing"), str(target)], tmp_path / "a.yaml", "no run.json under", 2,
            "transfer error: ")
    refused(capsys, [str(sweep_dir), str(target), "model.n_emb=64"], tmp_path / "a.yaml", "did you mean model.n_embd",
            2, "transfer error: ")
    refused(capsys, [str(sweep_dir), "model.n_embd=64"], tmp_path / "a.yaml", "name the target run config", 2,
            "transfer error: ")
    out = tmp_path / "again.yaml"  # a file it wrote itself is replaced
    assert transfer.main([str(sweep_dir), str(target), "--out", str(out)]) == 0
    assert transfer.main([str(sweep_dir), str(target), "model.n_layer=4", "--out", str(out)]) == 0
    assert load_config(out).model.n_layer == 4


# Synthetic sweeps: run.json records as train.py writes them, configs from tiny_base.yaml (base shape 64, 2).
TINY_BASE = ROOT / "configs" / "sweeps" / "tiny_base.yaml"
BASE = read_yaml(TINY_BASE)


def write_run(sweep_dir, settings, loss, status=None):
    """A run.json with the config resolved from tiny_base.yaml and `settings` (grid shorthands allowed);
    status None: done if the loss is finite, else diverged. Returns (name, overrides) for sweep.json."""
    name = run_name(settings)
    overrides = dict(expand(k, v) for k, v in settings.items())
    run_dir = sweep_dir / name
    run_dir.mkdir(parents=True)
    status = status or ("done" if math.isfinite(loss) else "diverged")
    record = {"status": status, "final_val_loss": loss if status == "done" else None,
              "config": to_dict(from_flat({**BASE, **overrides, "train.out_dir": str(run_dir)}))}
    (run_dir / "run.json").write_text(json.dumps(record))
    return name, overrides


def write_sweep(sweep_dir, cells):
    """cells: [(settings, loss[, status])]; writes every run.json and DIR/sweep.json."""
    index = {}
    for cell in cells:
        name, index[name] = write_run(sweep_dir, *cell)
    (sweep_dir / "sweep.json").write_text(json.dumps({"runs": index}))
    return sweep_dir


def bowl(x, x0, y=None, y0=None):
    """A loss with its minimum at (x0, y0)."""
    return 2.0 + 0.05 * (x - x0) ** 2 + (0.0 if y is None else 0.03 * (y - y0) ** 2)


def test_without_a_base_row_the_rows_must_agree(tmp_path, capsys):
    agree = write_sweep(tmp_path / "agree", [({"model.n_embd": n, "log2_lr": x}, bowl(x, -6) - n / 1000)
                                             for n in (32, 128) for x in (-7, -6, -5)])
    out = tmp_path / "t.yaml"
    assert transfer.main([str(agree), str(TINY_BASE), "model.n_embd=256", "--out", str(out)]) == 0
    assert "tuned at every row (n=32 L=2, n=128 L=2)" in capsys.readouterr().out and load_config(out).optim.lr == 2**-6
    disagree = write_sweep(tmp_path / "disagree", [({"model.n_embd": n, "log2_lr": x}, bowl(x, -6 if n == 32 else -7))
                                                   for n in (32, 128) for x in (-8, -7, -6, -5)])
    refused(capsys, [str(disagree), str(TINY_BASE)], tmp_path / "u.yaml", "has no base-shape row (n=64 L=2) and its"
            " rows disagree on the optimum (n=32 L=2: log2_lr=-6 (optim.lr=0.015625); n=128 L=2: log2_lr=-7"
            " (optim.lr=0.0078125)): nothing to transfer")


def test_other_rows_that_disagree_are_a_warning(tmp_path, capsys):
    sweep_dir = write_sweep(tmp_path / "s", [({"model.n_embd": n, "log2_lr": x}, bowl(x, -6 + (n > 64)))
                                             for n in (64, 256) for x in (-7, -6, -5, -4)])
    assert transfer.main([str(sweep_dir), str(TINY_BASE), "model.n_embd=128", "--out", str(tmp_path / "t.yaml")]) == 0
    captured = capsys.readouterr()
    assert "other rows' optima: n=256 L=2: log2_lr=-5" in captured.out
    assert "warning: the sweep's other rows have other optima (n=256 L=2: log2_lr=-5" in captured.err


def test_a_diverged_seed_below_the_optimum_makes_it_unreliable(tmp_path, capsys):
    cells = [({"log2_lr": x, "train.seed": s}, bowl(x, -6)) for x in (-7, -6, -5) for s in (1, 2)]
    cells[4] = ({"log2_lr": -5, "train.seed": 1}, 1.5)  # seed 1 at 2^-5 beats the optimum, seed 2 diverged
    cells[5] = ({"log2_lr": -5, "train.seed": 2}, math.nan)
    refused(capsys, [str(write_sweep(tmp_path / "s", cells)), str(TINY_BASE)], tmp_path / "t.yaml",
            "at log2_lr=-5 (optim.lr=0.03125) a seed diverged while another reached 1.5, below the optimum's 2")


def test_a_diverged_run_above_the_optimum_brackets_it(tmp_path, capsys):
    cells = [({"log2_lr": x}, bowl(x, -6) if x < -5 else math.nan) for x in (-8, -7, -6, -5)]
    out = tmp_path / "t.yaml"
    assert transfer.main([str(write_sweep(tmp_path / "s", cells)), str(TINY_BASE), "--out", str(out)]) == 0
    assert load_config(out).optim.lr == 2**-6


def test_a_2d_sweep_transfers_both_values_and_refuses_an_edge_on_either(tmp_path, capsys):
    cells = [({"log2_lr": x, "log2_wd": y}, bowl(x, -6, y, -3)) for x in (-7, -6, -5) for y in (-4, -3, -2)]
    out = tmp_path / "t.yaml"
    assert transfer.main([str(write_sweep(tmp_path / "s", cells)), str(TINY_BASE), "--out", str(out)]) == 0
    assert "log2_lr=-6 (optim.lr=0.015625), log2_wd=-3 (optim.weight_decay=0.125)" in capsys.readouterr().out
    assert (load_config(out).optim.lr, load_config(out).optim.weight_decay) == (2**-6, 2**-3)
    cells = [({"log2_lr": x, "log2_wd": y}, bowl(x, -6, y, -2)) for x in (-7, -6, -5) for y in (-4, -3, -2)]
    refused(capsys, [str(write_sweep(tmp_path / "e", cells)), str(TINY_BASE)], tmp_path / "u.yaml",
            "log2_wd=-2 (optim.weight_decay=0.25) is the largest value swept")


def test_a_setting_the_sweep_varies_picks_the_target_slice(tmp_path, capsys):
    """A horizon sweep: the target's train.max_iters picks the row of runs with that horizon."""
    cells = [({"train.max_iters": t, "log2_lr": x}, bowl(x, -5 - (t > 200))) for t in (200, 400)
             for x in (-8, -7, -6, -5, -4)]
    sweep_dir = write_sweep(tmp_path / "s", cells)
    for steps, lr in ((200, 2**-5), (400, 2**-6)):
        out = tmp_path / f"t{steps}.yaml"
        assert transfer.main([str(sweep_dir), str(TINY_BASE), f"train.max_iters={steps}", "--out", str(out)]) == 0
        assert load_config(out).optim.lr == lr
    capsys.readouterr()
    refused(capsys, [str(sweep_dir), str(TINY_BASE), "train.max_iters=800"], tmp_path / "u.yaml",
            "the sweep varies train.max_iters (200, 400) and the target's 800 is none of them")


# scripts/plot.py on 2-D grids and on horizon rows.

def lr_wd_cells():
    """SP's best LR falls with width (-6 at n=32, -7 at n=64), muP's stays at -7; the best log2 WD is -3 for
    both, except muP at n=64, whose WD -3 row diverged at 2^-8 (a hole in the grid)."""
    cells = []
    for p, x0 in (("sp", {32: -6, 64: -7}), ("mup", {32: -7, 64: -7})):
        for n in (32, 64):
            for y in (-4, -3, -2):
                for x in (-8, -7, -6, -5):
                    loss = bowl(x, x0[n], y, -3) - n / 1000
                    if p == "mup" and n == 64 and y == -2 and x == -8:
                        loss = math.nan
                    cells.append(({"scaling.parameterization": p, "model.n_embd": n, "log2_lr": x, "log2_wd": y},
                                  loss))
    return cells


def test_a_2d_grid_gives_heatmaps_tables_and_2d_optima(tmp_path, capsys):
    sweep_dir = write_sweep(tmp_path / "s", lr_wd_cells())
    plot.main([str(sweep_dir)])
    summary = json.loads((sweep_dir / "summary.json").read_text())
    sp, mup = summary["sp"], summary["mup"]
    assert sp["axis"] == "width" and sp["y_axis"] == "log2_wd"
    assert sp["optima"]["32"]["log2_lr"] == -6 and sp["optima"]["32"]["log2_wd"] == -3
    assert sp["optima"]["32"]["loss"] == pytest.approx(2.0 - 0.032) and sp["optima"]["32"]["provisional"] is False
    assert sp["optima"]["64"]["by_y"] == {"-4": {"log2_lr": -7, "loss": pytest.approx(2.03 - 0.064)},
                                          "-3": {"log2_lr": -7, "loss": pytest.approx(2.0 - 0.064)},
                                          "-2": {"log2_lr": -7, "loss": pytest.approx(2.03 - 0.064)}}
    assert (sp["spread"], sp["y_spread"], sp["spread_by_y"]) == (1, 0, {"-4": 1, "-3": 1, "-2": 1})
    assert (mup["spread"], mup["y_spread"], mup["spread_by_y"]) == (0, 0, {"-4": 0, "-3": 0, "-2": 0})
    assert mup["incomplete"] == [] and mup["optima"]["64"]["by_y"]["-2"]["log2_lr"] == -7
    table = (sweep_dir / "table_mup.csv").read_text().splitlines()
    assert table[0] == "n,log2_wd,-8,-7,-6,-5" and len(table) == 1 + 2 * 3
    assert table[-1] == f"64,-2,NaN,{2.03 - 0.064:.3f},{2.08 - 0.064:.3f},{2.23 - 0.064:.3f}"
    assert (sweep_dir / "table_sp.md").read_text().startswith("| n | log2_wd | -8 | -7 | -6 | -5 |\n|---|")
    assert (sweep_dir / "lr_wd_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep_dir / "lr_wd_sweep.pdf").read_bytes()[:5] == b"%PDF-"
    assert not (sweep_dir / "lr_sweep.png").exists()
    printed = capsys.readouterr().out
    assert ("sp (width x log2_wd): optimal (log2_lr, log2_wd) n=32: (-6, -3)  n=64: (-7, -3)  -> spread log2_lr 1,"
            " log2_wd 0\n") in printed


def test_a_2d_grid_of_a_plain_valued_hyperparameter_and_one_width(tmp_path, capsys):
    """LR x init std at one width: y is the value as set; an unfinished cell makes the optimum provisional."""
    cells = [({"log2_lr": x, "scaling.init_std": s}, bowl(x, -6, math.log2(s), -6)) for x in (-7, -6, -5)
             for s in (0.0078125, 0.015625, 0.03125)]
    cells[-1] = (cells[-1][0], math.nan, "running")
    sweep_dir = write_sweep(tmp_path / "s", cells)
    plot.main([str(sweep_dir), "--out", str(tmp_path / "plots")])
    summary = json.loads((tmp_path / "plots" / "summary.json").read_text())["mup"]
    best = summary["optima"]["64"]
    assert summary["y_axis"] == "init_std" and (best["log2_lr"], best["init_std"]) == (-6, 0.015625)
    assert best["provisional"] is True and best["unfinished"] == [[-5, 0.03125]]
    assert summary["spread"] is None and summary["incomplete"] == ["64"]
    assert (tmp_path / "plots" / "lr_init_std_sweep.png").exists()
    assert "the sweep is not finished: 1 of 9 runs" in capsys.readouterr().out


def test_horizon_and_batch_sweeps_have_a_row_per_horizon_or_batch(tmp_path, capsys):
    cells = [({"train.max_iters": t, "log2_lr": x}, bowl(x, {200: -5, 400: -6, 800: -6}[t]) - t / 10000)
             for t in (200, 400, 800) for x in (-8, -7, -6, -5, -4)]
    plot.main([str(write_sweep(tmp_path / "h", cells))])
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())["mup"]
    assert summary["axis"] == "horizon" and summary["spread"] == 1
    assert {t: b["log2_lr"] for t, b in summary["optima"].items()} == {"200": -5, "400": -6, "800": -6}
    assert summary["log2_lr_fit"] == {"200": -5.0, "400": -6.0, "800": -6.0}  # the parabolas' vertices
    assert (tmp_path / "h" / "table_mup.csv").read_text().splitlines()[0] == "steps,-8,-7,-6,-5,-4"
    cells = [({"train.batch_size": b, "log2_lr": x}, bowl(x, -5)) for b in (16, 32) for x in (-6, -5, -4)]
    plot.main([str(write_sweep(tmp_path / "b", cells))])
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["mup"]["axis"] == "batch"
    assert "mup (batch): optimal log2_lr B=16: -5  B=32: -5  -> spread 0" in capsys.readouterr().out


def test_the_shipped_2d_horizon_and_batch_sweeps_are_what_they_say(tmp_path):
    sweeps = ROOT / "configs" / "sweeps"
    horizon = grid.load_sweep(sweeps / "tiny_horizon.yaml", tmp_path).runs
    assert sorted({r.config.train.max_iters for r in horizon}) == [200, 400, 800, 1600] and len(horizon) == 24
    batch = grid.load_sweep(sweeps / "tiny_batch.yaml", tmp_path).runs
    assert sorted({r.config.train.batch_size for r in batch}) == [16, 32, 64] and len(batch) == 18
    for name, y in (("lr_wd", "optim.weight_decay"), ("lr_init", "scaling.init_std"), ("lr_alpha_out", "scaling.alpha_out")):
        for prefix in ("tiny_", ""):
            runs = grid.load_sweep(sweeps / f"{prefix}{name}.yaml", tmp_path).runs
            fake = [results.Result(r.name, "done", flat_dict(r.config), 1.0) for r in runs]
            size, x, y_key, _ = results.grid_axes(fake)
            assert (x, y_key) == ("optim.lr", y), name


def test_the_fitted_optimum_needs_a_finished_row_and_two_finite_neighbours():
    assert results.vertex(results.Row({-7: 2.2, -6: 2.0, -5: 2.1}, [])) == -5.83  # -6 + 0.5 x 0.1 / 0.3
    assert results.vertex(results.Row({-7: 2.2, -6: 2.0, -5: math.nan}, [])) is None
    assert results.vertex(results.Row({-6: 2.0, -5: 2.1}, [])) is None
    assert results.vertex(results.Row({-7: 2.2, -6: 2.0, -5: 2.1}, [-5])) is None


def test_several_sweeps_plot_as_one_and_need_an_out_dir(tmp_path, capsys):
    """An SP sweep and a muP sweep of the same target model: a panel each, in one figure and summary."""
    for p, x0 in (("sp", -6), ("mup", -5)):
        write_sweep(tmp_path / p, [({"scaling.parameterization": p, "model.n_embd": 128, "log2_lr": x}, bowl(x, x0))
                                   for x in (-7, -6, -5, -4)])
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "sp"), str(tmp_path / "mup")])
    assert "several sweep directories need --out" in capsys.readouterr().err
    plot.main([str(tmp_path / "sp"), str(tmp_path / "mup"), "--out", str(tmp_path / "both")])
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert {p: s["optima"]["128"]["log2_lr"] for p, s in summary.items()} == {"sp": -6, "mup": -5}
    assert (tmp_path / "both" / "lr_sweep.png").exists()


def test_a_record_from_before_a_config_key_existed_has_its_default(tmp_path):
    """A key added to config.py while a sweep runs must not split the sweep into two panels."""
    sweep_dir = write_sweep(tmp_path / "s", [({"log2_lr": x}, bowl(x, -6)) for x in (-7, -6, -5)])
    path = sweep_dir / "log2_lr=-7" / "run.json"
    record = json.loads(path.read_text())
    del record["config"]["optim"]["nesterov"]
    path.write_text(json.dumps(record))
    loaded = results.load_results(sweep_dir)
    assert {r.settings["optim.nesterov"] for r in loaded} == {True}
    assert results.axes(loaded) == ("model.n_embd", "optim.lr", [])
