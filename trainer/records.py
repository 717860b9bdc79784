"""What a run says while it trains: metrics.jsonl (one record per log step), the console, and optionally wandb.
Its final record, run.json, is trainer/run_record.py's."""

import hashlib
import json
from pathlib import Path

from atomic import write_text
from config import Config, to_dict

METRICS = "metrics.jsonl"
SUMMARY = ("status", "step", "final_train_loss", "final_val_loss")  # run.json's fields in the wandb run's summary


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl, evals.jsonl); a line torn by a kill in mid-write is
    dropped."""
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
            kept = [r for r in read_jsonl(self.path) if r["step"] <= start_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if cfg.log.wandb:
            import wandb

            run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]  # one wandb run per out_dir
            # the config once, when the run starts: a resume may only change free keys (trainer/checkpoint.py)
            self.wandb = wandb.init(project=cfg.log.wandb_project, mode=cfg.log.wandb_mode, dir=str(out),
                                    group=cfg.log.wandb_group, name=cfg.log.wandb_name or str(out),
                                    config=to_dict(cfg) if start_step == 0 else None, id=run_id, resume="allow")

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

    def close(self, record: dict) -> None:
        """End the wandb run with run.json's status and final losses in its summary."""
        if self.wandb is not None:
            self.wandb.summary.update({k: record.get(k) for k in SUMMARY})
            self.wandb.finish()


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
