"""The optimizers check's worker, a process of its own (its peaks and its compiled graphs are its own):

    python -m acceptance.optimizers CONFIG OVERRIDES_JSON STEPS      prints RESULT {json} (verdicts.judge_optimizers)

Every optimizer of optim/registry.py in turn, built as train.py builds it (regional compilation when the config
compiles), trains STEPS steps on one fixed batch (so the loss must fall) with its refresh intervals at 2
(preconditioners, eigenbases and Sophia's curvature pass all run); what dynamo compiled at the first step and
after it, and the peak memory of the steps after the first (the optimizer state exists by then) against
experiments.cost.peak_memory_gib.
"""

import json
import sys

import torch
from torch._dynamo.utils import counters

from acceptance.memory import RandomBatches
from bench.memory import peak_bytes
from config import load_config
from experiments.cost import peak_memory_gib
from mup.scaling import build_model
from optim import registry
from optim.hybrid import build_optimizer
from trainer.runtime import Runtime, compile_blocks
from trainer.step import train_step


class FixedBatch(RandomBatches):
    """The same random batch at every step: a few steps of any optimizer must lower its loss."""

    def get(self, step, index=0, size=1):
        return super().get(0, index, size)


def tensor_bytes(x) -> int:
    """Bytes of the tensors in `x` (an optimizer's state: dicts and lists of tensors)."""
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(map(tensor_bytes, x))
    return sum(map(tensor_bytes, x.values())) if isinstance(x, dict) else 0


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def own(name: str) -> dict:
    """The overrides that make a config's run optimizer `name`'s, with its own values of the optimizer-specific
    keys (optim/registry.py), whatever the config set for its own optimizer."""
    return {"optim.name": name, **{f"optim.{k}": None for k in registry.OWN_KEYS}}


def train_one(name: str, config: str, overrides: dict, steps: int) -> dict:
    intervals = {f"optim.{k}": 2 for k in ("precondition_interval", "hessian_interval") if registry.reads(name, k)}
    cfg = load_config(config, {**overrides, **own(name), **intervals})
    rt = Runtime(cfg)
    rt.start()
    torch.manual_seed(cfg.train.seed)
    raw, table = build_model(cfg, rt.device)
    opt = build_optimizer(cfg, raw, table)
    model = compile_blocks(raw) if cfg.train.compile else raw
    batch = FixedBatch(cfg.model.vocab_size, cfg.model.block_size)
    before = graphs()
    losses = [train_step(model, opt, batch, 0, cfg, rt, raw).item()]  # compiles; creates the optimizer state
    first = graphs() - before

    def rest():
        for s in range(1, steps):
            losses.append(train_step(model, opt, batch, s, cfg, rt, raw).item())

    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # from what is allocated now: weights and optimizer state
        rest()
        peak = torch.cuda.max_memory_allocated()
    else:  # torch.profiler's peak counts from the call's start: add what is alive before it
        alive = tensor_bytes([*raw.parameters(), *raw.buffers()]) + tensor_bytes(opt.state_dict())
        peak = alive + peak_bytes(rest)
    return {"losses": losses, "graphs_first_step": first, "graphs_later": graphs() - before - first,
            "peak_gib": peak / 2**30, "estimate_gib": peak_memory_gib(cfg, 1, rt.device.type)["total"]}


def optimizers_worker(config: str, overrides: dict, steps: int) -> dict:
    results = {}
    for name in registry.OPTIMIZERS:
        results[name] = train_one(name, config, overrides, steps)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next optimizer's peak starts from its own weights
    return results


if __name__ == "__main__":
    print("RESULT " + json.dumps(optimizers_worker(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]))),
          flush=True)
