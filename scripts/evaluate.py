"""A run's loss on any prepared corpus: python scripts/evaluate.py RUN_DIR [--data DATASET] [options]

Evaluates RUN_DIR's checkpoint on the val split of DATASET (a corpus NAME or a prepared directory with the run's
tokenizer; default: the run's own data) over the run's fixed validation windows (train.eval_windows drawn from
train.eval_seed; --windows and --eval-seed change them), exactly as training evaluates: on the run's own data a
finished run's checkpoint gives its final_val_loss. Prints one JSON line and appends it to RUN_DIR/evals.jsonl
(or --out FILE).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo runs from its root, uninstalled

from config import ConfigError  # noqa: E402
from trainer.saved import evaluate_run, record  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run's train.out_dir (holds ckpt.pt)")
    ap.add_argument("--data", help="a corpus NAME or prepared directory (default: the run's data.dataset)")
    ap.add_argument("--windows", type=int, help="validation windows (default: the run's train.eval_windows)")
    ap.add_argument("--eval-seed", type=int, help="seed of the windows (default: the run's train.eval_seed)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: the run's train.device")
    ap.add_argument("--out", type=Path, help="append the JSON line here instead of RUN_DIR/evals.jsonl")
    args = ap.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        ap.error("--windows must be at least 1")
    try:
        result = evaluate_run(args.run_dir, args.data, args.windows, args.eval_seed, args.device)
    except (ConfigError, OSError, ValueError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    print(record(args.run_dir, result, args.out))


if __name__ == "__main__":
    main()
