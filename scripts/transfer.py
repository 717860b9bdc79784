"""Tune small, train big: python scripts/transfer.py SWEEP_DIR TARGET.yaml [key=value ...] --out FILE.yaml

Reads a finished sweep (scripts/sweep.py --out SWEEP_DIR), takes the value of every hyperparameter it swept
(LR, weight decay, init std, multipliers) at its optimum (that of its base-shape row, or the one all its rows
agree on) and writes FILE.yaml: `base:` the target (relative to FILE.yaml's directory), the tuned keys, and
the overrides (with train.out_dir=out/FILE's stem unless given). `python train.py FILE.yaml` trains it. Under
muP these are base values: the target's scaling table turns them into every tensor's init, multiplier and LR,
which this prints along with the target's tokens and estimated GPU-hours.

It refuses (exit 1, one line, nothing written) when the optimum sits on the grid's edge, the row it needs is
unfinished or diverged, the sweep is SP, or its parameterization or base shape (scaling.base_width,
scaling.base_depth) differs from the target's. A different training horizon, batch or sequence length (or any
other setting) is a warning on stderr; the file is still written. Bad arguments or configs exit 2.
"""

import argparse
import math
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo runs from its root, uninstalled

from atomic import atomic_path  # noqa: E402
from config import ConfigError, load_config, parse_overrides, split_command_line, to_dict  # noqa: E402
from experiments import cost  # noqa: E402
from experiments.results import ResultsError, load_results  # noqa: E402
from experiments.transfer import (  # noqa: E402
    MARK, TransferError, differences, format_rows, per_role, point_text, transfer_yaml, tune,
)
from mup.table import format_table, table_for  # noqa: E402


def check_out(out: Path, target: Path) -> None:
    """FILE.yaml may replace only a file this script wrote, and never the target itself."""
    if out.resolve() == target.resolve():
        raise ConfigError(f"--out {out} is the target config itself: choose another file")
    if out.exists():
        try:
            first = out.read_text().splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            first = []
        if not first or not first[0].startswith(MARK):
            raise ConfigError(f"--out {out} exists and was not written by scripts/transfer.py: choose another file")


def report(cfg, table, tuned, sweep: Path) -> str:
    lines = [f"tuned at {tuned.row} of {sweep}: {point_text(tuned.values)}; final val loss {tuned.loss:.4f}"]
    lines += [f"  other rows' optima: {label}: {point_text(p)}" for label, p in tuned.others.items()]
    m = cfg.model
    params = sum(math.prod(t.shape) for t in table)
    lines.append(f"target: {format_table(cfg, table).splitlines()[0]}; {m.n_embd // m.head_dim} heads of"
                 f" {m.head_dim}, {params / 1e6:.3g}M parameters")
    lines.append(format_rows([("role", "tensors", "optimizer", "lr", "init_std", "multiplier", "wd"),
                              *per_role(table)]))
    tokens, flops = cost.run_tokens(cfg), cost.train_flops(cfg)
    lines.append(f"tokens: {tokens:,} = {cfg.train.max_iters} steps x {cfg.train.batch_size} x {m.block_size};"
                 f" training FLOPs {flops:.3g}: {cost.gpu_hours(flops):.3g} {cost.GPU}-hours at {cost.MFU:.0%} MFU"
                 f" (evaluation not counted)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="a finished sweep's directory (scripts/sweep.py --out)")
    ap.add_argument("args", nargs="+", metavar="TARGET.yaml [key=value ...]", help="the run config to train, and"
                    " overrides (e.g. model.n_embd=256 model.n_layer=8)")
    ap.add_argument("--out", type=Path, required=True, help="the run config to write")
    ap.add_argument("--table", action="store_true", help="also print the target's whole scaling table")
    args = ap.parse_intermixed_args(argv)
    command = "python scripts/transfer.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        target, override_args = split_command_line(args.args)
        if target is None:
            raise ConfigError("name the target run config first: TARGET.yaml [key=value ...]")
        target = Path(target)
        overrides = parse_overrides(override_args)
        check_out(args.out, target)
        results = load_results(args.sweep)
        tuned = tune(results, load_config(target, overrides))
        clash = sorted(set(tuned.values) & set(overrides))
        if clash:
            raise TransferError(f"{', '.join(clash)} is what the sweep tuned: drop the override")
        overrides.setdefault("train.out_dir", f"out/{args.out.stem}")
        cfg = load_config(target, {**tuned.values, **overrides})
        table = table_for(cfg)
        text = transfer_yaml(target, args.out, tuned, overrides, args.sweep, command)
        warnings = differences(tuned, cfg)
        printed = report(cfg, table, tuned, args.sweep)
    except TransferError as e:
        print(f"transfer refused: {e}", file=sys.stderr)
        return 1
    except (ConfigError, ResultsError, OSError, ValueError) as e:
        print(f"transfer error: {e}", file=sys.stderr)
        return 2
    print(printed)
    if args.table:
        print(format_table(cfg, table))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
            if to_dict(load_config(tmp)) != to_dict(cfg):  # what train.py will make of the file
                raise ConfigError(f"{args.out} would not give the config printed above (a bug: please report it)")
    except (ConfigError, OSError) as e:
        print(f"transfer error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: train it with python train.py {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
