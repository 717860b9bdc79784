"""The coordinate check on CPU: muP's last-block RMS stays in a band across width and depth, SP's does not,
and breaking one scaling rule of mup/rules.py takes muP out of its band.

Thresholds are calibrated on configs/coord/tiny_{width,depth}.yaml with seeds 1, 2 (10 steps; the
verdict reads ||h_L||_R after the 10th update); the measured values sit next to each threshold.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from config import ConfigError, from_flat, read_yaml
from data.loader import TokenBatches, ensure_offline_corpus
from experiments import coord
from mup import rules
from mup.scaling import build_model

WIDTH, DEPTH = Path("configs/coord/tiny_width.yaml"), Path("configs/coord/tiny_depth.yaml")
SEEDS = [1, 2]
MUP_WIDTH_MAX_RATIO = 1.15  # muP, n = 32..256: max/min 1.033 (slope -0.004); hidden lr without 1/sqrt(r_n): 1.294
SP_WIDTH_MIN_RATIO = 1.8  # SP, n = 32..256: max/min 2.49 (slope +0.38)
MUP_DEPTH_MAX_RATIO = 1.15  # muP, L = 2..16: max/min 1.024 (slope +0.003); without the 1/r_L multiplier: 9.5
SP_DEPTH_MIN_RATIO = 4.0  # SP, L = 2..16: max/min 9.5 (slope +1.08)


@pytest.fixture(scope="session", autouse=True)
def corpus():
    return ensure_offline_corpus("bytes")


def sweep(path: Path, **coord_values):
    values = read_yaml(path) | {"coord.seeds": SEEDS, "coord.spectral": False}
    values |= {f"coord.{k}": v for k, v in coord_values.items()}
    s, rest = coord.split_sweep(values)
    return coord.verdict(coord.run_sweep(from_flat(rest), s, log=lambda _: None)[0], s.axis)


@pytest.fixture(scope="session")
def width_verdict():
    return sweep(WIDTH)


@pytest.fixture(scope="session")
def depth_verdict():
    return sweep(DEPTH)


def test_mup_flat_across_width(width_verdict):
    assert width_verdict["mup"]["ratio"] < MUP_WIDTH_MAX_RATIO, width_verdict["mup"]


def test_sp_grows_with_width(width_verdict):
    assert width_verdict["sp"]["ratio"] > SP_WIDTH_MIN_RATIO, width_verdict["sp"]
    assert width_verdict["sp"]["slope"] > 0


def test_mup_flat_across_depth(depth_verdict):
    assert depth_verdict["mup"]["ratio"] < MUP_DEPTH_MAX_RATIO, depth_verdict["mup"]


def test_sp_grows_with_depth(depth_verdict):
    assert depth_verdict["sp"]["ratio"] > SP_DEPTH_MIN_RATIO, depth_verdict["sp"]
    assert depth_verdict["sp"]["slope"] > 0


def test_hidden_lr_without_width_factor_fails_the_width_band(monkeypatch):
    """Muon-Kimi's hidden lr at eta (Table A says eta / sqrt(r_n)): wide models update too fast."""
    kimi = rules.muon_kimi

    def no_width_factor(d):
        hidden = kimi(d)["hidden"]
        return {"hidden": rules.Update(lr=(0, hidden.lr[1]), wd=hidden.wd)}

    monkeypatch.setitem(rules.UPDATES, "muon_kimi", no_width_factor)
    v = sweep(WIDTH, parameterizations=["mup"])["mup"]
    assert v["ratio"] > MUP_WIDTH_MAX_RATIO, v


def test_no_block_multiplier_fails_the_depth_band(monkeypatch):
    """Block multipliers at alpha (Table A says alpha / r_L): deep models add up L unscaled branches."""
    forward = rules.forward

    def no_depth_multiplier(d):
        f = forward(d)
        return f | {"hidden": rules.Forward(f["hidden"].init_var, multiplier=(0, 0))}

    monkeypatch.setattr(rules, "forward", no_depth_multiplier)
    v = sweep(DEPTH, parameterizations=["mup"])["mup"]
    assert v["ratio"] > MUP_DEPTH_MAX_RATIO, v


def test_first_step_is_the_initial_forward(corpus):
    """Step 1 is each site's RMS over the whole batch of step 0 in a plain forward of the initial model,
    whether the batch is one forward of 8 or two of 4 (gradient accumulation); step 2 follows the update."""
    _, rest = coord.split_sweep(read_yaml(WIDTH))
    cfg = coord.with_values(from_flat(rest), **{"model.n_embd": 32, "model.n_layer": 3, "train.seed": 5})
    torch.manual_seed(5)
    model, _ = build_model(cfg)
    for micro in (8, 4):
        batches = TokenBatches(corpus, "train", cfg.model.block_size, 8, 5)
        x = torch.cat([batches.get(0, m, micro)[0] for m in range(8 // micro)])
        with torch.no_grad():
            acts = {"embed": model.embed(x)}
            h = acts["embed"]
            for i, block in enumerate(model.blocks):
                h = acts[f"block_{i}"] = block(h)
            acts["block_last"] = h
            acts["final_norm"] = model.ln_f(h)
            acts["logits"] = model.head(acts["final_norm"])
        expected = {site: (a.norm() / a.numel() ** 0.5).item() for site, a in acts.items()}
        rows, _ = coord.run(coord.with_values(cfg, **{"train.micro_batch_size": micro}), steps=1, data=corpus)
        assert {r["site"]: r["rms"] for r in rows if r["step"] == 1} == pytest.approx(expected, rel=1e-5)
        assert {r["step"] for r in rows} == {1, 2}


def test_verdict_reads_the_last_step_seed_mean():
    """rms = c * width^0.5 at the last step once seeds are averaged; earlier steps do not count."""
    rows = [dict(parameterization="mup", width=n, depth=2, seed=seed, step=step, site="block_last",
                 rms=(n**0.5 + (1 if seed == 1 else -1) * 0.25) if step == 3 else float(n))
            for n in (16, 64, 256) for seed in (1, 2) for step in (1, 2, 3)]
    v = coord.verdict(rows, "width")["mup"]
    assert v["slope"] == pytest.approx(0.5) and v["ratio"] == pytest.approx(4.0)
    assert v["rms"] == pytest.approx({16: 4.0, 64: 8.0, 256: 16.0})


def test_sweep_keys_are_checked():
    values = read_yaml(WIDTH)
    with pytest.raises(ConfigError, match="unknown coord key 'coord.widht'"):
        coord.split_sweep(values | {"coord.widht": [64]})
    with pytest.raises(ConfigError, match="coord.axis"):
        coord.split_sweep(values | {"coord.axis": "heads"})
    with pytest.raises(ConfigError, match="coord.depths"):
        coord.split_sweep(values | {"coord.depths": [2, 4]})
    with pytest.raises(ConfigError, match=r"coord.widths\[1\]: expected int"):
        coord.split_sweep(values | {"coord.widths": [32, "wide"]})
    with pytest.raises(ConfigError, match="coord.parameterizations"):
        coord.split_sweep(values | {"coord.parameterizations": ["ntk"]})


def test_script_outputs(tmp_path):
    """The DESIGN contract: coord.csv with its columns and one row per (run, step, site); the figure."""
    out = tmp_path / "coord"
    widths, steps, depth = [32, 64], 2, 2
    cmd = [sys.executable, "scripts/coord_check.py", str(WIDTH), f"coord.widths={widths}", "coord.seeds=[1, 2]",
           f"coord.steps={steps}", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "mup: slope" in result.stdout and "sp: slope" in result.stdout

    with open(out / "coord.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == coord.COLUMNS
        rows = list(reader)
    sites = ["embed", *(f"block_{i}" for i in range(depth)), "block_last", "final_norm", "logits"]
    keys = [(r["parameterization"], int(r["width"]), int(r["depth"]), int(r["seed"]), int(r["step"]), r["site"])
            for r in rows]
    expected = {(p, n, depth, s, t, site) for p in ("sp", "mup") for n in widths for s in (1, 2)
                for t in range(1, steps + 2) for site in sites}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    rms = {k: float(r["rms"]) for k, r in zip(keys, rows)}
    assert all(v > 0 for v in rms.values())
    for (p, n, L, s, t, site), v in rms.items():
        if site == "block_last":
            assert v == rms[p, n, L, s, t, f"block_{depth - 1}"]

    with open(out / "spectral.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == coord.SPECTRAL_COLUMNS
        keys = {r["key"] for r in reader}
    assert "spec/blocks.1.mlp/alpha_dW2_W1" in keys and "spec/head/alpha_W_Rtoinf" in keys

    png = out / "coord.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[0] > 100
    assert (out / "coord.pdf").read_bytes()[:5] == b"%PDF-"
