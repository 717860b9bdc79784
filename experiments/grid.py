"""Sweep files: a base run config and a grid of settings, expanded into named, validated runs.

    base: ../owt_base.yaml               # a run config, relative to this file
    grid:                                # config keys -> lists; the cartesian product, in file order
      scaling.parameterization: [sp, mup]
      model.n_embd: [128, 256, 512]
      log2_lr: [-10, -9, -8, -7]         # shorthand for optim.lr: [2**-10, ...] (log2_wd: optim.weight_decay)
    overrides:                           # optional: set in every run
      model.n_layer: 4
    seeds: [1, 2]                        # optional: train.seed, the last (fastest) axis

`grid:` may also be a list of such mappings, whose products are concatenated, so that axes that depend on
each other (Fig. 2's per-parameterization LR ranges) stay in one sweep, one directory and one plot. A run
is named after its swept settings (`parameterization=mup,n_embd=256,log2_lr=-7,seed=1`), which is also its
directory. Everything here is checked before any run starts, and none of it needs torch. A launched sweep
leaves its plan in DIR/sweep.json (every run's name and overrides, in order), which plots read.
"""

import dataclasses
import difflib
import itertools
import json
import re
from pathlib import Path

import yaml

from atomic import write_json
from config import KEYS, Config, ConfigError, from_flat, parse_overrides, read_yaml

SWEEP_JSON = "sweep.json"  # in a sweep's directory: its plan
SWEEP_KEYS = ("base", "grid", "overrides", "seeds")
LOG2 = {"log2_lr": "optim.lr", "log2_wd": "optim.weight_decay"}  # grid shorthands: x stands for key = 2**x
RESERVED = ("train.out_dir", "train.resume", "log.wandb_group", "log.wandb_name")  # the sweep sets these for every run
SECTIONS = {key.split(".")[0] for key in KEYS}  # top-level keys of a run config


@dataclasses.dataclass
class Run:
    name: str
    dir: Path
    overrides: dict  # config key -> value, as given to train.py (besides out_dir and resume)
    config: Config  # what train.py will resolve; validated


@dataclasses.dataclass
class Sweep:
    file: Path
    base: Path
    runs: list[Run]


def yaml_scalar(value) -> str:
    """`value` written so that parse_overrides reads it back unchanged (PyYAML reads 1e-05 as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("...\n").strip()


def train_args(overrides: dict, run_dir: Path) -> list[str]:
    """The key=value arguments of one run; its config is exactly what train.py makes of them. With log.wandb,
    the sweep's runs are one wandb group, named after the sweep's directory, each run named as its own."""
    args = {**overrides, "train.out_dir": str(run_dir), "train.resume": "auto",
            "log.wandb_group": Path(run_dir).parent.name, "log.wandb_name": Path(run_dir).name}
    return [f"{key}={yaml_scalar(value)}" for key, value in args.items()]


def grid_points(grid) -> list[dict]:
    """Every point of the grid (a mapping of lists, or a list of them), in file order, last axis fastest."""
    points = []
    for sub in grid if isinstance(grid, list) else [grid]:
        if not isinstance(sub, dict) or not sub:
            raise ConfigError(f"grid: expected a mapping of config keys to lists, got {sub!r}")
        for key, values in sub.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid: {key}: expected a non-empty list, got {values!r}")
        points += [dict(zip(sub, combo)) for combo in itertools.product(*sub.values())]
    return points


def run_name(point: dict) -> str:
    """`parameterization=mup,n_embd=256,log2_lr=-7`: each setting as written, keys shortened when unambiguous."""
    short = [key.rsplit(".", 1)[-1] for key in point]
    parts = [f"{s if short.count(s) == 1 else key}={value}" for s, (key, value) in zip(short, point.items())]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts))  # safe in file names and shells


def expand(key: str, value) -> tuple[str, object]:
    """A grid setting as a config key and value: log2_lr: -7 is optim.lr: 2**-7."""
    if key not in LOG2:
        return key, value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"grid: {key}: expected numbers, got {value!r}")
    return LOG2[key], 2.0**value


def check_key(key: str, where: str, shorthands: bool) -> None:
    """A typo in a sweep file is named with its closest valid key before any run config is built."""
    valid = [*KEYS, *LOG2] if shorthands else list(KEYS)
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        raise ConfigError(f"{where}: unknown config key {key!r}" + (f" (did you mean {close[0]}?)" if close else ""))


def read_sweep_file(path: Path) -> dict:
    """The sweep file's mapping. Anything else (a missing file, bad YAML, a run or coordinate-check config)
    is a one-line ConfigError that says what the file is."""
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: not a sweep file (expected a mapping with base: and grid:)")
    if "grid" not in spec:
        if "coord" in spec:
            raise ConfigError(f"{path} is a coordinate-check config, not a sweep: run it with"
                              f" python scripts/coord_check.py {path} --out DIR")
        if any(str(key).split(".")[0] in SECTIONS for key in spec):
            raise ConfigError(f"{path} is a run config, not a sweep (it has no grid:): train it with"
                              f" python train.py {path}")
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown or "base" not in spec or "grid" not in spec:
        raise ConfigError(f"{path}: a sweep has base:, grid: and optionally overrides:, seeds:"
                          + (f" (unknown: {', '.join(sorted(map(str, unknown)))})" if unknown else ""))
    return spec


def sweep_files(directory: Path) -> list[Path]:
    """The sweep files of `directory` (its *.yaml with a grid:), sorted; the run configs the sweeps take as
    their base (configs/sweeps/tiny_base.yaml) are left out."""
    paths = sorted(Path(directory).glob("*.yaml"))
    return [path for path in paths if "grid" in (yaml.safe_load(path.read_text()) or {})]


def load_sweep(path: Path, out: Path, extra: dict | None = None) -> Sweep:
    """The expanded grid, every run validated; a ConfigError names the first bad run and key. `extra` (the
    command line's key=value) is set in every run like the file's overrides:, and wins over them."""
    path = Path(path)
    spec = read_sweep_file(path)
    base = (path.parent / str(spec["base"])).resolve()
    try:
        values = read_yaml(base)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    fixed = spec.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: overrides: expected a mapping of config keys to values, got {fixed!r}")
    for key in fixed:
        check_key(key, "overrides", shorthands=False)
    for key in extra or {}:
        check_key(key, "command line", shorthands=False)
    fixed = {**fixed, **(extra or {})}
    points = grid_points(spec["grid"])
    for key in dict.fromkeys(key for point in points for key in point):
        check_key(key, "grid", shorthands=True)
    if "seeds" in spec:
        seeds = spec["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"seeds: expected a non-empty list, got {seeds!r}")
        points = [{**point, "train.seed": seed} for point in points for seed in seeds]
    runs, names = [], set()
    for point in points:
        name = run_name(point)
        if name in names:
            raise ConfigError(f"grid: two runs are both named {name}")
        names.add(name)
        swept = dict(expand(key, value) for key, value in point.items())
        twice = sorted(swept.keys() & fixed.keys() | (swept.keys() | fixed.keys()) & set(RESERVED))
        if len(swept) < len(point) or twice:
            raise ConfigError(f"run {name}: {', '.join(twice) or 'a key'} set twice (grid, overrides or the command"
                              f" line, seeds), or one the sweep sets ({', '.join(RESERVED)})")
        overrides = {**fixed, **swept}
        try:
            cfg = from_flat({**values, **parse_overrides(train_args(overrides, out / name))})
        except ConfigError as e:
            raise ConfigError(f"run {name}: {e}") from None
        runs.append(Run(name, out / name, overrides, cfg))
    return Sweep(path.resolve(), base, runs)


def write_plan(sweep: Sweep, out: Path) -> None:
    """DIR/sweep.json: the sweep file, its base and every run's overrides, in the sweep's order."""
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / SWEEP_JSON, {"sweep": str(sweep.file), "base": str(sweep.base),
                                        "runs": {run.name: run.overrides for run in sweep.runs}})


def read_plan(out: Path) -> dict | None:
    """{run name: overrides} of the sweep launched into `out`, in order; None where none was launched there."""
    path = Path(out) / SWEEP_JSON
    return json.loads(path.read_text())["runs"] if path.exists() else None
