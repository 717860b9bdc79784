"""Tables, figure and transfer summary of a sweep: python scripts/plot.py DIR [DIR ...] [--out OUTDIR] [--eval-data DATASET]

Reads DIR/sweep.json's runs and their run.json records (every DIR/**/run.json where there is no sweep.json).
Runs are grouped into panels by parameterization (and by any other setting the sweep varies besides the ones
below); within a panel, one row (a curve) per width or depth (or training horizon, or batch size: the first of
these that varies), final validation loss against log2 of the swept hyperparameter (the LR; the weight decay
if that is what varies), seeds averaged. Several DIRs are read as one sweep (e.g. an SP sweep and a muP sweep
of the same model: a panel each). Writes to OUTDIR (default DIR; required with several):

    table_<panel>.md, .csv   the paper's tables: rows width n or depth L, columns log2 LR, cells final
                             validation loss; NaN where a run diverged or failed (any seed) or is not done
    lr_sweep.png, .pdf       a panel per parameterization, a curve per width/depth, each optimum starred
                             (hollow where provisional)
    summary.json             per panel and width/depth: the optimal log2 LR and its loss, and their spread

A 2-D grid (the LR against a second hyperparameter: log2_wd, scaling.init_std, scaling.alpha_out, ...) gives
instead tables with a row per (width, y), `lr_<y>_sweep.png/.pdf`: a heatmap per parameterization (rows) and
width (columns), x = log2 LR, y = the second hyperparameter, each line's best LR boxed and the optimum boxed
thick; and in summary.json each width's 2-D optimum (`log2_lr`, the y value, `loss`), the best LR per y
(`by_y`), and the spreads of both over widths (`spread`, `y_spread`, `spread_by_y`).

The spread (max - min over widths/depths of the optimal log2 LR) is the number that says whether the LR
transfers: the paper's muP width sweep has spread 1, SP's has 3. On an unfinished sweep the script lists the
runs that are not done; a row with any of them has a provisional optimum, left out of the spread.

--eval-data DATASET puts each run's loss on a second corpus in place of the final validation loss: the one
`sweep.py --eval-data DATASET` recorded in the run's evals.jsonl (at its final step, on its own validation
windows); a done run without one counts as not finished. Default OUTDIR: DIR/eval_NAME (NAME: DATASET's
last path component).
"""

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo runs from its root, uninstalled
from atomic import atomic_path, write_json, write_text  # noqa: E402
from experiments.results import (  # noqa: E402
    SIZES, X_NAMES, ResultsError, grid_axes, load_results, panel_rows, summarize, summarize_2d, unfinished, y_name,
)

TITLES = {"sp": "SP", "mup": "μP (k≥2)", "mup_k1": "μP (k=1)", "mup_width": "width-only μP"}
Y_HEADROOM = 3.0  # the figure shows losses up to the best one + this; exploded runs go off the top
LISTED = 20  # unfinished runs listed by name; the rest are counted


def report_unfinished(results: list, eval_data: str | None = None) -> None:
    """Say which runs are not done (or not scored on `eval_data`) yet, so that a table with holes is not read as
    a finished sweep."""
    pending = unfinished(results)
    count = sum(map(len, pending.values()))
    if not count:
        return
    scored = f" or scored on {eval_data}" if eval_data else ""
    print(f"the sweep is not finished: {count} of {len(results)} runs are not done{scored} (NaN in the tables;"
          f" their rows' optima are provisional and left out of the spread); the same sweep.py command"
          f"{f' with --eval-data {eval_data}' if eval_data else ''} runs them:")
    listed = [(status, name) for status, names in pending.items() for name in names]
    for status, name in listed[:LISTED]:
        print(f"  {status:<12} {name}")
    if count > LISTED:
        print(f"  ... and {count - LISTED} more")


def table_rows(rows: dict, row_label: str) -> list[list[str]]:
    """The paper's table: a row per width/depth, a column per log2 x, 3 decimals, NaN for no loss."""
    columns = sorted({xv for row in rows.values() for xv in row.losses})
    fmt = lambda v: f"{v:.3f}" if math.isfinite(v) else "NaN"  # noqa: E731
    return [[row_label, *map(str, columns)]] + [
        [str(n), *(fmt(row.losses.get(xv, math.nan)) for xv in columns)] for n, row in rows.items()
    ]


def table_rows_2d(rows: dict, row_label: str, y_label: str) -> list[list[str]]:
    """A 2-D grid's table: a row per (width/depth, y), a column per log2 x."""
    columns = sorted({xv for row in rows.values() for xv, _ in row.losses})
    fmt = lambda v: f"{v:.3f}" if math.isfinite(v) else "NaN"  # noqa: E731
    out = [[row_label, y_label, *map(str, columns)]]
    for n, row in rows.items():
        for yv in sorted({y for _, y in row.losses}):
            out.append([str(n), str(yv), *(fmt(row.losses.get((xv, yv), math.nan)) for xv in columns)])
    return out


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|---" * len(rows[0]) + "|", *lines[1:]]) + "\n"


def csv(rows: list[list[str]]) -> str:
    return "".join(",".join(row) + "\n" for row in rows)


def figure(panels: dict, summary: dict, size: str, x_name: str, loss_label: str) -> plt.Figure:
    sizes = sorted({n for rows in panels.values() for n in rows})
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))))
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    finite = [v for rows in panels.values() for r in rows.values() for v in r.losses.values() if math.isfinite(v)]
    for ax, (label, rows) in zip(axs[0], panels.items()):
        for n, row in rows.items():
            pts = [(xv, v) for xv, v in row.losses.items() if math.isfinite(v)]  # diverged points left out
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, color=colors[n], label=f"{SIZES[size][1]}={n}")
            best = summary[label]["optima"][str(n)]
            if best[x_name] is not None:  # a hollow star: provisional, the row is not finished
                ax.plot(best[x_name], best["loss"], "*", ms=13, color=colors[n], mec="black", mew=0.6,
                        mfc="none" if best["provisional"] else colors[n])
        head, *rest = label.split(",")
        ax.set_title(", ".join([TITLES.get(head, head), *rest]))
        ax.set_xlabel(f"log$_2$ {'learning rate' if x_name == 'log2_lr' else 'weight decay'}")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(loss_label)
    if finite:
        lo = min(finite)
        axs[0][0].set_ylim(lo - 0.1, min(max(finite), lo + Y_HEADROOM) + 0.1)
    axs[0][-1].legend(title=SIZES[size][0], fontsize=8)
    fig.tight_layout()
    return fig


def heatmaps(panels: dict, summary: dict, size: str, x_name: str, y_label: str, loss_label: str) -> plt.Figure:
    """A heatmap per panel (rows of the figure) and width/depth (columns): final loss over (log2 x, y), the
    best x of each y line boxed thin, the optimum boxed thick (dashed where provisional), diverged or missing
    cells grey. The colour scale is shared and ends Y_HEADROOM above the best loss."""
    sizes = sorted({n for rows in panels.values() for n in rows})
    xs = sorted({xv for rows in panels.values() for r in rows.values() for xv, _ in r.losses})
    ys = sorted({yv for rows in panels.values() for r in rows.values() for _, yv in r.losses})
    finite = [v for rows in panels.values() for r in rows.values() for v in r.losses.values() if math.isfinite(v)]
    lo = min(finite) if finite else 0.0
    hi = min(max(finite), lo + Y_HEADROOM) if finite else 1.0
    cmap = plt.cm.viridis_r.with_extremes(bad="0.8")
    fig, axs = plt.subplots(len(panels), len(sizes), figsize=(0.55 * len(xs) * len(sizes) + 2.2,
                            0.45 * len(ys) * len(panels) + 1.4 * len(panels)), squeeze=False)
    image = None
    for i, (label, rows) in enumerate(panels.items()):
        head, *rest = label.split(",")
        panel = summary[label]
        for j, n in enumerate(sizes):
            ax = axs[i][j]
            row = rows.get(n)
            grid = np.full((len(ys), len(xs)), np.nan)
            if row is not None:
                for (xv, yv), loss in row.losses.items():
                    grid[ys.index(yv), xs.index(xv)] = loss if math.isfinite(loss) else np.nan
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
            if len(xs) * len(ys) <= 64:
                for (r, c), v in np.ndenumerate(grid):
                    ax.text(c, r, f"{v:.2f}" if math.isfinite(v) else "×", ha="center", va="center", fontsize=6,
                            color="white" if math.isfinite(v) and v > lo + 0.5 * (hi - lo) else "black")
            best = panel["optima"].get(str(n))
            if best is not None:  # dashed where provisional: the row is not finished
                style = {"fill": False, "ec": "red", "ls": "--" if best["provisional"] else "-"}
                at = {str(yv): k for k, yv in enumerate(ys)}  # by_y is keyed by str(y), as JSON keys are
                for yv, b in best["by_y"].items():
                    if b[x_name] is not None:
                        ax.add_patch(Rectangle((xs.index(b[x_name]) - 0.45, at[yv] - 0.45), 0.9, 0.9, lw=1, **style))
                if best[x_name] is not None:
                    ax.add_patch(Rectangle((xs.index(best[x_name]) - 0.5, ys.index(best[y_label]) - 0.5), 1, 1,
                                           lw=2.5, **style))
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
            ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
            ax.set_title(f"{', '.join([TITLES.get(head, head), *rest])}, {SIZES[size][1]}={n}", fontsize=9)
            if i == len(panels) - 1:
                ax.set_xlabel(f"log$_2$ {'learning rate' if x_name == 'log2_lr' else 'weight decay'}")
            if j == 0:
                ax.set_ylabel(y_label)
        moves = (f"best {x_name} spread {panel['spread']}, best {y_label} spread {panel['y_spread']} over"
                 f" {SIZES[size][0]}")
        axs[i][0].annotate(moves, (0, 1), xycoords="axes fraction", xytext=(0, 18), textcoords="offset points",
                           fontsize=8, ha="left", va="bottom")
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axs.ravel().tolist(), label=loss_label, shrink=0.9)
    return fig


def describe_2d(label: str, axis: str, row_label: str, x_name: str, y_label: str, panel: dict) -> str:
    """`mup (width x log2_wd): optimum n=32: (-5, -3)  n=64: (-5, -3)?  -> spread log2_lr 0, log2_wd 0`"""
    best = "  ".join(f"{row_label}={n}: ({b[x_name]}, {b[y_label]}){'?' if b['provisional'] else ''}"
                     for n, b in panel["optima"].items())
    text = (f"{label} ({axis} x {y_label}): optimal ({x_name}, {y_label}) {best}  -> spread {x_name}"
            f" {panel['spread']}, {y_label} {panel['y_spread']}")
    if panel["incomplete"]:
        text += f" (complete rows only; not finished: {', '.join(f'{row_label}={n}' for n in panel['incomplete'])})"
    return text


def describe(label: str, axis: str, row_label: str, x_name: str, panel: dict) -> str:
    """`sp (width): optimal log2_lr n=32: -7  n=64: -8?  -> spread 0 (complete rows only; not finished: n=64)`"""
    best = "  ".join(f"{row_label}={n}: {b[x_name]}{'?' if b['provisional'] else ''}"
                     for n, b in panel["optima"].items())
    text = f"{label} ({axis}): optimal {x_name} {best}  -> spread {panel['spread']}"
    if panel["incomplete"]:
        text += f" (complete rows only; not finished: {', '.join(f'{row_label}={n}' for n in panel['incomplete'])})"
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, nargs="+", help="a sweep directory (scripts/sweep.py --out); several are"
                    " plotted as one sweep (e.g. an SP and a muP sweep of the same model), with --out")
    ap.add_argument("--out", type=Path, help="where tables, figure and summary.json go (default: DIR, or"
                    " DIR/eval_NAME with --eval-data)")
    ap.add_argument("--eval-data", metavar="DATASET", help="the loss on DATASET's val split that sweep.py --eval-data"
                    " DATASET recorded (evals.jsonl), instead of the final validation loss")
    args = ap.parse_args(argv)
    if len(args.dir) > 1 and args.out is None:
        ap.error("several sweep directories need --out")
    try:
        results = [r for d in args.dir for r in load_results(d, args.eval_data)]
        size, x, y, panel_keys = grid_axes(results)
    except ResultsError as e:
        sys.exit(f"plot error: {e}")
    report_unfinished(results, args.eval_data)
    x_name = X_NAMES[x]
    axis, row_label = SIZES[size]
    panels = panel_rows(results, size, x, panel_keys, y)
    out = args.out or (args.dir[0] / f"eval_{Path(args.eval_data).name}" if args.eval_data else args.dir[0])
    loss_label = f"validation loss on {args.eval_data}" if args.eval_data else "final validation loss"
    out.mkdir(parents=True, exist_ok=True)
    if y is not None:
        plot_2d(panels, size, x_name, y_name(y), out, loss_label)
        return
    summary = summarize(panels, axis, x_name)
    for label, rows in panels.items():
        table = table_rows(rows, row_label)
        write_text(out / f"table_{label}.md", markdown(table))
        write_text(out / f"table_{label}.csv", csv(table))
        print(describe(label, axis, row_label, x_name, summary[label]))
    write_json(out / "summary.json", summary)
    fig = figure(panels, summary, size, x_name, loss_label)
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{x_name.removeprefix('log2_')}_sweep.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    print(f"wrote tables, {x_name.removeprefix('log2_')}_sweep.png/.pdf and summary.json to {out}")


def plot_2d(panels: dict, size: str, x_name: str, y_label: str, out: Path, loss_label: str) -> None:
    axis, row_label = SIZES[size]
    summary = summarize_2d(panels, axis, x_name, y_label)
    for label, rows in panels.items():
        table = table_rows_2d(rows, row_label, y_label)
        write_text(out / f"table_{label}.md", markdown(table))
        write_text(out / f"table_{label}.csv", csv(table))
        print(describe_2d(label, axis, row_label, x_name, y_label, summary[label]))
    write_json(out / "summary.json", summary)
    fig = heatmaps(panels, summary, size, x_name, y_label, loss_label)
    stem = f"{x_name.removeprefix('log2_')}_{y_label.removeprefix('log2_')}_sweep"
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    print(f"wrote tables, {stem}.png/.pdf and summary.json to {out}")


if __name__ == "__main__":
    main()
