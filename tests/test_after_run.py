"""What users do after a run: sample text from it (sample.py) and measure its loss on any corpus
(scripts/evaluate.py), both from the run's checkpoint alone."""

import json
import subprocess
import sys

import pytest
import torch

import sample
from scripts import evaluate as evaluate_cmd
from tests.conftest import TINY_RUN, run_inprocess, tiny, tokens


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus):
    out = tmp_path_factory.mktemp("run") / "run"
    record = run_inprocess(out, tiny_corpus)
    assert record["status"] == "done"
    return out, record


def samples(capsys, run_dir, *args):
    sample.main([str(run_dir), "--max-new-tokens", "12", *args])
    return capsys.readouterr().out


def test_sample_is_deterministic_under_a_seed_and_keeps_the_prompt(finished, capsys):
    run_dir, _ = finished
    a = samples(capsys, run_dir, "--seed", "5", "--prompt", "def ", "--num-samples", "2")
    assert a == samples(capsys, run_dir, "--seed", "5", "--prompt", "def ", "--num-samples", "2")
    assert a != samples(capsys, run_dir, "--seed", "6", "--prompt", "def ", "--num-samples", "2")
    texts = a.split("-" * 40 + "\n")[:-1]
    assert len(texts) == 2 and all(t.startswith("def ") for t in texts)


def test_sample_reads_the_prompt_from_a_file(finished, capsys, tmp_path):
    run_dir, _ = finished
    (tmp_path / "prompt.txt").write_text("import os\n")
    out = samples(capsys, run_dir, "--prompt-file", str(tmp_path / "prompt.txt"), "--num-samples", "1")
    assert out.startswith("import os\n")


def test_greedy_is_top_1_and_only_the_tokenizers_ids_are_drawn():
    from model import GPT
    from mup.scaling import multipliers

    cfg = tiny()
    torch.manual_seed(0)
    model = GPT(cfg.model, **multipliers(cfg)).eval()
    x = tokens(cfg, B=2)[:, :4]
    greedy = model.generate(x, 6, temperature=0)
    top1 = model.generate(x, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    drawn = model.generate(x, 30, temperature=2.0, vocab=10, generator=torch.Generator().manual_seed(0))
    assert drawn[:, 4:].max() < 10 and greedy[:, 4:].max() >= 0


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "has no checkpoint"),
    (lambda d: (d.mkdir(), (d / "ckpt.pt").write_bytes(b"not a checkpoint")), "is unreadable"),
    (lambda d: (d.mkdir(), torch.save({"weights": 1}, d / "ckpt.pt")), "is not a checkpoint of this repository"),
])
def test_sample_refuses_a_missing_foreign_or_corrupt_checkpoint_in_one_line(tmp_path, make, message):
    run_dir = tmp_path / "run"
    make(run_dir)
    p = subprocess.run([sys.executable, "sample.py", str(run_dir)], capture_output=True, text=True)
    assert p.returncode != 0 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_evaluate_reproduces_the_runs_final_val_loss_and_records_it(finished, capsys):
    run_dir, record = finished
    evaluate_cmd.main([str(run_dir)])
    line = json.loads(capsys.readouterr().out)
    assert line["val_loss"] == record["final_val_loss"] and line["step"] == TINY_RUN["train.max_iters"]
    assert json.loads((run_dir / "evals.jsonl").read_text().splitlines()[-1]) == line


def test_evaluate_on_another_corpus_and_other_windows(finished, tmp_path, capsys):
    from data.prepare import prepare

    run_dir, record = finished
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(["Some English prose, unlike the Python sources the run saw. " * 40] * 10))
    data = prepare("files", out=tmp_path / "prepared", tokenizer="bytes", inputs=[str(other)], val_fraction=0.5,
                   num_proc=1)
    capsys.readouterr()
    evaluate_cmd.main([str(run_dir), "--data", str(data), "--windows", "4", "--out", str(tmp_path / "e.jsonl")])
    line = json.loads(capsys.readouterr().out)
    assert line["windows"] == 4 and line["data_dir"] == str(data) and line["val_loss"] != record["final_val_loss"]
    assert not (run_dir / "evals.jsonl").exists() or all(
        json.loads(r)["data_dir"] != str(data) for r in (run_dir / "evals.jsonl").read_text().splitlines())
    gpt2 = prepare("files", out=tmp_path / "gpt2", tokenizer="gpt2", inputs=[str(other)], val_fraction=0.5, num_proc=1)
    with pytest.raises(SystemExit, match=r"data's vocabulary \(50257, gpt2\)"):
        evaluate_cmd.main([str(run_dir), "--data", str(gpt2)])
