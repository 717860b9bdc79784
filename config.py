"""The run configuration: one typed tree, read from YAML, overridden from the command line.

A YAML file may name a parent (`base: other.yaml`, relative to the file) whose values it overrides;
`a.b=value` arguments come last. Every value is checked against its field's type and every cross-field
constraint is checked here, so a bad config fails with a message naming the key before any model exists.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"

PARAMETERIZATIONS = ("sp", "mup", "mup_k1", "mup_width")
OPTIMIZERS = ("muon_kimi", "muon", "adamw", "sgd")


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_embd: int = 256
    head_dim: int = 64  # fixed, so width adds heads
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"  # layernorm | none
    tie_embeddings: bool = True
    attn_scale: str = "sqrt"  # sqrt: 1/sqrt(head_dim); linear: 1/head_dim


@dataclass
class ScalingConfig:
    parameterization: str = "mup"  # sp | mup (k>=2, 1/L) | mup_k1 (1/sqrt(L)) | mup_width
    base_width: int = 256
    base_depth: int = 4
    init_std: float = 0.02  # sigma_base of every matrix
    alpha_in: float = 1.0  # base block multipliers
    alpha_attn: float = 1.0
    alpha_mlp: float = 1.0
    alpha_out: float = 1.0


@dataclass
class OptimConfig:
    name: str = "muon_kimi"  # hidden matrices' optimizer: muon_kimi | muon (+ AdamW for the rest) | adamw | sgd
    lr: float = 2**-7  # eta_base, shared by both halves of the hybrid
    weight_decay: float = 0.0  # lambda_base
    eps: float = 1e-16  # AdamW epsilon_base
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.95  # Muon and SGD
    nesterov: bool = True
    adamw_lr_ratio: float = 1.0  # AdamW half's lr relative to eta_base (the paper's Muon-AdamW uses 0.1)
    ns_steps: int = 5
    ns_dtype: str = "auto"  # Newton-Schulz precision: auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
    grad_clip: float = 1.0  # 0 disables
    schedule: str = "cosine"  # cosine | constant
    warmup_iters: int = 120
    min_lr: float | None = 3e-5  # floor of the cosine, in units of eta_base ...
    min_lr_ratio: float | None = None  # ... or as a fraction of it (set exactly one)


@dataclass
class DataConfig:
    dataset: str = "openwebtext"  # a NAME (openwebtext, stdlib) or a prepared directory
    tokenizer: str = "gpt2"  # gpt2 | bytes


@dataclass
class TrainConfig:
    max_iters: int = 1221
    batch_size: int = 240  # global, in sequences per optimizer step
    micro_batch_size: int = 24  # per rank per forward; accumulation makes up the rest
    eval_interval: int = 200
    eval_iters: int = 20
    log_interval: int = 10
    ckpt_interval: int = 200
    out_dir: str = "out/run"
    seed: int = 1
    resume: str = "none"  # none | auto (latest checkpoint in out_dir, if any)
    stop_after: int | None = None  # checkpoint and stop after this step (time-limited jobs); resume later
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    compile: bool = False


@dataclass
class LogConfig:
    wandb: bool = False
    wandb_project: str = "widthdepth-mup"
    wandb_mode: str = "offline"  # offline | online
    spectral_interval: int = 0  # spectral diagnostics every k steps; 0 = off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


class ConfigError(ValueError):
    pass


CHOICES = {
    "model.norm": ("layernorm", "none"),
    "model.attn_scale": ("sqrt", "linear"),
    "scaling.parameterization": PARAMETERIZATIONS,
    "optim.name": OPTIMIZERS,
    "optim.ns_dtype": ("auto", "float32", "bfloat16"),
    "optim.schedule": ("cosine", "constant"),
    "data.tokenizer": ("gpt2", "bytes"),
    "train.resume": ("none", "auto"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "log.wandb_mode": ("offline", "online"),
}
POSITIVE = (
    "model.n_layer", "model.n_embd", "model.head_dim", "model.block_size", "model.vocab_size",
    "scaling.base_width", "scaling.base_depth", "scaling.init_std", "scaling.alpha_in",
    "scaling.alpha_attn", "scaling.alpha_mlp", "scaling.alpha_out", "optim.lr", "optim.adamw_lr_ratio",
    "optim.ns_steps", "train.max_iters", "train.batch_size", "train.micro_batch_size",
    "train.eval_interval", "train.eval_iters", "train.log_interval", "train.ckpt_interval",
)
NON_NEGATIVE = ("model.dropout", "optim.weight_decay", "optim.eps", "optim.momentum", "optim.grad_clip",
                "optim.warmup_iters", "log.spectral_interval")


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def check_type(key: str, value, tp):
    """Return `value` as type `tp` (int is accepted for float), or raise naming the key."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
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
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _set(cfg: Config, key: str, value) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        names = _fields(node)
        if part not in names:
            path = ".".join(parts[:i])
            valid = [f"{path}.{n}" if path else n for n in names]
            close = difflib.get_close_matches(key if i else part, valid, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else f"; valid: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                example = next(iter(_fields(getattr(node, part))))
                raise ConfigError(f"{key}: is a section; set its keys, e.g. {key}.{example}")
            setattr(node, part, check_type(key, value, names[part].type))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the key form of overrides, sweeps and checkpoints."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_yaml(path: Path, seen: tuple = ()) -> dict:
    """Flat {key: value} of a YAML file with its `base:` chain applied (parent first)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` chain loops")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    flat = {}
    if "base" in raw:
        flat.update(read_yaml(path.parent / raw.pop("base"), seen + (path,)))
    flat.update(flatten(raw))
    return flat


def parse_overrides(args: list[str]) -> dict:
    """`a.b=value` strings to {key: value}, values parsed as YAML scalars (so 2e-3, true, [1, 2] work)."""
    out = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override {arg!r} is not of the form key=value")
        key, text = arg.split("=", 1)
        out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Config from a YAML file (None: the embedded default) plus `key=value` overrides, validated."""
    values = read_yaml(Path(path) if path else DEFAULT_CONFIG)
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        values.update(parse_overrides(overrides or []))
    return from_flat(values)


def from_flat(values: dict) -> Config:
    cfg = Config()
    for key, value in values.items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flat_dict(cfg: Config) -> dict:
    return flatten(to_dict(cfg))


def get(cfg: Config, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config, world_size: int = 1) -> None:
    """Cross-field checks; raise ConfigError naming the key."""
    for key, choices in CHOICES.items():
        if get(cfg, key) not in choices:
            raise ConfigError(f"{key}: {get(cfg, key)!r} is not one of {', '.join(choices)}")
    for key in POSITIVE:
        if not get(cfg, key) > 0:
            raise ConfigError(f"{key}: must be > 0, got {get(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if not get(cfg, key) >= 0:
            raise ConfigError(f"{key}: must be >= 0, got {get(cfg, key)!r}")
    m, o, t = cfg.model, cfg.optim, cfg.train
    if m.n_embd % m.head_dim:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.head_dim={m.head_dim}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {o.betas}")
    if (o.min_lr is None) == (o.min_lr_ratio is None):
        raise ConfigError("optim.min_lr and optim.min_lr_ratio: set exactly one (the other to null)")
    floor = min_lr_ratio(o)
    if not 0 <= floor <= 1:
        raise ConfigError(f"optim.min_lr / optim.min_lr_ratio: floor must lie in [0, optim.lr], got ratio {floor}")
    per_step = t.micro_batch_size * world_size
    if t.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size={t.micro_batch_size}"
            f" x {world_size} ranks"
        )


def min_lr_ratio(o: OptimConfig) -> float:
    """The schedule's floor as a fraction of each group's base lr."""
    return o.min_lr / o.lr if o.min_lr is not None else o.min_lr_ratio
