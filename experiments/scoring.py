"""A sweep's runs scored on a second corpus (scripts/sweep.py --eval-data DATASET): each done run's checkpoint
evaluated on DATASET's val split as training evaluates (trainer.saved.evaluate_run: the run's fixed windows,
micro-batch and numerics), one JSON line appended to the run's evals.jsonl, as scripts/evaluate.py does; a run
already scored on DATASET at its final step is not scored again. scripts/plot.py --eval-data DATASET
tabulates these losses (experiments.results.eval_loss)."""

import copy
import sys

from config import ConfigError
from experiments.grid import Run
from experiments.results import eval_loss
from trainer.run_record import DONE, read_evals, read_record
from trainer.runtime import check_data
from trainer.saved import evaluate_run, record


def check(runs: list[Run], dataset: str) -> None:
    """DATASET must be a prepared corpus every run's model can read (its tokenizer, vocabulary and block
    size): a ConfigError before any run starts."""
    for shape in {(r.config.data.tokenizer, r.config.model.vocab_size, r.config.model.block_size): r for r in runs}.values():
        cfg = copy.deepcopy(shape.config)
        cfg.data.dataset = dataset
        try:
            check_data(cfg)
        except (ConfigError, OSError, ValueError) as e:
            raise ConfigError(f"--eval-data {dataset}: {str(e).splitlines()[0]}") from None


def score(runs: list[Run], dataset: str) -> None:
    """Score every done run of `runs` not yet scored on `dataset` at its final step, and say how many."""
    done = [run for run in runs if read_record(run.dir).get("status") == DONE]
    todo = [run for run in done if eval_loss(read_evals(run.dir), dataset, read_record(run.dir)) is None]
    failed = 0
    for run in todo:
        try:
            record(run.dir, evaluate_run(run.dir, dataset))
        except (ConfigError, OSError, ValueError) as e:  # e.g. a checkpoint deleted since: the others go on
            failed += 1
            print(f"not scored: {run.name}: {str(e).splitlines()[0]}", file=sys.stderr)
    print(f"--eval-data {dataset}: {len(todo) - failed} runs scored, {len(done) - len(todo)} scored before,"
          f" {failed} failed; {len(runs) - len(done)} not done")
