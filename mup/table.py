"""Print the scaling table of a config: python -m mup.table [CONFIG.yaml] [key=value ...] [--json]

--json prints a list of records {name, role, shape, init_std, multiplier, lr, weight_decay, eps,
optimizer} for other tools (`optimizer`: the optimizer of that tensor; `eps`: null where it has no epsilon);
without it, a table a reader can hold next to docs/SPEC-mup.md.
"""

import argparse
import json
import os
import sys

from config import ConfigError, load_config, split_command_line
from mup.scaling import ratios, table_for


def format_table(cfg, table) -> str:
    r_n, r_L, d = ratios(cfg)
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    rows = [("name", "role", "shape", "init_std", "mult", "lr", "wd", "eps", "optimizer")]
    rows += [(t.name, t.role, "x".join(map(str, t.shape)), fmt(t.init_std), fmt(t.multiplier), fmt(t.lr),
              fmt(t.weight_decay), fmt(t.eps), t.optimizer) for t in table]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{cfg.scaling.parameterization}, {cfg.optim.name}: n={cfg.model.n_embd} L={cfg.model.n_layer}"
             f" (base {cfg.scaling.base_width}, {cfg.scaling.base_depth}; r_n={r_n:g}, r_L={r_L:g}, alpha_d={d:g})"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]; no CONFIG: the embedded default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_config(*split_command_line(args.args))
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    table = table_for(cfg)
    try:
        print(json.dumps([t.to_json() for t in table], indent=1) if args.json else format_table(cfg, table))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head` closed the pipe: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and Python's exit flush stays quiet


if __name__ == "__main__":
    main()
