"""wandb, offline and read back from its own files: a sweep's runs are one group (the sweep's directory), each
named after its run; the config is sent once, when a run starts, not again on resume; the summary holds
run.json's status and final losses. Nothing here touches the network (WANDB_MODE=offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import grid
from tests.conftest import ROOT, TINY_RUN, overrides

pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = {**TINY_RUN, "model.n_layer": 1, "log.wandb": True, "log.wandb_mode": "offline"}
BLOCK, FULL, LAST = 32768, 1, 4  # the .wandb file: LevelDB's log format, records cut into 32 KiB blocks


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An environment in which wandb writes only under tmp_path and never goes online."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "OMP_NUM_THREADS": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


def wandb_records(path: Path) -> list:
    """The protobuf Records of an offline run's .wandb file: after a 7-byte header, records of a 7-byte header
    (checksum, length, type) and their bytes, split into pieces (FIRST, MIDDLE, LAST) across 32 KiB blocks,
    whose last < 7 bytes are padding."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def read_wandb_run(wandb_file: Path) -> dict:
    """{group, name, config (as sent at init, `_wandb` aside), summary (every update, the last one winning)}."""
    records = wandb_records(wandb_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key or ".".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
    return {"group": run.run_group, "name": run.display_name, "config": config, "summary": summary}


def wandb_runs(out: Path) -> list[dict]:
    """Each wandb.init of the run in `out`, in order (offline, each writes a directory of its own)."""
    return [read_wandb_run(next(d.glob("*.wandb"))) for d in sorted((out / "wandb").glob("offline-run-*"))]


def test_a_sweeps_runs_are_one_group_each_named_after_its_run_with_config_and_final_losses(tmp_path, offline,
                                                                                          tiny_corpus):
    sys.path.insert(0, str(ROOT / "scripts"))
    import sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "default.yaml"), "grid": {"log2_lr": [-7, -6]},
                                    "overrides": {**TINY, "data.dataset": str(tiny_corpus)}}))
    out = tmp_path / "tiny_lr"
    assert sweep.main([str(path), "--out", str(out), "--workers", "1"]) == 0  # one worker: both in one process
    for run in grid.load_sweep(path, out).runs:
        record = json.loads((run.dir / "run.json").read_text())
        (logged,) = wandb_runs(run.dir)
        assert logged["group"] == "tiny_lr" and logged["name"] == run.name
        assert logged["config"] == record["config"]
        assert {k: logged["summary"][k] for k in ("status", "final_train_loss", "final_val_loss")} == \
            {k: record[k] for k in ("status", "final_train_loss", "final_val_loss")}
        assert record["status"] == "done" and logged["summary"]["step"] == TINY["train.max_iters"]


def test_a_resumed_run_sends_its_config_once_and_ends_with_its_final_summary(tmp_path, offline, tiny_corpus):
    out = tmp_path / "run"
    args = [sys.executable, "train.py", *overrides({**TINY, "data.dataset": tiny_corpus, "train.out_dir": out})]
    first = subprocess.run([*args, "train.stop_after=3"], cwd=ROOT, env=offline, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*args, "train.resume=auto"], cwd=ROOT, env=offline, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    record = json.loads((out / "run.json").read_text())
    started, resumed = wandb_runs(out)
    assert started["config"]["train"]["stop_after"] == 3 and started["summary"]["status"] == "running"
    assert resumed["config"] == {}  # not sent again: a resume only changes free keys (stop_after here)
    assert resumed["name"] == str(out) and resumed["group"] == ""  # a lone run: no group, named by its out_dir
    assert resumed["summary"]["status"] == "done" == record["status"]
    assert resumed["summary"]["final_val_loss"] == record["final_val_loss"] is not None
