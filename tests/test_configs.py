"""Every shipped run validates on the GPU counts the README promises: each run config under configs/, every
run of every sweep under configs/sweeps/, and the run settings of every coordinate check under configs/coord/
(1, 2, 4 and 8 ranks for GPU runs, 1 and 2 for the CPU-tiny ones); and every GPU run at its micro-batch fits
an 80 GB GPU by experiments.cost's estimate. Sweep files are expanded by experiments.grid, as sweep.py does."""

from pathlib import Path

import pytest

from config import ConfigError, from_flat, read_yaml, validate
from experiments import cost, grid

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GPU_WORLDS, CPU_WORLDS = (1, 2, 4, 8), (1, 2)


def run_configs():
    """(path, Config) of each run config at the top of configs/."""
    return [(path, from_flat(read_yaml(path))) for path in sorted(CONFIGS.glob("*.yaml"))]


def sweep_runs():
    """(path, name, Config) of every run of every sweep under configs/sweeps/ (the base run configs of the sweeps,
    such as tiny_base.yaml, are not sweeps), as experiments.grid expands them for scripts/sweep.py."""
    return [(path, run.name, run.config) for path in grid.sweep_files(CONFIGS / "sweeps")
            for run in grid.load_sweep(path, Path(path.stem)).runs]  # the out dir only names run.dir


def coord_configs():
    """(path, Config) of the run settings of every coordinate check (its `coord:` section stripped)."""
    out = []
    for path in sorted((CONFIGS / "coord").glob("*.yaml")):
        values = {k: v for k, v in read_yaml(path).items() if not (k == "coord" or k.startswith("coord."))}
        out.append((path, from_flat(values)))
    return out


def worlds(cfg):
    return CPU_WORLDS if cfg.train.device == "cpu" else GPU_WORLDS


def check(cfg, where: str):
    for world in worlds(cfg):
        try:
            validate(cfg, world_size=world)
        except ConfigError as e:
            pytest.fail(f"{where} on {world} rank(s): {e}")


def test_the_lists_are_not_empty():
    assert len(run_configs()) >= 3
    assert len(sweep_runs()) > 500  # the paper-scale sweeps alone hold several hundred runs
    assert len(coord_configs()) == len(list((CONFIGS / "coord").glob("*.yaml")))
    assert {p.name for p, _ in run_configs()} >= {"default.yaml", "owt_base.yaml", "owt_gpt2_124m.yaml"}


@pytest.mark.parametrize("path, cfg", run_configs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_run_configs_validate_on_every_rank_count(path, cfg):
    check(cfg, str(path.relative_to(ROOT)))


def test_every_sweep_run_validates_on_every_rank_count():
    for path, name, cfg in sweep_runs():
        check(cfg, f"{path.relative_to(ROOT)} run {name}")


@pytest.mark.parametrize("path, cfg", coord_configs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_coord_configs_validate_on_every_rank_count(path, cfg):
    check(cfg, str(path.relative_to(ROOT)))


def test_gpu_configs_are_the_paper_scale_ones():
    """The rank counts a config is held to follow its device: the paper-scale files run on GPUs."""
    gpu = {str(p.relative_to(ROOT)) for p, c in run_configs() + coord_configs() if c.train.device != "cpu"}
    gpu |= {str(p.relative_to(ROOT)) for p, _, c in sweep_runs() if c.train.device != "cpu"}
    assert {"configs/owt_base.yaml", "configs/owt_gpt2_124m.yaml", "configs/sweeps/depth.yaml",
            "configs/sweeps/width.yaml", "configs/coord/paper.yaml", "configs/coord/depth.yaml"} <= gpu
    assert not any("tiny" in p or p.endswith("default.yaml") for p in gpu)


def test_every_gpu_run_fits_an_80gb_gpu():
    """experiments.cost's estimate (bf16 eager, the file's activation checkpointing, 8 ranks) of every GPU run of
    every config and sweep, at the micro-batch the file sets, fits an 80 GB card with 10% to spare."""
    runs = [(str(p.relative_to(ROOT)), c) for p, c in run_configs() + coord_configs()]
    runs += [(f"{p.relative_to(ROOT)} run {name}", c) for p, name, c in sweep_runs()]
    over = {name: round(e["total"], 1) for name, c in runs if c.train.device != "cpu"
            for e in [cost.peak_memory_gib(c, world=8)] if e["total"] > cost.CARD_GIB}
    assert not over, f"estimated GiB over {cost.CARD_GIB} GiB: {over}"
