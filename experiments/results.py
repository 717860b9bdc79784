"""What a sweep's runs came to, from their run.json records and DIR/sweep.json (the sweep's plan): which runs
are not finished, the final validation loss of each row (one width or depth of one panel) at each swept
value, each row's optimum, and how far the optima spread. A row with unfinished runs only has a provisional
optimum, which the spread leaves out: the optimum of half a row says nothing about transfer. No torch here,
so that summarizing a sweep is quick and works anywhere the records are copied to.
"""

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path

from config import KEYS, check_type, flatten
from experiments.grid import LOG2, run_name

SWEEP_JSON, RUN_JSON = "sweep.json", "run.json"
FINISHED = ("done", "diverged")  # outcomes a rerun keeps; running, interrupted, failed or none: it runs again
INTERRUPTED = "interrupted"  # stopped by a signal at a checkpoint; a rerun resumes it
NOT_SETTINGS = ("train.out_dir", "train.seed", "train.resume")  # vary without making a new row or panel
SIZES = {"model.n_embd": ("width", "n"), "model.n_layer": ("depth", "L")}
X_NAMES = {key: name for name, key in LOG2.items()}  # optim.lr -> log2_lr


class ResultsError(ValueError):
    """Nothing to summarize: no records, or nothing swept to summarize against."""


def read_record(run_dir: Path) -> dict:
    """A run's run.json, or {} where there is none yet (or a torn one)."""
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}


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
    flat = flatten(record["config"])
    loss = record.get("final_val_loss") if record.get("status") == "done" else None
    return Result(name, record.get("status"), {key: flat.get(key) for key in KEYS},
                  math.nan if loss is None else float(loss))


def planned(overrides: dict, recorded: list[tuple[dict, Result]]) -> dict:
    """The settings of a run without a record yet: those of the recorded run most like it (same swept keys,
    most values in common), with its own overrides. Not its base file re-read: that may have moved or
    changed since the sweep started."""
    def likeness(item):
        other = item[0]
        return other.keys() == overrides.keys(), sum(other.get(k) == v for k, v in overrides.items())

    template = max(recorded, key=likeness)[1].settings
    return {**template, **{k: check_type(k, v, KEYS[k].type) for k, v in overrides.items() if k in KEYS}}


def load_results(sweep_dir: Path) -> list[Result]:
    """Every run DIR/sweep.json plans, in its order, those without a run.json included; without a
    sweep.json, every DIR/**/run.json."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_JSON).exists():
        records = {str(p.parent.relative_to(sweep_dir)): read_record(p.parent) for p in sorted(sweep_dir.rglob(RUN_JSON))}
        results = [from_record(name, r) for name, r in records.items() if r.get("config")]
        if not results:
            raise ResultsError(f"no run.json under {sweep_dir}")
        return results
    plan = json.loads((sweep_dir / SWEEP_JSON).read_text())["runs"]
    records = {name: read_record(sweep_dir / name) for name in plan}
    recorded = [(plan[name], from_record(name, r)) for name, r in records.items() if r.get("config")]
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


def axes(results: list[Result]) -> tuple[str, str, list[str]]:
    """(size key, swept hyperparameter key, keys that tell panels apart), from what varies across runs."""
    varying = [k for k in KEYS if k not in NOT_SETTINGS and len({repr(r.settings[k]) for r in results}) > 1]
    size = next((k for k in SIZES if k in varying), "model.n_embd")
    x = next((k for k in X_NAMES if k in varying), None)
    if x is None:
        raise ResultsError(f"the runs vary neither {' nor '.join(X_NAMES)}: nothing to plot against")
    return size, x, [k for k in varying if k not in (size, x, "scaling.parameterization")]


@dataclasses.dataclass
class Row:
    """One width or depth of one panel."""
    losses: dict  # log2 x -> final val loss, seeds averaged; NaN if any seed diverged or has no loss yet
    unfinished: list  # the log2 x values with a run that is not done or diverged


def panel_rows(results: list[Result], size: str, x: str, panel_keys: list[str]) -> dict[str, dict]:
    """{panel label: {size: Row}}, panels in the sweep's order, rows and columns sorted."""
    cells = defaultdict(list)
    for r in results:
        s = r.settings
        label = s["scaling.parameterization"]
        if panel_keys:  # e.g. "mup,norm=none"
            label += "," + run_name({k: s[k] for k in panel_keys})
        cells[label, s[size], log2(s[x])].append(r)
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


def summarize(panels: dict[str, dict], axis: str, x_name: str) -> dict:
    """summary.json: per panel, each row's optimum, and the spread (max - min) of the optimal x over the
    complete rows; `incomplete` lists the rows left out of it."""
    summary = {}
    for label, rows in panels.items():
        optima = {str(n): optimum(row, x_name) for n, row in rows.items()}
        xs = [b[x_name] for b in optima.values() if not b["provisional"] and b[x_name] is not None]
        summary[label] = {"axis": axis, "optima": optima, "spread": max(xs) - min(xs) if xs else None,
                          "incomplete": [n for n, b in optima.items() if b["provisional"]]}
    return summary
