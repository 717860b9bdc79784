"""Tune small, train big: the hyperparameters a finished sweep found best, carried to a larger model.

Under muP the base hyperparameters (the LR, weight decay, init std and multipliers at the base shape) mean
the same thing at every shape: the scaling table turns them into each tensor's values. So the values a sweep
found best at its base shape are the values to train any larger model of the same parameterization and base
shape with. `tune` reads them off a sweep's records and refuses, with a one-line TransferError, whatever would
make them meaningless: an optimum on the grid's edge (the best value may lie beyond it), a row not finished or
lost to divergence, an SP sweep (its values hold at the shape they were tuned at only), and a sweep of another
parameterization or base shape than the target. `differences` lists what else differs between the tuned runs
and the target (training horizon, batch, sequence length, any other setting): these are warnings, the file is
still written. `transfer_yaml` writes the result as a run config that inherits the target.
"""

import dataclasses
import math
import os
from collections import defaultdict
from pathlib import Path

from config import KEYS, Config, flat_dict
from experiments.grid import LOG2, yaml_scalar
from experiments.results import NOT_SETTINGS, Result, hyperparameter, log2, varying
from trainer.run_record import DONE, FINISHED

SHAPE = ("model.n_embd", "model.n_layer")  # what a row of the sweep is; the target's may be anything
BASE = ("scaling.base_width", "scaling.base_depth")
PARAM = "scaling.parameterization"
HORIZON = {  # differences that do not stop the transfer but may move the optimum: warned about by name
    "train.max_iters": "training horizon (steps)",
    "train.batch_size": "batch (sequences per step)",
    "model.block_size": "sequence length",
}
# Settings that do not change what is trained: never warned about.
BOOKKEEPING = (*NOT_SETTINGS, "train.micro_batch_size", "train.eval_interval", "train.eval_windows", "train.eval_seed",
               "train.log_interval", "train.ckpt_interval", "train.stop_after", "train.device", "train.compile",
               "model.activation_checkpointing", *(k for k in KEYS if k.startswith("log.")))
MARK = "# Written by scripts/transfer.py"  # the first line of every file it writes; others are not overwritten
LOG2_NAMES = {key: name for name, key in LOG2.items()}


class TransferError(ValueError):
    """The sweep cannot give the target its hyperparameters; the message says why, in one line."""


@dataclasses.dataclass
class Tuned:
    values: dict  # config key -> the tuned base value (optim.lr: 0.03125, ...)
    row: str  # the row they come from: "n=64 L=2 (base shape)" or "every row (n=32 L=2, n=128 L=2)"
    loss: float  # the optimum's final validation loss (seeds averaged; the first row's in agreement mode)
    settings: dict  # the flat config of a run at the optimum: what differences() compares the target with
    others: dict  # row label -> its optimum {key: value}, the rows that were not used (complete ones only)


def shape_label(shape: tuple) -> str:
    return f"n={shape[0]} L={shape[1]}"


def value_text(key: str, value) -> str:
    """`log2_lr=-5 (optim.lr=0.03125)`, `scaling.init_std=0.01`."""
    if key in LOG2_NAMES and isinstance(value, (int, float)) and value > 0:
        return f"{LOG2_NAMES[key]}={log2(value)} ({key}={value:g})"
    return f"{key}={value}"


def point_text(point: dict) -> str:
    return ", ".join(value_text(k, v) for k, v in point.items())


def select(results: list[Result], target: dict) -> list[Result]:
    """The runs of the sweep that match the target: its parameterization, its base shape, and its value of any
    other setting the sweep varies that is neither a shape nor a hyperparameter (e.g. model.norm, optim.name,
    train.max_iters)."""
    target_param = target[PARAM]
    params = list(dict.fromkeys(r.settings[PARAM] for r in results))
    if target_param == "sp":
        raise TransferError("the target is SP: under SP no hyperparameter transfers across shapes; tune it at its"
                            " own shape (an SP LR sweep), or use scaling.parameterization=mup")
    if params == ["sp"]:
        raise TransferError("the sweep is SP: its optimum holds at the shapes it was tuned at only, nothing"
                            " transfers; sweep under muP (scaling.parameterization=mup) at the base shape")
    if target_param not in params:
        raise TransferError(f"the sweep's parameterization ({', '.join(params)}) differs from the target's"
                            f" ({target_param}): its tuned values are base values of other scaling rules")
    results = [r for r in results if r.settings[PARAM] == target_param]
    shapes = list(dict.fromkeys(tuple(r.settings[k] for k in BASE) for r in results))
    want = tuple(target[k] for k in BASE)
    if want not in shapes:
        have = " or ".join(f"({w}, {d})" for w, d in shapes)
        raise TransferError(f"the sweep's base shape (scaling.base_width, scaling.base_depth) = {have} differs from"
                            f" the target's ({want[0]}, {want[1]}): tuned values are base values at the base shape;"
                            f" give the target scaling.base_width={shapes[0][0]} scaling.base_depth={shapes[0][1]}")
    results = [r for r in results if tuple(r.settings[k] for k in BASE) == want]
    for key in varying(results):
        if key in SHAPE or hyperparameter(key):
            continue
        values = list(dict.fromkeys(r.settings[key] for r in results))
        if target[key] not in values:
            raise TransferError(f"the sweep varies {key} ({', '.join(map(str, values))}) and the target's"
                                f" {target[key]} is none of them: set {key} to one of them")
        results = [r for r in results if r.settings[key] == target[key]]
    return results


@dataclasses.dataclass
class Row:
    """One shape of the sweep: its runs grouped by grid point (the tuned keys' values)."""
    shape: tuple
    cells: dict  # point (tuple of values, in `keys` order) -> list of Result (seeds)

    def loss(self, point) -> float:
        """Seeds averaged; NaN unless every seed is done."""
        runs = self.cells[point]
        return math.fsum(r.loss for r in runs) / len(runs)


def rows_of(results: list[Result], keys: list[str]) -> dict[tuple, Row]:
    rows = defaultdict(lambda: defaultdict(list))
    for r in results:
        shape = tuple(r.settings[k] for k in SHAPE)
        rows[shape][tuple(repr(r.settings[k]) for k in keys)].append(r)
    return {shape: Row(shape, dict(cells)) for shape, cells in sorted(rows.items())}


def point_values(row: Row, point: tuple, keys: list[str]) -> dict:
    first = row.cells[point][0].settings
    return {k: first[k] for k in keys}


def row_optimum(row: Row, keys: list[str]) -> tuple:
    """The row's best grid point, or a TransferError saying why the row has none that can be trusted."""
    label = shape_label(row.shape)
    pending = [r for runs in row.cells.values() for r in runs if r.status not in FINISHED]
    if pending:
        statuses = sorted({r.status or "no run.json" for r in pending})
        raise TransferError(f"row {label} of the sweep is incomplete: {len(pending)} of"
                            f" {sum(map(len, row.cells.values()))} runs are not finished ({', '.join(statuses)});"
                            f" rerun the sweep to finish them")
    finite = {p: row.loss(p) for p in row.cells if math.isfinite(row.loss(p))}
    if not finite:
        raise TransferError(f"row {label} of the sweep diverged: none of its runs finished with a loss")
    best = min(finite, key=finite.get)
    for point, runs in row.cells.items():  # a seed that diverged where another seed beat the optimum
        losses = [r.loss for r in runs if r.status == DONE]
        if point != best and len(losses) < len(runs) and losses and min(losses) < finite[best]:
            raise TransferError(f"row {label}: at {point_text(point_values(row, point, keys))} a seed diverged"
                                f" while another reached {min(losses):.4g}, below the optimum's {finite[best]:.4g}:"
                                f" the optimum is not reliable")
    for i, key in enumerate(keys):  # the optimum must be bracketed along every swept numeric key
        line = [p for p in row.cells if all(p[j] == best[j] for j in range(len(keys)) if j != i)]
        values = [point_values(row, p, keys)[key] for p in line]
        value = point_values(row, best, keys)[key]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue  # a choice such as optim.nesterov has no edge
        values.sort()
        if len(values) < 2 or value in (values[0], values[-1]):
            side = ("the only value swept there" if len(values) < 2 else
                    "the smallest value swept" if value == values[0] else "the largest value swept")
            raise TransferError(f"the optimum of row {label} sits at the edge of the grid: {value_text(key, value)}"
                                f" is {side}; the best value may lie beyond it: widen the grid and rerun the sweep")
    return best, finite[best]


def tune(results: list[Result], target: Config) -> Tuned:
    """The tuned values of every hyperparameter the sweep varies, at its optimum: that of the base-shape row
    if the sweep has one, else the one every row agrees on."""
    flat = flat_dict(target)
    results = select(results, flat)
    keys = [k for k in varying(results) if hyperparameter(k)]
    if not keys:
        raise TransferError("the sweep varies no hyperparameter (optim.*, scaling.* values): nothing was tuned")
    rows = rows_of(results, keys)
    base = (flat["scaling.base_width"], flat["scaling.base_depth"])
    if base in rows:
        row = rows[base]
        best, loss = row_optimum(row, keys)
        others = {}
        for shape, other in rows.items():
            if shape != base:
                try:
                    others[shape_label(shape)] = point_values(other, row_optimum(other, keys)[0], keys)
                except TransferError:
                    pass  # an unfinished or edge row elsewhere says nothing against the base row's optimum
        return Tuned(point_values(row, best, keys), f"{shape_label(base)} (base shape)", loss,
                     row.cells[best][0].settings, others)
    optima = {shape: row_optimum(row, keys) for shape, row in rows.items()}
    points = {shape: point_values(rows[shape], best, keys) for shape, (best, _) in optima.items()}
    distinct = list(dict.fromkeys(repr(p) for p in points.values()))
    if len(distinct) > 1:
        listed = "; ".join(f"{shape_label(s)}: {point_text(p)}" for s, p in points.items())
        raise TransferError(f"the sweep has no base-shape row ({shape_label(base)}) and its rows disagree on the"
                            f" optimum ({listed}): nothing to transfer")
    shape = next(iter(rows))
    best = optima[shape][0]
    return Tuned(points[shape], f"every row ({', '.join(map(shape_label, rows))})", optima[shape][1],
                 rows[shape].cells[best][0].settings, {})


def differences(tuned: Tuned, target: Config) -> list[str]:
    """Warnings: what the target trains differently from the runs the values were tuned with."""
    flat, ref = flat_dict(target), tuned.settings
    out = []
    for key, what in HORIZON.items():
        if flat[key] != ref[key]:
            out.append(f"the {what} differs: the sweep used {key}={ref[key]}, the target {flat[key]}; muP transfers"
                       f" across width and depth, not across {what.split(' (')[0]}: the optimum may move")
    skip = {*SHAPE, *BASE, PARAM, *HORIZON, *tuned.values, *BOOKKEEPING}
    other = [f"{k} ({ref[k]} -> {flat[k]})" for k in KEYS if k not in skip and flat[k] != ref.get(k)]
    if other:
        out.append(f"other settings differ from the sweep's: {', '.join(other)}")
    disagree = {label: p for label, p in tuned.others.items() if p != tuned.values}
    if disagree:
        listed = "; ".join(f"{label}: {point_text(p)}" for label, p in disagree.items())
        out.append(f"the sweep's other rows have other optima ({listed}): the values may not transfer exactly")
    return out


def relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def transfer_yaml(target_path: Path, out: Path, tuned: Tuned, overrides: dict, sweep_dir: Path,
                  command: str) -> str:
    """FILE.yaml: `base:` the target, then the tuned keys, then the overrides, as flat `section.key: value`
    lines (read_yaml reads them as the nested form)."""
    lines = [f"{MARK} from the sweep {sweep_dir}: the best base hyperparameters of its row {tuned.row}",
             f"# (final val loss {tuned.loss:.4f}), for the target's shape; its scaling rules set every tensor's value.",
             f"#   {command}",
             f"# Train it: python train.py {out}",
             f"base: {relative(target_path, out.parent)}",
             "# tuned by the sweep"]
    for key, value in tuned.values.items():
        note = f"  # 2^{log2(value)}" if key in LOG2_NAMES and isinstance(value, float) and value > 0 else ""
        lines.append(f"{key}: {yaml_scalar(value)}{note}")
    if overrides:
        lines.append("# overrides")
        lines += [f"{key}: {yaml_scalar(value)}" for key, value in overrides.items()]
    return "\n".join(lines) + "\n"


def per_role(table) -> list[tuple]:
    """(role, tensors, optimizer, lr, init_std, multiplier, weight decay) per role of the scaling table, each
    value listed once (`a / b` where tensors of one role differ)."""
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    groups = defaultdict(list)
    for t in table:
        groups[t.role].append(t)

    def values(ts, attr):
        return " / ".join(dict.fromkeys(t.optimizer if attr == "optimizer" else fmt(getattr(t, attr)) for t in ts))

    return [(role, str(len(ts)), *(values(ts, a) for a in ("optimizer", "lr", "init_std", "multiplier", "weight_decay")))
            for role, ts in groups.items()]


def format_rows(rows: list[tuple]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
