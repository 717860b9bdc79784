"""What a sweep's runs came to, from their run.json records and DIR/sweep.json (the sweep's plan): which runs
are not finished, the final validation loss of each row (one width, depth, training horizon or batch size of
one panel) at each swept value, each row's optimum, and how far the optima spread. A row with unfinished runs
only has a provisional optimum, which the spread leaves out: the optimum of half a row says nothing about
transfer. A sweep of the LR (or weight decay) against a second hyperparameter (weight decay, init std, a
multiplier) is a 2-D grid: each row then holds a loss per (x, y) and its optimum is a point of that grid.
No torch here, so that summarizing a sweep is quick and works anywhere the records are copied to.
"""

import dataclasses
import math
import typing
from collections import defaultdict
from pathlib import Path

from config import KEYS, check_type, flatten, with_defaults
from experiments.grid import LOG2, read_plan, run_name
from trainer.run_record import DONE, FINISHED, RUN_JSON, read_evals, read_record

# Vary without making a new row or panel: where a run is, its seed, how it is logged (log.*: wandb's group and
# name differ between a sweep's runs).
NOT_SETTINGS = ("train.out_dir", "train.seed", "train.resume", *(k for k in KEYS if k.startswith("log.")))
UNSCORED = "unscored"  # the status of a done run that has no loss on the corpus asked for (--eval-data)
# What a row is, the first of these that the sweep varies: (axis name, row label).
SIZES = {"model.n_embd": ("width", "n"), "model.n_layer": ("depth", "L"), "train.max_iters": ("horizon", "steps"),
         "train.batch_size": ("batch", "B")}
X_NAMES = {key: name for name, key in LOG2.items()}  # optim.lr -> log2_lr
NOT_HYPERPARAMETERS = ("scaling.base_width", "scaling.base_depth")  # they define the base shape


class ResultsError(ValueError):
    """Nothing to summarize: no records, or nothing swept to summarize against."""


@dataclasses.dataclass
class Result:
    """One run of a sweep, as far as it got."""
    name: str
    status: str | None  # run.json's status; None: no run.json yet
    settings: dict  # its flat config, every key of config.KEYS
    loss: float  # final validation loss; NaN unless done

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def from_record(name: str, record: dict) -> Result:
    """A record written before a config key existed has that key's default (what it trained with), so that a
    key added while a sweep runs does not split the sweep in two."""
    flat = flatten(record["config"])
    loss = record.get("final_val_loss") if record.get("status") == DONE else None
    return Result(name, record.get("status"), with_defaults(flat),
                  math.nan if loss is None else float(loss))


def eval_loss(evals: list[dict], dataset: str, recorded: dict) -> float | None:
    """The validation loss on `dataset` (its name or directory, as given to --eval-data or scripts/evaluate.py
    --data) that the run of run.json `recorded` has in its evals.jsonl `evals`: the latest one measured at its
    final step over its own validation windows (train.eval_windows from train.eval_seed); None if none is."""
    t = with_defaults(flatten(recorded.get("config", {})))

    def same(line: dict) -> bool:
        spelled = line.get("dataset") == dataset or Path(line.get("data_dir", "")).resolve() == Path(dataset).resolve()
        return spelled and (line.get("step"), line.get("windows"), line.get("eval_seed")) == (
            recorded.get("step"), t["train.eval_windows"], t["train.eval_seed"])

    return next((line["val_loss"] for line in reversed(evals) if same(line)), None)


def planned(overrides: dict, recorded: list[tuple[dict, Result]]) -> dict:
    """The settings of a run without a record yet: those of the recorded run most like it (same swept keys,
    most values in common), with its own overrides. Not its base file re-read: that may have moved or
    changed since the sweep started."""
    def likeness(item):
        other = item[0]
        return other.keys() == overrides.keys(), sum(other.get(k) == v for k, v in overrides.items())

    template = max(recorded, key=likeness)[1].settings
    return {**template, **{k: check_type(k, v, KEYS[k].type) for k, v in overrides.items() if k in KEYS}}


def scored(result: Result, record: dict, run_dir: Path, dataset: str | None) -> Result:
    """`result` with its loss on `dataset` instead of its final validation loss (eval_loss); a done run
    without one is UNSCORED, so that its row is provisional, as for a run not done yet."""
    if dataset is None or result.status != DONE:
        return result
    loss = eval_loss(read_evals(run_dir), dataset, record)
    if loss is None:
        return dataclasses.replace(result, status=UNSCORED, loss=math.nan)
    return dataclasses.replace(result, loss=float(loss))


def load_results(sweep_dir: Path, eval_data: str | None = None) -> list[Result]:
    """Every run DIR/sweep.json plans, in its order, those without a run.json included; without a
    sweep.json, every DIR/**/run.json. With `eval_data`, each run's loss is its score on that corpus."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    if plan is None:
        records = {str(p.parent.relative_to(sweep_dir)): read_record(p.parent) for p in sorted(sweep_dir.rglob(RUN_JSON))}
        results = [scored(from_record(name, r), r, sweep_dir / name, eval_data) for name, r in records.items()
                   if r.get("config")]
        if not results:
            raise ResultsError(f"no run.json under {sweep_dir}")
        return results
    records = {name: read_record(sweep_dir / name) for name in plan}
    recorded = [(plan[name], scored(from_record(name, r), r, sweep_dir / name, eval_data))
                for name, r in records.items() if r.get("config")]
    if not recorded:
        raise ResultsError(f"none of the {len(plan)} runs of {sweep_dir} has a run.json yet")
    results = {result.name: result for _, result in recorded}
    return [results.get(name) or Result(name, records[name].get("status"), planned(overrides, recorded), math.nan)
            for name, overrides in plan.items()]


def unfinished(results: list[Result]) -> dict[str, list[str]]:
    """{status: names} of the runs that are not done or diverged; "no run.json" for those not started."""
    out = defaultdict(list)
    for r in results:
        if not r.finished:
            out[r.status or "no run.json"].append(r.name)
    return dict(out)


def log2(value: float) -> int | float:
    x = round(math.log2(value), 6)
    return int(x) if x.is_integer() else x


def hyperparameter(key: str) -> bool:
    """A base hyperparameter: a tunable value of the optim or scaling section (the LR, weight decay, init std,
    multipliers, ...), not a choice (parameterization, optimizer, schedule) nor the base shape."""
    if key.split(".")[0] not in ("optim", "scaling") or key in NOT_HYPERPARAMETERS:
        return False
    return typing.get_origin(KEYS[key].type) is not typing.Literal and not any(
        typing.get_origin(t) is typing.Literal for t in typing.get_args(KEYS[key].type))


def y_name(key: str) -> str:
    """How a second swept hyperparameter is named in tables and summary.json: log2_wd, init_std, alpha_out."""
    return X_NAMES.get(key) or key.rsplit(".", 1)[-1]


def y_value(key: str, value):
    """Its value as tables and summary.json show it: log2 for the log2 shorthands, else as set."""
    return log2(value) if key in X_NAMES else value


def varying(results: list[Result]) -> list[str]:
    """The config keys that differ between runs (seeds, output directories and resume aside)."""
    return [k for k in KEYS if k not in NOT_SETTINGS and len({repr(r.settings[k]) for r in results}) > 1]


def axes(results: list[Result]) -> tuple[str, str, list[str]]:
    """(size key, swept hyperparameter key, keys that tell panels apart), from what varies across runs."""
    keys = varying(results)
    size = next((k for k in SIZES if k in keys), "model.n_embd")
    x = next((k for k in X_NAMES if k in keys), None)
    if x is None:
        raise ResultsError(f"the runs vary neither {' nor '.join(X_NAMES)}: nothing to plot against")
    return size, x, [k for k in keys if k not in (size, x, "scaling.parameterization")]


def grid_axes(results: list[Result]) -> tuple[str, str, str | None, list[str]]:
    """(size key, x key, y key or None, panel keys): as axes(), and the second swept hyperparameter of a 2-D
    grid (LR x weight decay, LR x init std, LR x a multiplier), the first numeric one the sweep varies besides
    x; None for a 1-D sweep."""
    size, x, panel_keys = axes(results)
    numeric = lambda k: all(isinstance(r.settings[k], (int, float)) and not isinstance(r.settings[k], bool)  # noqa: E731
                            for r in results)
    y = next((k for k in panel_keys if hyperparameter(k) and numeric(k)), None)
    return size, x, y, [k for k in panel_keys if k != y]


@dataclasses.dataclass
class Row:
    """One width or depth of one panel."""
    losses: dict  # log2 x -> final val loss, seeds averaged; NaN if any seed diverged or has no loss yet
    unfinished: list  # the log2 x values with a run that is not done or diverged


def panel_rows(results: list[Result], size: str, x: str, panel_keys: list[str], y: str | None = None) -> dict[str, dict]:
    """{panel label: {size: Row}}, panels in the sweep's order, rows and columns sorted. With a y key (a 2-D
    grid) a Row's losses and unfinished cells are keyed by (log2 x, y value)."""
    cells = defaultdict(list)
    for r in results:
        s = r.settings
        label = s["scaling.parameterization"]
        if panel_keys:  # e.g. "mup,norm=none"
            label += "," + run_name({k: s[k] for k in panel_keys})
        xv = log2(s[x])
        cells[label, s[size], xv if y is None else (xv, y_value(y, s[y]))].append(r)
    panels = defaultdict(lambda: defaultdict(lambda: Row({}, [])))
    for (label, n, xv), runs in cells.items():
        row = panels[label][n]
        row.losses[xv] = math.fsum(r.loss for r in runs) / len(runs)
        if not all(r.finished for r in runs):
            row.unfinished.append(xv)
    return {label: {n: Row(dict(sorted(row.losses.items())), sorted(row.unfinished)) for n, row in sorted(rows.items())}
            for label, rows in panels.items()}


def optimum(row: Row, x_name: str) -> dict:
    """The row's best x and its loss (None where no run has a loss). A row with unfinished runs gets the best
    so far, marked provisional, with the x values still to come."""
    finite = {xv: loss for xv, loss in row.losses.items() if math.isfinite(loss)}
    best = min(finite, key=finite.get) if finite else None
    out = {x_name: best, "loss": finite.get(best), "provisional": bool(row.unfinished)}
    if row.unfinished:
        out["unfinished"] = row.unfinished
    return out


def vertex(row: Row) -> float | None:
    """The optimum between grid points: the vertex of the parabola through the best x and its two neighbours
    (in log2 x), to 2 decimals; None for an unfinished row, or where the best x has no finite neighbour on
    either side or the three points do not curve upwards."""
    finite = {xv: loss for xv, loss in row.losses.items() if math.isfinite(loss)}
    xs = sorted(row.losses)
    if row.unfinished or not finite:
        return None
    i = xs.index(min(finite, key=finite.get))
    if i == 0 or i == len(xs) - 1 or not all(x in finite for x in xs[i - 1 : i + 2]):
        return None
    (x0, x1, x2), (y0, y1, y2) = xs[i - 1 : i + 2], [finite[x] for x in xs[i - 1 : i + 2]]
    d = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / d
    return round(-b / (2 * a), 2) if a > 0 else None


def summarize(panels: dict[str, dict], axis: str, x_name: str) -> dict:
    """summary.json: per panel, each row's optimum, and the spread (max - min) of the optimal x over the
    complete rows; `incomplete` lists the rows left out of it. `<x>_fit`: each row's optimum between grid
    points (vertex()), which shows a drift smaller than the grid's step."""
    summary = {}
    for label, rows in panels.items():
        optima = {str(n): optimum(row, x_name) for n, row in rows.items()}
        xs = [b[x_name] for b in optima.values() if not b["provisional"] and b[x_name] is not None]
        summary[label] = {"axis": axis, "optima": optima, "spread": max(xs) - min(xs) if xs else None,
                          "incomplete": [n for n, b in optima.items() if b["provisional"]],
                          f"{x_name}_fit": {str(n): vertex(row) for n, row in rows.items()}}
    return summary


def optimum_2d(row: Row, x_name: str, y_name_: str) -> dict:
    """A 2-D row's best (x, y), its loss, and the best x on each line of constant y (`by_y`: the optimum per
    heatmap row); provisional as in optimum()."""
    finite = {cell: loss for cell, loss in row.losses.items() if math.isfinite(loss)}
    best = min(finite, key=finite.get) if finite else (None, None)
    out = {x_name: best[0], y_name_: best[1], "loss": finite.get(best), "provisional": bool(row.unfinished)}
    by_y = {}
    for yv in sorted({cell[1] for cell in row.losses}):
        line = {xv: loss for (xv, y), loss in finite.items() if y == yv}
        bx = min(line, key=line.get) if line else None
        by_y[str(yv)] = {x_name: bx, "loss": line.get(bx)}
    out["by_y"] = by_y
    if row.unfinished:
        out["unfinished"] = [list(cell) for cell in row.unfinished]
    return out


def spread(values: list):
    return max(values) - min(values) if values else None


def summarize_2d(panels: dict[str, dict], axis: str, x_name: str, y_name_: str) -> dict:
    """summary.json of a 2-D grid: per panel, each row's 2-D optimum (with the best x per y), the spread of
    the optimal x over the complete rows (`spread`, as for a 1-D sweep), of the optimal y (`y_spread`), and of
    the best x at each y (`spread_by_y`): whether the optimum moves as the model grows."""
    summary = {}
    for label, rows in panels.items():
        optima = {str(n): optimum_2d(row, x_name, y_name_) for n, row in rows.items()}
        complete = [b for b in optima.values() if not b["provisional"] and b[x_name] is not None]
        ys = sorted({yv for b in optima.values() for yv in b["by_y"]}, key=lambda v: float(v))
        summary[label] = {
            "axis": axis, "y_axis": y_name_, "optima": optima,
            "spread": spread([b[x_name] for b in complete]), "y_spread": spread([b[y_name_] for b in complete]),
            "spread_by_y": {yv: spread([b["by_y"][yv][x_name] for b in complete
                                        if b["by_y"].get(yv, {}).get(x_name) is not None]) for yv in ys},
            "incomplete": [n for n, b in optima.items() if b["provisional"]],
        }
    return summary
