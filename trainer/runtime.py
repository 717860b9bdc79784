"""The process a run lives in: ranks, device, numerics, the DDP process group, and the checks of the
machine and the data that can fail before any compute."""

import copy
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from config import Config, ConfigError
from data.loader import ensure_offline_corpus, open_dataset, resolve_data_dir


class Runtime:
    """Distributed context, device and numerics of this process (torchrun's environment, or one process)."""

    def __init__(self, cfg: Config):
        self.ddp = "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.master = self.rank == 0
        want = cfg.train.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            check_cuda(self.local_rank, cfg.train.dtype)
        self.device = torch.device(f"cuda:{self.local_rank}" if want == "cuda" else "cpu")
        dtype = cfg.train.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                         else nullcontext())

    def start(self):
        # No TF32 (torch's default for matmuls): under bf16 autocast every matmul of the model is bf16 already, so
        # TF32 only cut the optimizers' float32 math (a float32 Newton-Schulz, SSO's power iteration and msign,
        # SOAP's eigenbases) to 10-bit mantissas; and a train.dtype=float32 run is then a float32 reference.
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.ddp:
            cuda = self.device.type == "cuda"
            init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)

    def stop(self, together: bool):
        """Leave the process group; ranks that all got to the end meet first, so that none tears the group down
        while another still writes."""
        if self.ddp and dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()

    def to_device(self, batch):
        """Pinned host memory makes the copy asynchronous: the GPU does not wait for the next batch."""
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
        return batch

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks."""
        if self.ddp:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.sum(t) / self.world


def init_process_group(backend: str, **kwargs) -> None:
    """torch.distributed's, with dynamo imported first. Imported while a group exists (torch.optim's optimizers
    import it), dynamo keeps that group alive past destroy_process_group (torch 2.13), so gloo's worker threads
    run on into interpreter shutdown, where one freeing a collective's tensor takes the GIL and aborts the
    finished process (SIGABRT, "terminate called without an active exception": 3 in ~500 two-process test runs
    on 2 loaded cores, none in 200 since). Imported first, it holds nothing and the destroy joins those threads."""
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend, **kwargs)


def check_cuda(local_rank: int, dtype: str) -> None:
    """The CUDA setup errors that would otherwise surface as tracebacks on every rank."""
    if not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"local rank {local_rank} has no GPU: {count} visible"
                          f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')});"
                          f" use torchrun --nproc_per_node={count} or fewer")
    if dtype in ("auto", "bfloat16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(local_rank)} has no bfloat16; use train.dtype=float32")


def check_data(cfg: Config, master: bool = True) -> Path:
    """The prepared corpus of `cfg`, checked against the model; the offline one is prepared on first use
    (offline and quick, so the embedded default runs on a fresh machine)."""
    data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.tokenizer)
    if cfg.data.dataset == "stdlib" and master:
        ensure_offline_corpus(cfg.data.tokenizer)
    if dist.is_initialized():
        dist.barrier()
    meta = open_dataset(data_dir, cfg.model.block_size)
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary"
                          f" ({meta['vocab_size']}, {meta['tokenizer']})")
    if meta["tokenizer"] != cfg.data.tokenizer:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer!r} but {data_dir} holds {meta['tokenizer']!r} tokens")
    return data_dir


def check_out_dir(out: Path) -> None:
    """out_dir must be a directory this process can write (or creatable), checked before any compute."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"train.out_dir={out}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir={out}: {probe} is not writable")


def check_wandb(cfg: Config) -> None:
    """wandb must be importable, and logged in when online, before any compute (not at the first log)."""
    if not cfg.log.wandb:
        return
    try:
        import wandb
    except ImportError as e:
        raise ConfigError("log.wandb=true needs wandb: pip install wandb") from e
    if cfg.log.wandb_mode == "online" and not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
        raise ConfigError("log.wandb_mode=online needs credentials: run `wandb login` or set WANDB_API_KEY"
                          " (or use log.wandb_mode=offline and `wandb sync` later)")


def compile_blocks(model: nn.Module) -> nn.Module:
    """Regional compilation: a view of `model` whose blocks are compiled one by one. The blocks share their code,
    so dynamo compiles one and reuses it: compile time does not grow with depth (CPU inductor, n=128, cold cache:
    12.6, 12.6, 13.3 s at L = 4, 16, 64, against 20, 37, 106 s for the whole model; steps 2-17% slower, the
    embedding and the loss staying eager). The view shares every parameter;
    `model` itself stays uncompiled, so evaluation on it (no grad, eval mode) never recompiles anything.

    Under DDP, dynamo's optimize_ddp (on by default) would cut each block's graph again at DDP's 25 MB buckets,
    for an all-reduce to start inside one compiled backward; here each block's backward already hands DDP its
    gradients as it ends. So it is off: python -m bench.ddp_compile (2 gloo ranks, n=768, a block of 28 MB) found
    1 graph instead of 2, the first step 14.3 s instead of 35.2 (9.7 instead of 33.5 with activation
    checkpointing), the same losses bit for bit, no graph break either way."""
    torch._dynamo.config.optimize_ddp = False
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["blocks"] = nn.ModuleList(torch.compile(block) for block in model.blocks)
    return view
