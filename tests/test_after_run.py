"""What users do after a run: sample text from it (sample.py) and measure its loss on any corpus
(scripts/evaluate.py), both from the run's checkpoint alone."""

import json
import subprocess
import sys

import pytest
import torch

import sample
from scripts import evaluate as evaluate_cmd
from config import ConfigError
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
    assert len(texts) == 2 and all(t.startswith("def ") for t in texts) and texts[0] != texts[1]
    # a sample does not depend on how many are asked for: the first of two is the one of one
    one = samples(capsys, run_dir, "--seed", "5", "--prompt", "def ", "--num-samples", "1")
    assert one == texts[0] + "-" * 40 + "\n"


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


# ---- forks: train.init_from

def fork_losses(out) -> dict:
    return {r["step"]: r.get("train_loss") for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_a_fork_with_its_parents_settings_continues_the_parent_exactly(tmp_path, tiny_corpus):
    """Forked at step 3 with the same config, the child trains what the parent would have: its losses, final numbers
    and weights equal a straight 6-step run's, bit for bit (weights, optimizer state and step all come across)."""
    straight = run_inprocess(tmp_path / "straight", tiny_corpus)
    run_inprocess(tmp_path / "parent", tiny_corpus, **{"train.stop_after": 3})
    child = run_inprocess(tmp_path / "child", tiny_corpus, **{"train.init_from": str(tmp_path / "parent")})
    assert child["parent"] == {"run": str((tmp_path / "parent").resolve()), "step": 3}
    assert child["final_val_loss"] == straight["final_val_loss"] and child["step"] == straight["step"]
    ours, theirs = fork_losses(tmp_path / "child"), fork_losses(tmp_path / "straight")
    assert ours == {s: v for s, v in theirs.items() if s > 3}
    a = torch.load(tmp_path / "child" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fork_may_change_the_schedule_and_lr_and_take_the_weights_only(tmp_path, tiny_corpus):
    run_inprocess(tmp_path / "parent", tiny_corpus, **{"train.stop_after": 3, "optim.schedule": "constant"})
    cool = {"train.init_from": str(tmp_path / "parent"), "optim.schedule": "linear", "optim.decay_start": 3}
    with_state = run_inprocess(tmp_path / "cool", tiny_corpus, **{**cool, "optim.schedule": "linear"})
    weights_only = run_inprocess(tmp_path / "weights", tiny_corpus, **{**cool, "train.init_from_optim": False})
    other_lr = run_inprocess(tmp_path / "lr", tiny_corpus, **{**cool, "optim.lr": 0.004})
    assert with_state["status"] == weights_only["status"] == other_lr["status"] == "done"
    assert len({with_state["final_val_loss"], weights_only["final_val_loss"], other_lr["final_val_loss"]}) == 3
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "cool" / "metrics.jsonl").read_text().splitlines())
           if "lr" in r}
    assert lrs[4] > lrs[5] > lrs[6]  # the cool-down starts at the fork


def test_a_resumed_fork_still_names_its_parent(tmp_path, tiny_corpus):
    run_inprocess(tmp_path / "parent", tiny_corpus, **{"train.stop_after": 2})
    fork = {"train.init_from": str(tmp_path / "parent")}
    assert run_inprocess(tmp_path / "child", tiny_corpus, **fork, **{"train.stop_after": 4})["status"] == "running"
    done = run_inprocess(tmp_path / "child", tiny_corpus, **fork, **{"train.resume": "auto"})
    assert done["status"] == "done" and done["parent"]["step"] == 2


@pytest.mark.parametrize("change,message", [
    ({"model.n_embd": 64}, r"keeps the parent's shapes, but model.n_embd \(parent 32, this run 64\) differ"),
    ({"model.bias": False}, r"model.bias \(parent True, this run False\)"),
    ({"optim.name": "adamw"}, "optim.name differs .* set train.init_from_optim=false"),
    ({"train.max_iters": 3}, "is at step 3: a fork continues from there"),
    ({"train.init_from": "nowhere"}, "nowhere does not exist"),
])
def test_a_fork_that_cannot_continue_its_parent_is_refused_before_anything_is_written(tmp_path, tiny_corpus, change,
                                                                                      message):
    run_inprocess(tmp_path / "parent", tiny_corpus, **{"train.stop_after": 3})
    with pytest.raises(SystemExit, match=message):
        run_inprocess(tmp_path / "child", tiny_corpus, **{"train.init_from": str(tmp_path / "parent"), **change})
    assert not (tmp_path / "child").exists()


def test_a_fork_into_its_parents_own_directory_is_refused(tmp_path, tiny_corpus):
    with pytest.raises(SystemExit, match="is this run's own train.out_dir"):
        run_inprocess(tmp_path / "run", tiny_corpus, **{"train.init_from": str(tmp_path / "run")})


def test_load_param_states_moves_state_by_name_and_keeps_its_own_hyperparameters():
    from mup.scaling import build_model
    from optim.hybrid import build_optimizer

    def built(**extra):
        cfg = tiny(**extra)
        torch.manual_seed(0)
        model, table = build_model(cfg)
        return model, build_optimizer(cfg, model, table)

    model, opt = built()
    model(tokens(tiny()), tokens(tiny(), seed=1))[1].backward()
    opt.step()
    child_model, child = built(**{"optim.lr": 0.5, "optim.adamw_lr_ratio": 0.25})  # other groups' lrs
    child.load_param_states(opt.state_dict())
    names = dict(model.named_parameters())
    for n, p in child_model.named_parameters():
        ours = [o.state[p] for o in child.optimizers.values() if p in o.state]
        theirs = [o.state[names[n]] for o in opt.optimizers.values() if names[n] in o.state]
        assert len(ours) == len(theirs) == 1 and ours[0].keys() == theirs[0].keys()
        assert all(torch.equal(torch.as_tensor(ours[0][k]), torch.as_tensor(theirs[0][k])) for k in ours[0]), n
    # its own eta (0.5 = 64 x the parent's 2^-7) and its own AdamW-half ratio (0.25): 64 and 16 x the parent's lrs
    ratios = {round(c["lr"] / p["lr"], 6) for c, p in zip(child.param_groups, opt.param_groups)}
    assert ratios == {64.0, 16.0}


def test_a_cool_down_holds_the_lr_until_decay_start_then_falls_linearly_to_the_floor():
    from optim.schedule import lr_factor

    o = tiny(**{"optim.schedule": "linear", "optim.warmup_iters": 2, "optim.decay_start": 6, "optim.lr": 0.01,
                "optim.min_lr": 0.001, "train.max_iters": 10}).optim
    factors = [lr_factor(s, o, 10) for s in range(11)]
    assert factors[:2] == [0.5, 1.0] and factors[2:6] == [1.0] * 4
    assert factors[6:] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    with pytest.raises(ConfigError, match="optim.decay_start=12 must lie between"):
        tiny(**{"optim.decay_start": 12, "train.max_iters": 10})
