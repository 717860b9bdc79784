"""Tables, figure and transfer summary of a sweep: python scripts/plot.py DIR [--out OUTDIR]

Reads DIR/sweep.json's runs and their run.json records (every DIR/**/run.json where there is no sweep.json).
Runs are grouped into panels by parameterization (and by any other setting the sweep varies besides the ones
below); within a panel, one row (a curve) per width or depth (whichever varies), final validation loss
against log2 of the swept hyperparameter (the LR; the weight decay if that is what varies), seeds averaged.
Writes to OUTDIR (default DIR):

    table_<panel>.md, .csv   the paper's tables: rows width n or depth L, columns log2 LR, cells final
                             validation loss; NaN where a run diverged or failed (any seed) or is not done
    lr_sweep.png, .pdf       a panel per parameterization, a curve per width/depth, each optimum starred
                             (hollow where provisional)
    summary.json             per panel and width/depth: the optimal log2 LR and its loss, and their spread

The spread (max - min over widths/depths of the optimal log2 LR) is the number that says whether the LR
transfers: the paper's muP width sweep has spread 1, SP's has 3. On an unfinished sweep the script lists the
runs that are not done; a row with any of them has a provisional optimum, left out of the spread.
"""

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo runs from its root, uninstalled
from atomic import atomic_path, write_json, write_text  # noqa: E402
from experiments.results import (  # noqa: E402
    SIZES, X_NAMES, ResultsError, axes, load_results, panel_rows, summarize, unfinished,
)

TITLES = {"sp": "SP", "mup": "μP (k≥2)", "mup_k1": "μP (k=1)", "mup_width": "width-only μP"}
Y_HEADROOM = 3.0  # the figure shows losses up to the best one + this; exploded runs go off the top
LISTED = 20  # unfinished runs listed by name; the rest are counted


def report_unfinished(results: list) -> None:
    """Say which runs are not done yet, so that a table with holes is not read as a finished sweep."""
    pending = unfinished(results)
    count = sum(map(len, pending.values()))
    if not count:
        return
    print(f"the sweep is not finished: {count} of {len(results)} runs are not done (NaN in the tables; their"
          f" rows' optima are provisional and left out of the spread); the same sweep.py command runs them:")
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


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|---" * len(rows[0]) + "|", *lines[1:]]) + "\n"


def csv(rows: list[list[str]]) -> str:
    return "".join(",".join(row) + "\n" for row in rows)


def figure(panels: dict, summary: dict, size: str, x_name: str) -> plt.Figure:
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
    axs[0][0].set_ylabel("final validation loss")
    if finite:
        lo = min(finite)
        axs[0][0].set_ylim(lo - 0.1, min(max(finite), lo + Y_HEADROOM) + 0.1)
    axs[0][-1].legend(title=SIZES[size][0], fontsize=8)
    fig.tight_layout()
    return fig


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
    ap.add_argument("dir", type=Path, help="a sweep directory (scripts/sweep.py --out)")
    ap.add_argument("--out", type=Path, help="where tables, figure and summary.json go (default: DIR)")
    args = ap.parse_args(argv)
    try:
        results = load_results(args.dir)
        size, x, panel_keys = axes(results)
    except ResultsError as e:
        sys.exit(f"plot error: {e}")
    report_unfinished(results)
    x_name = X_NAMES[x]
    axis, row_label = SIZES[size]
    panels = panel_rows(results, size, x, panel_keys)
    summary = summarize(panels, axis, x_name)
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    for label, rows in panels.items():
        table = table_rows(rows, row_label)
        write_text(out / f"table_{label}.md", markdown(table))
        write_text(out / f"table_{label}.csv", csv(table))
        print(describe(label, axis, row_label, x_name, summary[label]))
    write_json(out / "summary.json", summary)
    fig = figure(panels, summary, size, x_name)
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{x_name.removeprefix('log2_')}_sweep.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    print(f"wrote tables, {x_name.removeprefix('log2_')}_sweep.png/.pdf and summary.json to {out}")


if __name__ == "__main__":
    main()
