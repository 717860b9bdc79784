"""Tables, figure and transfer summary of a sweep: python scripts/plot.py DIR [--out OUTDIR]

Reads every DIR/**/run.json (in DIR/sweep.json's order where it lists them). Runs are grouped into panels
by parameterization (and by any other setting the sweep varies besides the ones below); within a panel,
one curve per width or depth (whichever varies), final validation loss against log2 of the swept
hyperparameter (the LR; the weight decay if that is what varies), seeds averaged. Writes to OUTDIR
(default DIR):

    table_<panel>.md, .csv   the paper's tables: rows width n or depth L, columns log2 LR, cells final
                             validation loss; NaN where a run diverged or failed (any seed) or is missing
    lr_sweep.png, .pdf       a panel per parameterization, a curve per width/depth, each optimum starred
    summary.json             per panel and width/depth: the optimal log2 LR and its loss, and their spread

The spread (max - min over widths/depths of the optimal log2 LR) is the number that says whether the LR
transfers: the paper's muP width sweep has spread 1, SP's has 3.
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from atomic import atomic_path, write_json, write_text  # noqa: E402
from config import Config, flat_dict, flatten  # noqa: E402
from sweep import LOG2, SWEEP_JSON, run_name  # noqa: E402

KEYS = list(flat_dict(Config()))
NOT_SETTINGS = ("train.out_dir", "train.seed", "train.resume")  # vary without making a new curve
SIZES = {"model.n_embd": ("width", "n"), "model.n_layer": ("depth", "L")}
X_NAMES = {key: name for name, key in LOG2.items()}  # optim.lr -> log2_lr
TITLES = {"sp": "SP", "mup": "μP (k≥2)", "mup_k1": "μP (k=1)", "mup_width": "width-only μP"}
Y_HEADROOM = 3.0  # the figure shows losses up to the best one + this; exploded runs go off the top


def load_runs(sweep_dir: Path) -> list[dict]:
    """[{"settings": flat config, "loss": final val loss, NaN unless done}] in sweep order."""
    index = sweep_dir / SWEEP_JSON
    if index.exists():
        paths = [sweep_dir / name / "run.json" for name in json.loads(index.read_text())["runs"]]
        missing = [p.parent.name for p in paths if not p.exists()]
        if missing:
            print(f"{len(missing)} runs have no run.json yet (NaN or absent in the tables): {missing[0]} ...")
        paths = [p for p in paths if p.exists()]
    else:
        paths = sorted(sweep_dir.rglob("run.json"))
    runs = []
    for path in paths:
        record = json.loads(path.read_text())
        flat = flatten(record["config"])
        settings = {key: flat.get(key) for key in KEYS}
        loss = record.get("final_val_loss") if record.get("status") == "done" else None
        runs.append({"settings": settings, "loss": math.nan if loss is None else float(loss)})
    if not runs:
        sys.exit(f"no run.json under {sweep_dir}")
    return runs


def log2(value: float) -> int | float:
    x = round(math.log2(value), 6)
    return int(x) if x.is_integer() else x


def axes(runs: list[dict]) -> tuple[str, str, list[str]]:
    """(size key, swept hyperparameter key, keys that tell panels apart), from what varies across runs."""
    varying = [k for k in KEYS if k not in NOT_SETTINGS and len({repr(r["settings"][k]) for r in runs}) > 1]
    size = next((k for k in SIZES if k in varying), "model.n_embd")
    x = next((k for k in X_NAMES if k in varying), None)
    if x is None:
        sys.exit(f"the runs vary neither {' nor '.join(X_NAMES)}: nothing to plot against")
    return size, x, [k for k in varying if k not in (size, x, "scaling.parameterization")]


def losses_by_panel(runs: list[dict], size: str, x: str, panel_keys: list[str]) -> dict:
    """{panel label: {size: {log2 x: mean loss over seeds}}}, panels in order of appearance."""
    seeds = defaultdict(list)
    for r in runs:
        s = r["settings"]
        label = s["scaling.parameterization"]
        if panel_keys:  # e.g. "mup,norm=none"
            label += "," + run_name({k: s[k] for k in panel_keys})
        seeds[label, s[size], log2(s[x])].append(r["loss"])
    panels = defaultdict(lambda: defaultdict(dict))
    for (label, n, xv), values in seeds.items():
        panels[label][n][xv] = float(np.mean(values))  # NaN if any seed diverged or failed
    return {label: {n: dict(sorted(c.items())) for n, c in sorted(curves.items())} for label, curves in panels.items()}


def optima(curves: dict, x_name: str) -> tuple[dict, int | float | None]:
    """Each curve's best (x, loss), and the spread of the best x over the curves."""
    best = {}
    for n, curve in curves.items():
        finite = {xv: loss for xv, loss in curve.items() if math.isfinite(loss)}
        xv = min(finite, key=finite.get) if finite else None
        best[str(n)] = {x_name: xv, "loss": finite.get(xv)}
    xs = [b[x_name] for b in best.values() if b[x_name] is not None]
    return best, (max(xs) - min(xs) if xs else None)


def table_rows(curves: dict, row_label: str) -> list[list[str]]:
    """The paper's table: a row per width/depth, a column per log2 x, 3 decimals, NaN for no loss."""
    columns = sorted({xv for curve in curves.values() for xv in curve})
    fmt = lambda v: f"{v:.3f}" if math.isfinite(v) else "NaN"  # noqa: E731
    return [[row_label, *map(str, columns)]] + [
        [str(n), *(fmt(curve.get(xv, math.nan)) for xv in columns)] for n, curve in curves.items()
    ]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|---" * len(rows[0]) + "|", *lines[1:]]) + "\n"


def csv(rows: list[list[str]]) -> str:
    return "".join(",".join(row) + "\n" for row in rows)


def figure(panels: dict, summary: dict, size: str, x_name: str) -> plt.Figure:
    sizes = sorted({n for curves in panels.values() for n in curves})
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))))
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    finite = [v for curves in panels.values() for c in curves.values() for v in c.values() if math.isfinite(v)]
    for ax, (label, curves) in zip(axs[0], panels.items()):
        for n, curve in curves.items():
            pts = [(xv, v) for xv, v in curve.items() if math.isfinite(v)]  # diverged points left out
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, color=colors[n], label=f"{SIZES[size][1]}={n}")
            best = summary[label]["optima"][str(n)]
            if best[x_name] is not None:
                ax.plot(best[x_name], best["loss"], "*", ms=13, color=colors[n], mec="black", mew=0.6)
        head, *rest = label.split(",")
        ax.set_title(", ".join([TITLES.get(head, head), *rest]))
        ax.set_xlabel(f"log$_2$ {'learning rate' if x_name == 'log2_lr' else 'weight decay'}")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("final validation loss")
    if finite:
        lo = min(finite)
        axs[0][0].set_ylim(lo - 0.1, min(max(finite), lo + Y_HEADROOM) + 0.1)
    axs[0][-1].legend(title=SIZES[size][0], fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a sweep directory (scripts/sweep.py --out)")
    ap.add_argument("--out", type=Path, help="where tables, figure and summary.json go (default: DIR)")
    args = ap.parse_args(argv)
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.dir)
    size, x, panel_keys = axes(runs)
    x_name = X_NAMES[x]
    axis, row_label = SIZES[size]
    panels = losses_by_panel(runs, size, x, panel_keys)
    summary = {}
    for label, curves in panels.items():
        best, spread = optima(curves, x_name)
        summary[label] = {"axis": axis, "optima": best, "spread": spread}
        rows = table_rows(curves, row_label)
        write_text(out / f"table_{label}.md", markdown(rows))
        write_text(out / f"table_{label}.csv", csv(rows))
        per_size = "  ".join(f"{row_label}={n}: {b[x_name]}" for n, b in best.items())
        print(f"{label} ({axis}): optimal {x_name} {per_size}  -> spread {spread}")
    write_json(out / "summary.json", summary)
    fig = figure(panels, summary, size, x_name)
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{x_name.removeprefix('log2_')}_sweep.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    print(f"wrote tables, {x_name.removeprefix('log2_')}_sweep.png/.pdf and summary.json to {out}")


if __name__ == "__main__":
    main()
