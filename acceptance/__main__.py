"""python -m acceptance [--smoke] [--only CHECKS] [--out DIR]: the checks of acceptance/checks.py and a verdict."""

import argparse
import sys
from pathlib import Path

import torch

import acceptance
from acceptance.checks import CHECKS, GPU, SMOKE, Acceptance, print_verdict
from bench.common import record
from config import ROOT


def main(argv=None) -> int:
    doc = acceptance.__doc__
    ap = argparse.ArgumentParser(prog="python -m acceptance", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(doc.split("\n\n")[1:]))
    ap.add_argument("--smoke", action="store_true", help="CPU smoke mode: the same checks at tiny shapes")
    ap.add_argument("--out", help="where the runs and logs go (default out/acceptance, out/acceptance-smoke)")
    ap.add_argument("--only", help=f"comma-separated checks of: {','.join(CHECKS)}")
    ap.add_argument("--budget", type=float, default=900, help="seconds for all checks (default 900)")
    ap.add_argument("--min-mfu", type=float, default=0.05, help="throughput fails below this MFU (default 0.05)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    args = ap.parse_args(argv)
    selected = args.only.split(",") if args.only else list(CHECKS)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    mode = SMOKE if args.smoke else GPU
    out = Path(args.out or ROOT / ("out/acceptance-smoke" if args.smoke else "out/acceptance")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU acceptance check ({'CPU smoke mode, tiny shapes' if args.smoke else 'GPU'}): "
          f"{', '.join(selected)}; runs and logs in {out}; at most {args.budget:.0f} s")
    results = Acceptance(mode, out, args.budget, args.min_mfu).run(selected)
    print_verdict(results, args.smoke)
    if not args.smoke and not args.no_record and torch.cuda.is_available():
        record("acceptance", {"checks": selected, "min_mfu": args.min_mfu},
               {r.check: {"verdict": r.verdict, "seconds": r.seconds, "detail": r.detail} for r in results})
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
