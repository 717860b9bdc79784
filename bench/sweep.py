"""python -m bench.sweep: what a sweep adds to (or saves from) its runs' own time, on CPU.

The same short CPU-tiny runs (configs/sweeps/tiny_base.yaml at n = 32, --steps steps each, one thread)
launched three ways: one `python train.py` after another; scripts/sweep.py --workers 1 --isolate (a process
per run, as sweeps were); scripts/sweep.py --workers 1 (one worker process training them all). Rounds are
interleaved (bench.common). The per-run fixed cost is the time per run less what the same runs take inside
one worker, so it counts the interpreter, imports and the sweep's own start. The whole CPU-tiny width sweep
is measured with `time python scripts/sweep.py configs/sweeps/tiny_width.yaml --out DIR --workers 2`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import ROOT, interleaved, print_table, record

BASE = ROOT / "configs" / "sweeps" / "tiny_base.yaml"
LONE = "python train.py, one after another"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    settings = {"model.n_embd": 32, "train.max_iters": args.steps, "train.ckpt_interval": args.steps}
    lrs = list(range(-args.runs, 0))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        (Path(tmp) / "s.yaml").write_text(yaml.safe_dump({"base": str(BASE), "grid": {"log2_lr": lrs},
                                                          "overrides": settings}))
        sweep = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(Path(tmp) / "s.yaml"), "--out", str(out),
                 "--workers", "1"]
        lone = [[sys.executable, str(ROOT / "train.py"), str(BASE), *(f"{k}={v}" for k, v in settings.items()),
                 f"optim.lr={2.0**x}", f"train.out_dir={out / str(x)}"] for x in lrs]

        def launched(commands):
            def run():
                shutil.rmtree(out, ignore_errors=True)
                for cmd in commands:
                    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
            return run

        stats = interleaved({LONE: launched(lone), "sweep.py --isolate": launched([[*sweep, "--isolate"]]),
                             "sweep.py (one worker)": launched([sweep])}, args.rounds, reps=1, warmup=0)
    rows = [{"launched as": way, "s in all": f"{s['median']:.1f}", "s per run": f"{s['median'] / args.runs:.2f}",
             "vs lone runs": f"{s['median'] / stats[LONE]['median']:.2f}x"} for way, s in stats.items()]
    print_table(rows, f"{args.runs} runs of {args.steps} steps (n = 32), one thread each; median of {args.rounds}"
                      f" interleaved rounds")
    record("sweep", vars(args), stats)


if __name__ == "__main__":
    main()
