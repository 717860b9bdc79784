"""Coordinate check: python scripts/coord_check.py CONFIG.yaml [key=value ...] --out DIR

CONFIG is a run config plus a `coord:` section (see experiments/coord.py:Sweep and configs/coord/). Writes
DIR/coord.csv (parameterization, width, depth, seed, step, site, rms), DIR/spectral.csv (Condition 3.1
per update, if coord.spectral), DIR/config.json, and the figure DIR/coord.png / .pdf: one panel per
parameterization, the last block's output ||h_L||_R (seed mean) against width or depth, one line per step.
Flat lines mean the activations' scale does not depend on the size; prints each panel's slope and max/min.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo runs from its root, uninstalled

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter  # noqa: E402

from atomic import atomic_path, write_json  # noqa: E402
from config import ConfigError, from_flat, parse_overrides, read_yaml, split_command_line, to_dict  # noqa: E402
from experiments.coord import COLUMNS, SPECTRAL_COLUMNS, run_sweep, seed_means, split_sweep, verdict, write_csv  # noqa: E402


def plot(rows, axis: str, verdicts: dict, out: Path) -> None:
    """Side-by-side panels sharing the y axis; writes out.png and out.pdf."""
    means = seed_means(rows, axis)
    steps = sorted({step for by_step in means.values() for step in by_step})
    color = Normalize(steps[0], steps[-1])
    fig, axes = plt.subplots(1, len(means), figsize=(3.6 * len(means) + 1, 3.4), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (p, by_step) in zip(axes[0], means.items()):
        for step, by_size in by_step.items():
            ax.plot(list(by_size), list(by_size.values()), "o-", ms=3, lw=1.2, color=plt.cm.viridis(color(step)))
        sizes = list(by_step[steps[-1]])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(axis)
        ax.set_title(f"{p}: slope {verdicts[p]['slope']:+.2f}, max/min {verdicts[p]['ratio']:.2f}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"$\|h_L\|_R$ (last block output)")
    fig.colorbar(ScalarMappable(color, plt.cm.viridis), ax=axes[0].tolist(), label="step t (model after t - 1 updates)")
    for ext in ("png", "pdf"):
        with atomic_path(out.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, dpi=150, format=ext)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="+", help="CONFIG.yaml (a run config plus a coord: section) [key=value ...]"
                                             " (run keys or coord.*)")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    args = ap.parse_intermixed_args(argv)
    config, overrides = split_command_line(args.args)
    if config is None:
        ap.error("the first argument must be a coordinate-check config, e.g. configs/coord/tiny_width.yaml")
    try:
        values = read_yaml(Path(config))
        values.update(parse_overrides(overrides))
        sweep, run_values = split_sweep(values)
        cfg = from_flat(run_values)
    except ConfigError as e:
        sys.exit(f"config error: {e}")

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "config.json", {"run": to_dict(cfg), "coord": dataclasses.asdict(sweep)})

    rows, spectral_rows = run_sweep(cfg, sweep)
    write_csv(args.out / "coord.csv", rows, COLUMNS)
    if sweep.spectral:
        write_csv(args.out / "spectral.csv", spectral_rows, SPECTRAL_COLUMNS)
    verdicts = verdict(rows, sweep.axis)
    plot(rows, sweep.axis, verdicts, args.out / "coord")
    last = max(r["step"] for r in rows)
    print(f"verdict: ||h_L||_R at step {last} (after {last - 1} updates), seed mean, against {sweep.axis}")
    for p, v in verdicts.items():
        values = "  ".join(f"{size}:{rms:.3g}" for size, rms in v["rms"].items())
        print(f"  {p:>9}: slope {v['slope']:+.3f}, max/min {v['ratio']:.3f}   ({values})")
    print(f"wrote {args.out}/coord.csv, coord.png, coord.pdf" + (", spectral.csv" if sweep.spectral else ""))


if __name__ == "__main__":
    main()
