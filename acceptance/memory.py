"""The memory checks' worker, a process of its own so that its peak is its own:

    python -m acceptance.memory CONFIG OVERRIDES_JSON      prints RESULT {json} (what verdicts.judge_memory reads)

Peak memory of two training steps at the config's micro-batch, against experiments.cost's estimate (what the
configs' micro-batches are sized with), then one timed forward+backward and one timed step.
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

import perf
from bench.memory import peak_bytes
from config import ROOT, load_config
from experiments.cost import CARD_GIB, peak_memory_gib
from experiments.grid import load_sweep
from model import GPT
from mup.scaling import build_model, multipliers
from optim.hybrid import build_optimizer
from trainer.runtime import Runtime
from trainer.step import train_step

def memory_estimate(cfg, world: int) -> tuple[float, float]:
    """(the estimated peak GiB of one of `world` ranks training `cfg` at its micro-batch, the GiB every GPU run is
    held to): experiments.cost.peak_memory_gib (what the configs' micro-batches are chosen with) and CARD_GIB."""
    return peak_memory_gib(cfg, world=world)["total"], CARD_GIB


class RandomBatches:
    """TokenBatches' interface over random tokens: a step's speed and memory do not depend on what they are."""

    def __init__(self, vocab: int, seq: int):
        self.vocab, self.seq = vocab, seq

    def get(self, step, index=0, size=1):
        g = torch.Generator().manual_seed(step * 1009 + index)
        x, y = torch.randint(0, self.vocab, (2, size, self.seq), generator=g)
        return x, y


def memory_worker(config: str, overrides: dict) -> dict:
    """Peak memory of two training steps (trainer.step.train_step at the config's micro-batch, no accumulation,
    eager) of `config` + `overrides`, the weights included; then one timed forward+backward and one timed step."""
    cfg = load_config(config, overrides)
    rt = Runtime(cfg)
    rt.start()
    cuda = rt.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    m, micro = cfg.model, cfg.train.micro_batch_size
    (estimate, limit), (estimate_8, _) = memory_estimate(cfg, 1), memory_estimate(cfg, 8)
    out = {"n_embd": m.n_embd, "n_layer": m.n_layer, "micro": micro, "seq": m.block_size, "limit_gib": limit,
           "estimate_gib": estimate, "estimate_8_gib": estimate_8}
    torch.manual_seed(cfg.train.seed)
    model, table = build_model(cfg, rt.device)
    opt = build_optimizer(cfg, model, table)
    batches = RandomBatches(m.vocab_size, m.block_size)
    losses = []

    def steps():
        for s in range(2):  # the first creates the optimizer state
            losses.append(train_step(model, opt, batches, s, cfg, rt, model).item())

    if cuda:
        out["card_gib"] = torch.cuda.get_device_properties(rt.device).total_memory / 2**30
        torch.cuda.reset_peak_memory_stats()  # the peak starts from what is allocated now: the weights
        try:
            steps()
        except torch.cuda.OutOfMemoryError as e:
            return {**out, "oom": str(e).splitlines()[0][:200], "losses": losses}
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:  # torch.profiler's peak counts from the call's start: add what is alive before it
        alive = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        out["peak_gib"] = (alive + peak_bytes(steps)) / 2**30
    out["losses"] = losses

    x, y = rt.to_device(batches.get(2, 0, micro))
    sync()
    t0 = time.perf_counter()
    with rt.autocast:
        loss = model(x, y)[1]
    loss.backward()
    sync()
    fwd_bwd = time.perf_counter() - t0
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    losses.append(train_step(model, opt, batches, 3, cfg, rt, model).item())
    sync()
    out["step_s"] = time.perf_counter() - t0
    with torch.device("meta"):  # not a copy of the model: that would take its weights' memory again
        flops = perf.train_flops_per_token(GPT(m, **multipliers(cfg)))
    peak = perf.peak_flops(rt.device)
    out["tokens_per_s"] = micro * m.block_size / fwd_bwd
    out["mfu"] = out["tokens_per_s"] * flops / peak if peak else None
    return out


def largest_run(sweep: str):
    """The sweep's run with the largest memory estimate (μP at the base LR among equals): its base and overrides."""
    s = load_sweep(ROOT / sweep, Path(tempfile.gettempdir()) / "acceptance-sweep")
    base_lr = load_config(s.base).optim.lr
    return max(s.runs, key=lambda r: (round(memory_estimate(r.config, 1)[0], 6),
                                      r.config.scaling.parameterization == "mup",
                                      -abs(math.log2(r.config.optim.lr / base_lr)))), s.base



if __name__ == "__main__":
    print("RESULT " + json.dumps(memory_worker(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
