"""run.json: a run's status and final numbers, the record that sweeps, plots and transfer read. Its file name,
its statuses and its fields are declared here and nowhere else; train.py writes it, everything else reads it
through read_record. Beside it, evals.jsonl: the run's losses measured afterwards on any corpus
(trainer/saved.py). No torch here, so that summarizing records is quick wherever they are copied to."""

import json
from pathlib import Path

from atomic import write_json
from config import Config, to_dict
from trainer.records import read_jsonl

RUN_JSON = "run.json"
EVALS = "evals.jsonl"  # one JSON line per measurement of scripts/evaluate.py or a sweep's --eval-data
DONE, DIVERGED, RUNNING, INTERRUPTED, FAILED = "done", "diverged", "running", "interrupted", "failed"
STATUSES = (DONE, DIVERGED, RUNNING, INTERRUPTED, FAILED)
# done | diverged: finished, a sweep keeps it; running | interrupted | failed: resumable from `step`.
FINISHED = (DONE, DIVERGED)
RECORD_FIELDS = ("step", "final_train_loss", "final_val_loss", "tokens", "wall_s")
PROGRESS = ("step", "tokens", "wall_s")  # how far a run got: what a stopped run's record keeps


def run_record(cfg: Config, status: str, **fields) -> dict:
    """A run.json record: every contract field (null until known), any extra ones, the resolved config."""
    assert status in STATUSES, status
    return {"status": status, **dict.fromkeys(RECORD_FIELDS), **fields, "config": to_dict(cfg)}


def read_record(out_dir) -> dict:
    """The run.json of `out_dir`, or {} if there is none yet (or a torn one)."""
    try:
        return json.loads((Path(out_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}


def read_evals(out_dir) -> list[dict]:
    """The records of `out_dir`'s evals.jsonl, oldest first; [] if there is none."""
    path = Path(out_dir) / EVALS
    return read_jsonl(path) if path.is_file() else []


def write_record(cfg: Config, status: str, **fields) -> dict:
    record = run_record(cfg, status, **fields)
    write_json(Path(cfg.train.out_dir) / RUN_JSON, record)
    return record


def remove_record(out_dir) -> None:
    """Forget a record left by an earlier attempt, before the run starts again."""
    (Path(out_dir) / RUN_JSON).unlink(missing_ok=True)


def record_stop(cfg: Config, status: str, **extra) -> dict:
    """Make run.json say `status` (failed, interrupted), keeping how far the run got: the step a resume
    continues from, as the last checkpoint recorded it."""
    previous = read_record(cfg.train.out_dir)
    lineage = {"parent": previous["parent"]} if "parent" in previous else {}
    return write_record(cfg, status, **{k: previous.get(k) for k in PROGRESS}, **lineage, **extra)


def record_failure(cfg: Config, error: str) -> dict:
    return record_stop(cfg, FAILED, error=error)
