"""Coordinate check: train a few steps at several widths (or depths) and watch the activations' scale.

Under a correct parameterization the RMS ||h||_R = ||h||_2 / sqrt(numel) of every activation stays put as
the model grows, at init and after updates; one wrong exponent shows up within ten steps as a line that
climbs or falls with width or depth (Fig. 1a,b of the paper, which plots the last block's output h_L).

Step t = 1..steps is the forward of the t-th training step, i.e. the model after t - 1 updates. One extra
forward (no backward, a third of a step) on the next batch adds step steps + 1, the model after the last
update: the state the verdict reads, and the only one that has seen every update. The runs take training
steps (trainer.step), so the check lives with the experiment code; mup/ only holds the rules it checks.
"""

import csv
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from atomic import atomic_path
from config import PARAMETERIZATIONS, Config, ConfigError, check_type, flat_dict, from_flat
from data.loader import TokenBatches
from mup import spectral
from mup.scaling import build_model
from optim.hybrid import build_optimizer
from trainer.runtime import Runtime, check_data
from trainer.step import train_step

COLUMNS = ("parameterization", "width", "depth", "seed", "step", "site", "rms")
SPECTRAL_COLUMNS = ("parameterization", "width", "depth", "seed", "step", "key", "value")
AXES = {"width": "model.n_embd", "depth": "model.n_layer"}


def sites(model) -> dict[str, torch.nn.Module]:
    """The module whose output is each measured site (model.py is arranged so that each site is one). The
    logits are read off the final norm's output: a training forward never materializes them (chunked loss)."""
    return {"embed": model.embed, **{f"block_{i}": b for i, b in enumerate(model.blocks)}, "final_norm": model.ln_f}


class ActivationRMS:
    """Forward hooks that keep each site's mean square on the device, so that reading all sites costs one
    host sync. Micro-batches are equal in size, so the RMS of a step is the root of their mean."""

    def __init__(self, model):
        self.squares = defaultdict(list)
        self.last_block = f"block_{len(model.blocks) - 1}"
        self.head = model.head
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in sites(model).items()]

    def _hook(self, name):
        def hook(module, args, out):
            self.squares[name].append(out.detach().float().pow(2).mean())
            if name == "final_norm":
                with torch.no_grad():
                    self.squares["logits"].append(self.head(out.detach()).float().pow(2).mean())
        return hook

    def read(self) -> dict[str, float]:
        """{site: rms} over the forwards since the last read, `block_last` included; then forget them."""
        names = list(self.squares)
        rms = torch.stack([torch.stack(self.squares[n]).mean() for n in names]).sqrt().tolist()
        self.squares.clear()
        out = dict(zip(names, rms))
        return {**out, "block_last": out[self.last_block]}

    def remove(self):
        for h in self.handles:
            h.remove()


def with_values(cfg: Config, **values) -> Config:
    """A validated copy of `cfg` with some keys set, e.g. with_values(cfg, **{"model.n_embd": 512})."""
    return from_flat({**flat_dict(cfg), **values})


def run(cfg: Config, steps: int = 10, data: Path | None = None, spectral_products: bool = False):
    """One coordinate-check run of `cfg` as given (the caller sets width, depth, parameterization and
    train.seed), at constant lr. Returns (rows, spectral_rows): rows as COLUMNS, and, if asked,
    spectral.report of every update t as SPECTRAL_COLUMNS (step t = the t-th update)."""
    cfg = with_values(cfg, **{"optim.schedule": "constant", "optim.warmup_iters": 0})
    t, ctx = cfg.train, Runtime(cfg)  # a training run's device and numerics (bf16 autocast on CUDA)
    ctx.start()
    torch.manual_seed(t.seed)
    model, table = build_model(cfg, ctx.device)
    optimizer = build_optimizer(cfg, model, table)
    batches = TokenBatches(data or check_data(cfg), "train", cfg.model.block_size, t.batch_size, t.seed)
    probe = ActivationRMS(model)
    run_key = dict(parameterization=cfg.scaling.parameterization, width=cfg.model.n_embd,
                   depth=cfg.model.n_layer, seed=t.seed)
    rows, spectral_rows = [], []
    for step in range(1, steps + 1):
        before = spectral.snapshot(model, table) if spectral_products else None
        train_step(model, optimizer, batches, step - 1, cfg, ctx)  # the training run's step, exactly
        rows += [dict(run_key, step=step, site=site, rms=v) for site, v in probe.read().items()]
        if before is not None:
            report = spectral.report(model, table, before)
            spectral_rows += [dict(run_key, step=step, key=k, value=v) for k, v in report.items()]
    with torch.no_grad(), ctx.autocast:  # step steps + 1: the forward of the model after the last update
        for micro in range(t.batch_size // t.micro_batch_size):
            model(*ctx.to_device(batches.get(steps, micro, t.micro_batch_size)))
    rows += [dict(run_key, step=steps + 1, site=site, rms=v) for site, v in probe.read().items()]
    probe.remove()
    return rows, spectral_rows


@dataclasses.dataclass
class Sweep:
    """The `coord:` section of a coordinate-check config: which runs to make."""
    axis: str = "width"  # width | depth
    widths: list[int] | None = None  # axis width: the widths; depth fixed at `depth`
    depth: int | None = None  # default: the config's model.n_layer
    depths: list[int] | None = None  # axis depth: the depths; width fixed at `width`
    width: int | None = None  # default: the config's model.n_embd
    parameterizations: list[str] = dataclasses.field(default_factory=lambda: ["sp", "mup"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3])
    steps: int = 10
    spectral: bool = True  # also record spectral.report of every update

    @property
    def sizes(self) -> list[int]:
        return self.widths if self.axis == "width" else self.depths


def split_sweep(values: dict) -> tuple[Sweep, dict]:
    """Split a flat config dict into its validated `coord.*` keys and the rest (a run config)."""
    fields = {f.name: f for f in dataclasses.fields(Sweep)}
    coord, rest = {}, {}
    for key, value in values.items():
        if not key.startswith("coord."):
            rest[key] = value
            continue
        name = key.removeprefix("coord.")
        if name not in fields:
            raise ConfigError(f"unknown coord key {key!r}; valid: {', '.join('coord.' + f for f in fields)}")
        coord[name] = check_type(key, value, fields[name].type)
    sweep = Sweep(**coord)
    if sweep.axis not in AXES:
        raise ConfigError(f"coord.axis: {sweep.axis!r} is not one of {', '.join(AXES)}")
    other = "depth" if sweep.axis == "width" else "width"
    if getattr(sweep, f"{other}s") is not None or getattr(sweep, sweep.axis) is not None:
        raise ConfigError(f"coord.axis={sweep.axis} sweeps coord.{sweep.axis}s at a fixed coord.{other}; "
                          f"coord.{other}s and coord.{sweep.axis} do not apply")
    if not sweep.sizes or min(sweep.sizes) <= 0:
        raise ConfigError(f"coord.{sweep.axis}s: expected a non-empty list of positive sizes, got {sweep.sizes}")
    for p in sweep.parameterizations:
        if p not in PARAMETERIZATIONS:
            raise ConfigError(f"coord.parameterizations: {p!r} is not one of {', '.join(PARAMETERIZATIONS)}")
    if not sweep.seeds or sweep.steps <= 0:
        raise ConfigError("coord.seeds must be non-empty and coord.steps > 0")
    return sweep, rest


def run_sweep(cfg: Config, sweep: Sweep, log=print):
    """Every (parameterization, size, seed) of the sweep; returns (rows, spectral_rows) as in `run`."""
    fixed_key = AXES["depth" if sweep.axis == "width" else "width"]
    fixed = sweep.depth if sweep.axis == "width" else sweep.width
    data, rows, spectral_rows = check_data(cfg), [], []
    for p in sweep.parameterizations:
        for size in sweep.sizes:
            for seed in sweep.seeds:
                values = {AXES[sweep.axis]: size, "scaling.parameterization": p, "train.seed": seed}
                if fixed is not None:
                    values[fixed_key] = fixed
                r, s = run(with_values(cfg, **values), sweep.steps, data, sweep.spectral)
                rows += r
                spectral_rows += s
                last = r[-1]["step"]
                h_L = next(x["rms"] for x in r if x["step"] == last and x["site"] == "block_last")
                log(f"{p:>9} {sweep.axis}={size:<5} seed={seed}  |h_L|_R after {last - 1} updates: {h_L:.4g}")
    return rows, spectral_rows


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def seed_means(rows: list[dict], axis: str, site: str = "block_last") -> dict[str, dict[int, dict[int, float]]]:
    """{parameterization: {step: {width or depth: rms of `site` averaged over seeds}}}."""
    groups = defaultdict(list)
    for r in rows:
        if r["site"] == site:
            groups[r["parameterization"], r["step"], r[axis]].append(r["rms"])
    order = {p: i for i, p in enumerate(dict.fromkeys(r["parameterization"] for r in rows))}  # as swept
    out = defaultdict(lambda: defaultdict(dict))
    for (p, step, size), values in sorted(groups.items(), key=lambda g: (order[g[0][0]], *g[0][1:])):
        out[p][step][size] = float(np.mean(values))
    return out


def verdict(rows: list[dict], axis: str) -> dict[str, dict]:
    """Per parameterization, for the seed-averaged ||h_L||_R at the last step: `slope` (least squares of
    log2 rms on log2 width or depth; 0 is the muP ideal) and `ratio` (max / min over the sweep); both NaN
    if a run diverged."""
    out = {}
    for p, by_step in seed_means(rows, axis).items():
        rms = by_step[max(by_step)]
        sizes, values = np.array(list(rms), dtype=float), np.array(list(rms.values()))
        fits = len(sizes) > 1 and np.isfinite(values).all()
        slope = float(np.polyfit(np.log2(sizes), np.log2(values), 1)[0]) if fits else float("nan")
        out[p] = {"slope": slope, "ratio": float(values.max() / values.min()), "rms": rms}
    return out
