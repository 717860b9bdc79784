"""Run a grid of training runs: python scripts/sweep.py SWEEP.yaml --out DIR [--workers N] [key=value ...]

A sweep file is a `base:` run config, a `grid:` of keys -> lists, optional `overrides:` and `seeds:`
(experiments/grid.py); key=value arguments are set in every run, winning over the file's overrides:. Each run is
`python train.py BASE key=value ... train.out_dir=DIR/NAME train.resume=auto`, trained by one of --workers
long-lived worker processes that train their runs one after another (--isolate, or --gpus-per-run > 1: a process
per run); running the same command again skips finished runs and resumes the others (experiments/launch.py; one
run: experiments/processes.py). --dry-run prints the runs, their GPU-hours and estimated peak GPU memory, and
starts nothing. --backend slurm submits one checkpointable job per run (experiments/slurm.py); --backend
local-submitit runs the same jobs as local processes. --eval-data DATASET scores every done run on a second corpus
(experiments/scoring.py).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo runs from its root, uninstalled

from experiments.launch import BACKENDS, Options, launch_sweep  # noqa: E402


def positive_int(text: str) -> int:
    """An argparse type: --workers 0 is an error at the command line, not a hang or a traceback later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> Options:
    # an option not given is left out, so that its default is Options' (declared once, there)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    ap.add_argument("sweep", type=Path, help="sweep YAML (see configs/sweeps/)")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config keys set in every run, like the sweep file's overrides: (and winning over them)")
    ap.add_argument("--out", type=Path, required=True, help="directory of the sweep: one subdirectory per run")
    ap.add_argument("--workers", type=positive_int, help="local runs at a time (default: one per GPU group, else 1)")
    ap.add_argument("--gpus-per-run", type=positive_int, help="GPUs of each run (> 1: torchrun, DDP; default 1)")
    ap.add_argument("--backend", choices=BACKENDS,
                    help="local (default): a pool of processes here; slurm: a submitit job array; local-submitit:"
                         " the slurm path with local processes (for testing)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate, print the runs, their GPU-hours and estimated peak GPU memory, run nothing")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these runs of the sweep")
    ap.add_argument("--isolate", action="store_true",
                    help="local: each run in a train.py process of its own (default: long-lived worker processes,"
                         " each training its runs one after another; runs of several GPUs always get their own)")
    ap.add_argument("--eval-data", metavar="DATASET",
                    help="then score every done run's checkpoint on DATASET's val split (a corpus name or a"
                         " prepared directory), appended to its evals.jsonl; plot.py --eval-data tabulates it")
    slurm = ap.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time-min", type=positive_int,
                       help=f"time limit of each job, in minutes (default {Options.time_min})")
    slurm.add_argument("--cpus-per-gpu", type=positive_int,
                       help=f"CPUs of a job per GPU: cpus_per_task = this x --gpus-per-run (default {Options.cpus_per_gpu})")
    slurm.add_argument("--cpus-per-run", type=positive_int, help="CPUs of a job in all (instead of --cpus-per-gpu)")
    slurm.add_argument("--array-parallelism", type=positive_int,
                       help=f"jobs of the array running at once (default {Options.array_parallelism})")
    args = ap.parse_intermixed_args(argv)  # key=value may come before or after the options
    return Options(**{**vars(args), "out": args.out.resolve()})


def main(argv=None) -> int:
    return launch_sweep(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
