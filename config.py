"""The run configuration: one typed tree, read from YAML, overridden from the command line.

Every key is declared once, below, with its type (a Literal for a choice), default, constraint and a one-line
doc; validation, the choices and `python train.py --help` all derive from that declaration. A YAML file may
name a parent (`base: other.yaml`, relative to the file) whose values it overrides; `a.b=value` arguments come
last. Every value is checked against its key's type and constraint, and every cross-key constraint is checked
here, so a bad config fails with a message naming the key before any model exists.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from optim import registry

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Bound:
    """A constraint on a number: `value > low` (>= with `inclusive`), and `value < high` if given (<= with
    `high_inclusive`)."""
    low: float
    inclusive: bool = False
    high: float | None = None
    high_inclusive: bool = False

    def holds(self, v) -> bool:
        above = v >= self.low if self.inclusive else v > self.low
        below = self.high is None or (v <= self.high if self.high_inclusive else v < self.high)
        return above and below

    def __str__(self) -> str:
        text = f"{'>=' if self.inclusive else '>'} {self.low:g}"
        return text + (f" and {'<=' if self.high_inclusive else '<'} {self.high:g}" if self.high is not None else "")


POSITIVE, NON_NEGATIVE = Bound(0), Bound(0, inclusive=True)


def key(default, doc: str, bound: Bound | None = None):
    """Declare a config key: its default, what it means, and the bound its value (or each item) must satisfy."""
    meta = {"doc": doc, "bound": bound}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


Parameterization = Literal["sp", "mup", "mup_k1", "mup_width"]
OptimizerName = Literal[tuple(registry.OPTIMIZERS)]


@dataclass
class ModelConfig:
    n_layer: int = key(4, "depth L: number of transformer blocks", POSITIVE)
    n_embd: int = key(256, "width n: residual stream dimension", POSITIVE)
    head_dim: int = key(64, "per-head dimension, fixed so that width adds heads", POSITIVE)
    block_size: int = key(1024, "sequence length (context window)", POSITIVE)
    vocab_size: int = key(50304, "embedding rows; GPT-2's 50257 padded to a multiple of 64", POSITIVE)
    dropout: float = key(0.0, "dropout probability (residual branches, embedding, attention)", Bound(0, True, 1))
    bias: bool = key(True, "biases in linear layers and LayerNorms")
    norm: Literal["layernorm", "none"] = key("layernorm", "pre-norm of every block and final norm; none: the paper's no-LN runs")
    tie_embeddings: bool = key(True, "the LM head shares the token embedding matrix")
    attn_scale: Literal["sqrt", "linear"] = key("sqrt", "attention logit scale: sqrt = 1/sqrt(head_dim), linear = 1/head_dim")
    activation_checkpointing: bool = key(
        False, "recompute each block's activations in backward: ~1/3 more compute, block activations not kept")


@dataclass
class ScalingConfig:
    parameterization: Parameterization = key(
        "mup", "sp | mup (blocks of k >= 2 layers, 1/L) | mup_k1 (one-layer blocks, 1/sqrt(L)) | mup_width (width only)")
    base_width: int = key(256, "n_base: the width the base hyperparameters were tuned at", POSITIVE)
    base_depth: int = key(4, "L_base: the depth the base hyperparameters were tuned at", POSITIVE)
    init_std: float = key(0.02, "sigma_base: init std of every matrix at the base shape", POSITIVE)
    alpha_in: float = key(1.0, "base multiplier of the embedding", POSITIVE)
    alpha_attn: float = key(1.0, "base multiplier of every attention branch", POSITIVE)
    alpha_mlp: float = key(1.0, "base multiplier of every MLP branch", POSITIVE)
    alpha_out: float = key(1.0, "base multiplier of the logits", POSITIVE)
    depth_exponent: float | None = key(
        None, "alpha_d in [0.5, 1], the spec's general depth exponent (CompleteP-style sweeps); null: 1 for mup,"
              " 0.5 for mup_k1; sp and mup_width do not scale with depth and ignore it", Bound(0.5, True, 1, True))
    paper_rows: bool = key(
        False, "scale the hidden matrices by the paper's row where the project ships its own (soap: Table C instead of"
               " the row derived from the SOAP that runs; docs/SPEC-mup.md)")


OWN = "null: the optimizer's own (--help lists them)"


@dataclass
class OptimConfig:
    """Keys marked `own` default to null and take the chosen optimizer's own value (optim/registry.py); under an
    optimizer that does not read one, it stays null and may not be set."""
    name: OptimizerName = key("muon_kimi", "the optimizer of hidden matrices and of the rest (listed below)")
    lr: float = key(2**-7, "eta_base: the learning rate at the base shape, shared by both halves", POSITIVE)
    weight_decay: float = key(0.0, "lambda_base: decoupled weight decay at the base shape", NON_NEGATIVE)
    eps: float = key(1e-16, "epsilon_base of AdamW (the AdamW half too) and Sophia at the base shape, scaled by"
                            " Table B's row", NON_NEGATIVE)
    matrix_eps: float | None = key(None, f"own: epsilon_base of the hidden matrices' Shampoo (relative to each"
                                         f" statistic's largest eigenvalue) or SOAP, scaled by its row; {OWN}",
                                   POSITIVE)
    betas: list[float] | None = key(None, f"own: (beta1, beta2) of every Adam-type, Lion or Sophia moment of the run;"
                                          f" {OWN}", Bound(0, True, 1))
    momentum: float = key(0.95, "momentum of Muon, SSO and SGD", NON_NEGATIVE)
    nesterov: bool = key(True, "Nesterov momentum for Muon, SSO and SGD")
    adamw_lr_ratio: float | None = key(None, f"own: the AdamW half's lr / eta_base (hybrids only); {OWN}", POSITIVE)
    ns_steps: int = key(5, "Newton-Schulz iterations of Muon and SSO", POSITIVE)
    ns_dtype: Literal["auto", "float32", "bfloat16"] = key(
        "auto", "Newton-Schulz precision; auto: bf16 on CUDA, fp32 on CPU (SSO: fp32 everywhere, as its paper)")
    # A bool defaulting to false as before CUDA batched by default, so that finished runs' records still compare
    # equal (the per-matrix path on CPU, as then); on CUDA today's runs differ from theirs by float rounding only
    ns_batched: bool = key(False, "Muon: one Newton-Schulz iteration per stack of same-shape matrices (q, k, v, o"
                                  " of every block...) on CPU too; on CUDA always (per-matrix calls bound a deep"
                                  " model there); equal to the per-matrix path up to float rounding")
    precondition_interval: int | None = key(
        None, f"own: steps between refreshes of Shampoo's inverse roots or SOAP's eigenbases; {OWN}", POSITIVE)
    max_precondition_dim: int | None = key(
        None, f"own: SOAP leaves a side longer than this unpreconditioned; {OWN}", POSITIVE)
    hessian_interval: int | None = key(
        None, f"own: Sophia's steps between Gauss-Newton-Bartlett Hessian estimates (k); {OWN}", POSITIVE)
    hessian_batch_size: int | None = key(
        None, f"own: sequences of Sophia's Hessian estimate, the first of the step's batch (all of it if smaller),"
              f" split across ranks; {OWN}", POSITIVE)
    sophia_rho: float | None = key(
        None, f"own: Sophia's scale rho of the Hessian in the denominator max(rho h, eps); {OWN}", POSITIVE)
    sophia_clip: float | None = key(
        None, f"own: Sophia clips each coordinate of the update to [-clip, clip]; {OWN}", POSITIVE)
    sso_radius: float | None = key(
        None, f"own: SSO's radius c of the spectral sphere ||W||_2 = c sqrt(out/in) of each hidden matrix; {OWN}",
        POSITIVE)
    grad_clip: float = key(1.0, "clip the global gradient norm to this; 0 disables", NON_NEGATIVE)
    schedule: Literal["cosine", "linear", "constant"] = key(
        "cosine", "after warm-up (and until optim.decay_start): cosine or linear decay to the floor, or constant")
    warmup_iters: int = key(120, "linear warm-up steps", NON_NEGATIVE)
    decay_start: int | None = key(None, "the step the decay starts at (a cool-down); null: the end of the warm-up",
                                  NON_NEGATIVE)
    min_lr: float = key(3e-5, "the cosine's floor at eta_base; every tensor decays to the fraction min_lr / lr"
                              " of its own lr", NON_NEGATIVE)


@dataclass
class DataConfig:
    dataset: str = key("openwebtext", "a corpus NAME (openwebtext, stdlib) or a prepared directory")
    tokenizer: Literal["gpt2", "bytes"] = key("gpt2", "gpt2 (tiktoken) or bytes (vocabulary 256)")


@dataclass
class TrainConfig:
    max_iters: int = key(1221, "optimizer steps", POSITIVE)
    batch_size: int = key(240, "global batch in sequences per optimizer step", POSITIVE)
    micro_batch_size: int = key(24, "sequences per rank per forward; accumulation makes up the rest", POSITIVE)
    eval_interval: int = key(200, "validation every this many steps (and always at the end)", POSITIVE)
    eval_windows: int = key(480, "size of the validation set, in windows of block_size tokens", POSITIVE)
    eval_seed: int = key(0, "seed of the validation set's windows: fixed apart from train.seed, ranks and micro-batch")
    log_interval: int = key(10, "log the train loss every this many steps", POSITIVE)
    ckpt_interval: int = key(200, "checkpoint every this many steps (and at the end)", POSITIVE)
    out_dir: str = key("out/run", "directory of config.yaml, metrics.jsonl, ckpt.pt and run.json")
    seed: int = key(1, "seed of init, batches and dropout")
    resume: Literal["none", "auto"] = key("none", "auto: continue from out_dir's checkpoint if there is one")
    init_from: str | None = key(None, "fork: start this new run from the checkpoint of the run in this directory, at"
                                      " its step (weights, and optimizer state unless init_from_optim is false);"
                                      " shapes must match")
    init_from_optim: bool = key(True, "with init_from: also take the parent's optimizer state (moments, momentum,"
                                      " preconditioners), under this run's own hyperparameters")
    stop_after: int | None = key(None, "checkpoint and stop after this step (time-limited jobs)", POSITIVE)
    device: Literal["auto", "cpu", "cuda"] = key("auto", "auto: cuda if visible, else cpu")
    dtype: Literal["auto", "float32", "bfloat16"] = key("auto", "autocast dtype; auto: bf16 on CUDA, fp32 on CPU")
    compile: bool = key(False, "torch.compile each block (regional: compile time independent of depth)")


@dataclass
class LogConfig:
    wandb: bool = key(False, "log to Weights & Biases")
    wandb_project: str = key("widthdepth-mup", "wandb project")
    wandb_mode: Literal["offline", "online"] = key("offline", "online needs credentials (wandb login)")
    wandb_group: str | None = key(None, "wandb group; a sweep sets its directory's name")
    wandb_name: str | None = key(None, "wandb run name; None: train.out_dir (a sweep sets the run's name)")
    spectral_interval: int = key(0, "spectral diagnostics every this many steps; 0 = off", NON_NEGATIVE)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def declarations(cls=Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """{"model.n_layer": its Field, ...}: every key of the tree, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            out.update(declarations(f.type, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


KEYS = declarations()


def _literal(tp):
    """The Literal inside `tp` (possibly `Literal[...] | None`), or None."""
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) is Literal:
            return t
    return None


def choices(key_name: str) -> tuple:
    """The valid values of a choice key, e.g. choices("optim.name")."""
    return typing.get_args(_literal(KEYS[key_name].type))


PARAMETERIZATIONS = choices("scaling.parameterization")


def type_name(tp) -> str:
    if _literal(tp) is not None:
        return "choice"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else tp.__name__


def check_type(key_name: str, value, tp):
    """Return `value` as type `tp` (int is accepted for float), or raise naming the key."""
    literal = _literal(tp)
    if literal is not None:
        options = typing.get_args(literal)
        if value is None and type(None) in typing.get_args(tp):
            return None
        if value not in options:
            raise ConfigError(f"{key_name}: {value!r} is not one of {', '.join(map(str, options))}")
        return value
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key_name}: expected a list, got {value!r}")
        return [check_type(f"{key_name}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key_name}: expected {tp.__name__}, got {value!r}")
    return value


def _unknown(key_name: str) -> ConfigError:
    section = key_name.rsplit(".", 1)[0] if "." in key_name else ""
    if section and f"{section}." not in {k[: len(section) + 1] for k in KEYS}:
        sections = sorted({k.split(".")[0] for k in KEYS})
        return ConfigError(f"unknown config key {key_name!r}: no section {section!r} (sections: {', '.join(sections)})")
    if any(k.startswith(key_name + ".") for k in KEYS):
        example = next(k for k in KEYS if k.startswith(key_name + "."))
        return ConfigError(f"{key_name}: is a section; set its keys, e.g. {example}")
    close = difflib.get_close_matches(key_name, list(KEYS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else "; python train.py --help lists every key"
    return ConfigError(f"unknown config key {key_name!r}{hint}")


def _set(cfg: "Config", key_name: str, value) -> None:
    if key_name not in KEYS:
        raise _unknown(key_name)
    f = KEYS[key_name]
    value = check_type(key_name, value, f.type)
    bound = f.metadata["bound"]
    for v in (value if isinstance(value, list) else [value]):
        if bound is not None and v is not None and not bound.holds(v):
            raise ConfigError(f"{key_name}: must be {bound}, got {value!r}")
    section, name = key_name.rsplit(".", 1)
    setattr(get(cfg, section), name, value)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the key form of overrides, sweeps and checkpoints."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _safe_load(text: str, where: str, lines: bool = True):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None and lines else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}{line}: YAML syntax error: {problem}") from None


def read_yaml(path: Path, seen: tuple = ()) -> dict:
    """Flat {key: value} of a YAML file with its `base:` chain applied (parent first)."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` chain loops")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = _safe_load(path.read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    flat = {}
    if "base" in raw:
        flat.update(read_yaml(path.parent / str(raw.pop("base")), seen + (path,)))
    flat.update(flatten(raw))
    return flat


def parse_overrides(args: list[str]) -> dict:
    """`a.b=value` strings to {key: value}, values parsed as YAML scalars (so 2e-3, true, [1, 2] work)."""
    out = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override {arg!r} is not of the form key=value")
        name, text = arg.split("=", 1)
        name = name.strip()
        out[name] = _safe_load(text, f"override {name}={text}", lines=False) if text.strip() else ""
    return out


def split_command_line(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]` -> (CONFIG or None, overrides): the command line of every run tool."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


# Files of other tools, told apart by their top-level keys, so that passing one to a run says what it is.
OTHER_FILES = {
    "grid": "a sweep file: run it with python scripts/sweep.py {path} --out DIR",
    "coord": "a coordinate-check config: run it with python scripts/coord_check.py {path} --out DIR",
}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> "Config":
    """Config from a YAML file (None: the embedded default) plus `key=value` overrides, validated."""
    values = read_yaml(Path(path) if path else DEFAULT_CONFIG)
    for top, what in OTHER_FILES.items():
        if any(k == top or k.startswith(top + ".") for k in values):
            raise ConfigError(f"{path} is {what.format(path=path)}")
    values.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides or []))
    return from_flat(values)


def from_flat(values: dict) -> "Config":
    cfg = Config()
    for name, value in values.items():
        _set(cfg, name, value)
    resolve_own(cfg.optim)
    validate(cfg)
    return cfg


def resolve_own(o: OptimConfig) -> None:
    """Fill the optimizer-specific keys a config left null with the chosen optimizer's own values; one it set
    that the optimizer does not read is an error (it would silently do nothing)."""
    for name in registry.OWN_KEYS:
        value = getattr(o, name)
        if value is None:
            setattr(o, name, registry.own_default(o.name, name))
        elif not registry.reads(o.name, name):
            users = [opt for opt in registry.OPTIMIZERS if registry.reads(opt, name)]
            raise ConfigError(f"optim.{name}={value!r} is not read by optim.name={o.name} (only by {', '.join(users)})")


def default(key_name: str):
    f = KEYS[key_name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def with_defaults(flat: dict) -> dict:
    """A flat config saved by an older version, in today's keys: a key added since takes its default (what
    that run trained with, since a new key's default keeps the old behaviour), a removed key is dropped, and an
    optimizer-specific key its optimizer does not read is null (older versions gave every key a value)."""
    out = {k: flat[k] if k in flat else default(k) for k in KEYS}
    for name in registry.OWN_KEYS:
        if out["optim.name"] in registry.OPTIMIZERS and not registry.reads(out["optim.name"], name):
            out[f"optim.{name}"] = None
    return out


def to_dict(cfg: "Config") -> dict:
    return dataclasses.asdict(cfg)


def flat_dict(cfg: "Config") -> dict:
    return flatten(to_dict(cfg))


def get(cfg, key_name: str):
    node = cfg
    for part in key_name.split("."):
        node = getattr(node, part)
    return node


def divisors_hint(batch: int, micro: int, world: int) -> str:
    """The micro-batch sizes that split `batch` over `world` ranks, for an error message."""
    fits = [m for m in range(1, batch // world + 1) if batch % (m * world) == 0]
    if not fits:
        return f"no micro-batch splits {batch} sequences over {world} ranks: make train.batch_size a multiple of {world}"
    below = [m for m in fits if m <= micro]
    best = f" (the largest <= {micro}: {below[-1]})" if below else ""
    return f"with {world} ranks use train.micro_batch_size in {{{', '.join(map(str, fits))}}}{best}"


def validate(cfg: "Config", world_size: int = 1) -> None:
    """Cross-key checks; raise ConfigError naming the key."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    if m.n_embd % m.head_dim:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.head_dim={m.head_dim}")
    if o.betas is not None and len(o.betas) != 2:
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {o.betas}")
    if cfg.scaling.paper_rows and registry.get(o.name).paper_row is None:
        raise ConfigError(f"scaling.paper_rows: optim.name={o.name} has no row of its own; its row is the paper's")
    if o.decay_start is not None and not o.warmup_iters <= o.decay_start <= t.max_iters:
        raise ConfigError(f"optim.decay_start={o.decay_start} must lie between optim.warmup_iters={o.warmup_iters}"
                          f" and train.max_iters={t.max_iters}")
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr:g} exceeds optim.lr={o.lr:g}: the floor must lie in [0, optim.lr]")
    if t.batch_size % (t.micro_batch_size * world_size):
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size={t.micro_batch_size}"
            f" x {world_size} ranks; {divisors_hint(t.batch_size, t.micro_batch_size, world_size)}"
        )


def describe_keys() -> str:
    """Every key with its type, default, choices and doc: the body of `python train.py --help`."""
    lines = []
    for name, f in KEYS.items():
        literal = _literal(f.type)
        kind = "|".join(map(str, typing.get_args(literal))) if literal is not None else type_name(f.type)
        bound = f.metadata["bound"]
        lines.append(f"  {name:<28} {kind:<22} = {default(name)!r:<16} {f.metadata['doc']}"
                     + (f" (must be {bound})" if bound is not None else ""))
    lines.append("\noptimizers (optim.name) and their own values of the null optim.* keys:")
    for name, spec in registry.OPTIMIZERS.items():
        own = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        lines.append(f"  {name:<10} {spec.doc}" + (f"\n  {'':<10} {own}" if own else ""))
    return "\n".join(lines)
