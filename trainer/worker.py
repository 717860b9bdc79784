"""A worker: one process that trains a sweep's runs one after another (`python train.py --worker`), so that a run
does not pay for a new interpreter and torch's imports. On a CPU-tiny run those are most of its fixed cost:
importing train.py takes 2.2 s and the first optimizer imports torch._dynamo, another 1.5 s (cProfile), against
0.6 s for a whole 10-step run in a process that has them already.

Each request is one line of JSON on stdin, {"args": train.py's arguments, "dir": the run directory}; each
answer one line of JSON on what was stdout, {"code": what `python train.py ARGS` would have exited with}, and
"retire": true when the worker ends after it. While a run trains, file descriptors 1 and 2 are its directory's
stdout.log and stderr.log (appended), so that C-level output lands there too. A run leaves nothing behind for
the next: train.py seeds torch itself (init, dropout) and opens its data per run; what lives in the process is
finished or dropped after each run (an open wandb run, the run's tensors, CUDA's cached blocks), and compiled
graphs are kept only for a run of the same shapes and multipliers (compiled_graphs). A run that raised
retires its worker: whatever the exception left (a CUDA context after a device-side error, a half-built
object) is not carried into the next run, which gets a fresh process.
"""

import gc
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

from config import Config, ConfigError, flat_dict, load_config, split_command_line

# What the compiled blocks' graphs depend on: shapes, multipliers, numerics. Any other key may change between
# two runs that share them; dynamo recompiles a changed graph with dynamic shapes, not as a fresh process would.
GRAPH_KEYS = ("model.", "scaling.", "train.micro_batch_size", "train.device", "train.dtype")


def request(args: list[str], run_dir: Path) -> str:
    return json.dumps({"args": args, "dir": str(run_dir)}) + "\n"


def graph_signature(cfg: Config) -> dict:
    return {k: v for k, v in flat_dict(cfg).items() if k.startswith(GRAPH_KEYS)}


class CompiledGraphs:
    """Dynamo's cache across runs: kept for a compiled run of the same graph signature as the graphs it holds
    (an LR sweep at one shape compiles once per worker), emptied before any other compiled run, which then
    compiles exactly as in a fresh process (static shapes)."""

    def __init__(self):
        self.signature = None

    def before(self, args: list[str]) -> None:
        try:
            cfg = load_config(*split_command_line(args))
        except ConfigError:  # the run itself reports it
            return
        if cfg.train.compile and graph_signature(cfg) != self.signature:
            torch._dynamo.reset()
            self.signature = graph_signature(cfg)


def exit_code(main, args: list[str]) -> tuple[int, bool]:
    """(the code `python train.py ARGS` exits with, whether it raised), running main(args) here; a traceback or
    a sys.exit message goes to stderr, as the interpreter would print it."""
    try:
        main(args)
        return 0, False
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0, False
        print(e.code, file=sys.stderr)
        return 1, False
    except KeyboardInterrupt:  # Ctrl-C outside train.py's own handling: the interpreter dies of the signal
        traceback.print_exc()
        return -signal.SIGINT, False
    except BaseException:
        traceback.print_exc()
        return 1, True


def end_run() -> None:
    """Finish what a run may have left open in this process: its wandb run (one that raised did not finish it,
    and the next wandb.init would continue it), its tensors, the CUDA allocator's cached blocks."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1)
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_logged(main, args: list[str], run_dir: Path, between: int) -> tuple[int, bool]:
    """exit_code(main, args) with fds 1 and 2 on the run's stdout.log and stderr.log, then on `between`."""
    with open(run_dir / "stdout.log", "ab") as out, open(run_dir / "stderr.log", "ab") as err:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            return exit_code(main, args)
        finally:
            end_run()
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(between, 1)
            os.dup2(between, 2)


def serve(main) -> None:
    """Train the requested runs with `main` (train.main) until stdin ends. Ctrl-C between runs ends the worker
    quietly (130): the sweep is stopping."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    between = os.dup(2)  # what runs print outside a run goes to the sweep's stderr, never into the answers
    os.dup2(between, 1)
    graphs = CompiledGraphs()
    try:
        for line in iter(sys.stdin.readline, ""):
            req = json.loads(line)
            graphs.before(req["args"])
            code, raised = run_logged(main, req["args"], Path(req["dir"]), between)
            answers.write(json.dumps({"code": code, "retire": raised}) + "\n")
            if raised:
                return
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
