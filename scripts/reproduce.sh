#!/usr/bin/env bash
# Every figure and table of the paper: bash scripts/reproduce.sh paper|tiny [--dry-run]
#
# paper: OpenWebText, GPT-2 tokens, on the GPUs of this machine (sweep.py runs one run per GPU; for Slurm
#   add --backend slurm --partition P to the sweep commands). GPU-hours below are training FLOPs over an
#   H100's dense bf16 peak (989 TFLOP/s) at an assumed 40% MFU, FLOPs per token counted by torch on the
#   meta device (= 6 N + 12 L n T, N the matmul parameters with the LM head, T = 1024), tokens = 1221 x 240
#   x 1024 = 300.1M per run; evaluation not counted. Example, n = 4096, L = 4: N = 4 x 12 n^2 + 50304 n =
#   1.011e9, 6 N + 12 L n T = 6.27e9 FLOP/token, x 300.1M tokens = 1.88e18 FLOP / 3.96e14 FLOP/s = 1.32 h.
#   Small models run well below 40% MFU, so read the small runs' hours as lower bounds.
# tiny: the same experiments at CPU scale on the offline stdlib corpus (configs/sweeps/tiny_*.yaml);
#   CPU-minutes are upper estimates from timed 20-step runs on one thread of a shared machine.
# --dry-run: print every command instead of running it, each sweep with its runs and GPU-hours (from
#   `python scripts/sweep.py SWEEP.yaml --out DIR --dry-run`, which also lists them per run), and the total.
#
# Outputs go to $OUT (default out/paper or out/tiny). Rerunning continues: finished sweep runs are skipped,
# interrupted ones resume from their checkpoints. A sweep with failed runs exits nonzero and stops this
# script; rerun it to retry them.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: bash $0 paper|tiny [--dry-run]" >&2
  echo "  paper: OpenWebText on this machine's GPUs; tiny: the CPU-scale counterparts" >&2
  echo "  --dry-run: list the commands and each sweep's GPU-hours, run nothing" >&2
  exit 2
}
MODE="" DRY=0
for arg in "$@"; do
  case $arg in
    paper | tiny) MODE=$arg ;;
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done
[ -n "$MODE" ] || usage
OUT=${OUT:-out/$MODE}
case $MODE in
  paper) P=""; WORKERS=() ;;
  tiny) P="tiny_"; WORKERS=(--workers 2) ;;
esac
COSTS=()  # with --dry-run: each sweep's "N runs (M to run): H H100-hours (R to run)"

run() {  # run a command; with --dry-run, print it
  if [ "$DRY" = 1 ]; then
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
  else
    "$@"
  fi
}

sweep() {  # sweep NAME: run configs/sweeps/[tiny_]NAME.yaml into $OUT/NAME, then its tables and figure
  local cmd=(python scripts/sweep.py "configs/sweeps/$P$1.yaml" --out "$OUT/$1" "${WORKERS[@]}")
  if [ "$DRY" = 1 ]; then
    local cost
    cost=$("${cmd[@]}" --dry-run | grep -E '^[0-9]+ runs \(' | cut -d, -f1)
    COSTS+=("$cost")
    echo "$(run "${cmd[@]}")   # $cost"
  else
    "${cmd[@]}"
  fi
  run python scripts/plot.py "$OUT/$1"
}

# Data. paper: OpenWebText (network; ~9B tokens, hours of CPU with --num-proc). tiny: seconds, offline.
if [ "$MODE" = paper ]; then
  run python -m data.prepare openwebtext --tokenizer gpt2
else
  run python -m data.prepare stdlib --tokenizer bytes
fi

# Fig. 1(a, b): coordinate checks against width and depth (10 steps per point).
run python scripts/coord_check.py "configs/coord/${P}width.yaml" --out "$OUT/coord_width"
run python scripts/coord_check.py "configs/coord/${P}depth.yaml" --out "$OUT/coord_depth"

# Fig. 1(c), Tables 8-9: LR vs width, SP and muP. paper: 72 runs, 23.4 H100-hours. tiny: 48 runs, 34 CPU-min.
sweep width
# Fig. 1(d), Tables 10-11: LR vs depth with LayerNorm. paper: 70 runs, 9.6 H100-hours. tiny: 50 runs, 45 CPU-min.
sweep depth
# Fig. 2, Tables 12-13: LR vs depth without LayerNorm. paper: 70 runs, 9.6 H100-hours. tiny: 55 runs, 49 CPU-min.
sweep depth_noln
# v2: muP k=1 vs k>=2 across depth. paper: 84 runs, 11.5 H100-hours. tiny: 60 runs, 54 CPU-min.
sweep depth_k1
# v2: weight-decay transfer across width (x: log2 WD). paper: 30 runs, 9.8 H100-hours. tiny: 20 runs, 14 CPU-min.
sweep wd_width
# v2: the Muon-AdamW variant of Fig. 1(c). paper: 72 runs, 23.4 H100-hours. tiny: 48 runs, 34 CPU-min.
sweep width_muon
# v2: the Shampoo-AdamW and Sophia variants of Fig. 1(c). paper: 72 runs each, 23.4 H100-hours each for the model
# (plus Shampoo's eigendecompositions every 100 steps, not estimated). tiny: about 9 and 5 minutes measured on one thread.
sweep width_shampoo
sweep width_sophia
# Total sweeps: --dry-run adds them up (paper 542 runs, 134 H100-hours before Shampoo's preconditioners).

if [ "$DRY" = 1 ]; then
  printf '%s\n' "${COSTS[@]}" | awk '{runs += $1; todo += substr($3, 2); hours += $6; left += substr($8, 2); unit = $7}
    END {printf "# all sweeps: %d runs (%d to run), %.3g %s (%.3g to run)\n", runs, todo, hours, unit, left}'
else
  echo "done: tables, figures and summary.json under $OUT/*/"
fi
