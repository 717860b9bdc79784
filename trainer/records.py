"""What a run leaves behind for people and tools: run.json (its status and final numbers; sweeps and plots
read it), metrics.jsonl (one record per log step), the console, and optionally wandb."""

import hashlib
import json
from pathlib import Path

from atomic import write_json, write_text
from config import Config, to_dict

RUN_JSON, METRICS = "run.json", "metrics.jsonl"
RECORD_FIELDS = ("step", "final_train_loss", "final_val_loss", "tokens", "wall_s")
# done | diverged: finished, a sweep keeps it; running | interrupted | failed: resumable from `step`.
STATUSES = ("done", "diverged", "running", "interrupted", "failed")


def run_record(cfg: Config, status: str, **fields) -> dict:
    """A run.json record: every contract field (null until known), any extra ones, the resolved config."""
    assert status in STATUSES, status
    return {"status": status, **dict.fromkeys(RECORD_FIELDS), **fields, "config": to_dict(cfg)}


def read_record(out_dir) -> dict:
    """The run.json of `out_dir`, or {} if there is none (or a torn one)."""
    try:
        return json.loads((Path(out_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}


def write_record(cfg: Config, status: str, **fields) -> dict:
    record = run_record(cfg, status, **fields)
    write_json(Path(cfg.train.out_dir) / RUN_JSON, record)
    return record


def record_stop(cfg: Config, status: str, **extra) -> dict:
    """Make run.json say `status` (failed, interrupted), keeping how far the run got: the step a resume
    continues from, as the last checkpoint recorded it."""
    previous = read_record(cfg.train.out_dir)
    progress = {k: previous.get(k) for k in ("step", "tokens", "wall_s")}
    return write_record(cfg, status, **progress, **extra)


def record_failure(cfg: Config, error: str) -> dict:
    return record_stop(cfg, "failed", error=error)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a last line torn by a kill in mid-write is dropped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


class Log:
    """The master's log: a console line, a metrics.jsonl record and a wandb point per call; other ranks
    keep silent."""

    def __init__(self, cfg: Config, master: bool, start_step: int):
        self.master, self.total = master, cfg.train.max_iters
        out = Path(cfg.train.out_dir)
        self.path, self.wandb = out / METRICS, None
        if not master:
            return
        if self.path.exists():  # drop what a killed run wrote after its last checkpoint (and a torn line)
            kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if cfg.log.wandb:
            import wandb

            run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]  # one wandb run per out_dir
            self.wandb = wandb.init(project=cfg.log.wandb_project, mode=cfg.log.wandb_mode, dir=str(out),
                                    name=str(out), config=to_dict(cfg), id=run_id, resume="allow")

    def say(self, text: str) -> None:
        if self.master:
            print(text, flush=True)

    def __call__(self, record: dict, eta_s: float | None = None) -> None:
        if not self.master:
            return
        shown = {k: v for k, v in record.items() if not k.startswith("spec/")}
        text = f"step {shown.pop('step')}/{self.total} " + " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        if eta_s is not None:
            text += f" eta {format_seconds(eta_s)}"
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
