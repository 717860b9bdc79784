"""python -m bench.memory: what the chunked loss and activation checkpointing save, measured on CPU, and the
GPU memory of every shipped run that the configs' micro-batches are chosen from.

(a) The loss at GPT-2's vocabulary (50304), sequence 1024, n=256: one forward + backward of head and loss
    from the final norm's output. "full logits": F.linear then cross_entropy(logits.float()), as model.py did
    before (and still does while a hook observes `head`); "chunked": model.Head.loss, torch's chunked linear
    cross-entropy, LOSS_CHUNK_LOGITS logits at a time. Float32, and bfloat16 autocast as on GPUs.
(b) The whole model at the paper's base shape (n=256, L=4, vocab 50304, seq 1024), forward + backward: full
    logits (a no-op hook on model.head selects them), chunked, and chunked + activation checkpointing.
    (a) and (b) also give the difference in loss, and the largest gradient difference over the largest gradient
    entry, against "full logits".
(c) Bytes autograd saves per token per block, divided by the width n (eager, no checkpointing), in bfloat16
    autocast and in float32: the per-block activation figure of (d) and (e). Weights' bf16 copies are excluded by
    taking the difference between two batch sizes; a tensor saved by several ops counts once.
(d) The estimated peak GPU memory of every GPU run of configs/ and configs/sweeps/ at its micro-batch on 8
    ranks: experiments.cost.peak_memory_gib (bf16 eager, chunked loss; torch.compile only lowers it): fp32
    weights, the rank's optimizer state (its own hidden matrices' under the split), and the largest of forward
    and backward (gradients, which under DDP are its buckets, bf16 weight copies, (c)'s activations as
    experiments.cost.ACTIVATION_BYTES rounds them, the loss's chunk), the optimizer step (its workspace, the
    split's gather) and Sophia's Hessian pass.
(e) That estimate's float32 CPU variant against the measured peak of building a small model and its optimizer
    and taking 3 training steps, for every optimizer (tests/test_memory.py holds each within 15%).

Peak memory on CPU: torch keeps no allocator statistics there, so torch.profiler(profile_memory=True) records
every allocation and free of the measured call, and the peak is the high point of their running sum: exactly
the bytes of torch's tensors alive at once (no allocator slack), counted from the call's start. These numbers
do not depend on the machine's load, unlike the timings of the other benchmarks.

    python -m bench.memory                 # (a)-(e), records to bench/results.jsonl
    python -m bench.memory --batch 1 --no-record
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import model as model_module
from bench.common import gpt_overrides, print_table, record
from config import Config, from_flat, load_config, read_yaml
from experiments.cost import ACTIVATION_BYTES, CARD_GIB, CHOICE_GIB, peak_memory_gib
from experiments.grid import load_sweep, sweep_files
from model import Head
from mup.scaling import build_model
from optim import registry
from optim.hybrid import build_optimizer
from trainer.runtime import Runtime
from trainer.step import train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
N_EMBD, N_LAYER, SEQ, VOCAB = 256, 4, 1024, 50304


def peak_bytes(fn) -> int:
    """The most bytes of torch tensors alive at once while fn() runs, counted from its start (see above)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.remove(path)
    now = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        now += e["args"]["Bytes"]
        peak = max(peak, now)
    return peak


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def max_difference(a: dict, b: dict) -> dict:
    """|loss difference| and the largest gradient difference relative to the largest gradient (all tensors)."""
    keys = [k for k in a if k != "loss"]
    diff = max((a[k] - b[k]).abs().max().item() for k in keys)
    scale = max(b[k].abs().max().item() for k in keys)
    return {"loss": abs(a["loss"] - b["loss"]), "gradient": diff / scale}


def loss_head(batch: int, dtype: str) -> dict:
    """(a): peak bytes and results of head + loss, full logits vs chunked."""
    torch.manual_seed(0)
    cfg = load_config(None, gpt_overrides(N_EMBD, 1, SEQ, VOCAB)).model
    head = Head(cfg, alpha_out=1.0)
    torch.nn.init.normal_(head.weight, std=0.02)
    x0 = torch.randn(batch, SEQ, N_EMBD)
    y = torch.randint(0, VOCAB, (batch, SEQ))
    out = {}

    def run(name, loss_fn):
        x = x0.clone().requires_grad_()
        head.weight.grad = None

        def step():
            with autocast(dtype):
                loss = loss_fn(x)
            loss.backward()
            out[name] = {"loss": loss.item(), "x": x.grad, "weight": head.weight.grad}

        return peak_bytes(step)

    full = run("full logits", lambda x: F.cross_entropy(head(x).float().view(-1, VOCAB), y.view(-1)))
    chunked = run("chunked", lambda x: head.loss(x, y))
    return {"peak_bytes": {"full logits": full, "chunked": chunked},
            "difference": max_difference(out["chunked"], out["full logits"])}


def whole_model(batch: int, dtype: str) -> dict:
    """(b): peak bytes and results of one forward + backward of the base-shape model."""
    out, peaks = {}, {}
    cases = {"full logits": (False, True), "chunked": (False, False),
             "chunked + activation checkpointing": (True, False)}
    y = torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(1))
    x = torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(2))
    for name, (ckpt, hooked) in cases.items():
        torch.manual_seed(0)
        cfg = load_config(None, gpt_overrides(N_EMBD, N_LAYER, SEQ, VOCAB)
                          | {"model.activation_checkpointing": ckpt})
        model, _ = build_model(cfg)
        handle = model.head.register_forward_hook(lambda m, a, o: None) if hooked else None

        def step(model=model, name=name):
            with autocast(dtype):
                loss = model(x, y)[1]
            loss.backward()
            out[name] = {"loss": loss.item(), **{n: p.grad for n, p in model.named_parameters()}}

        peaks[name] = peak_bytes(step)
        if handle is not None:
            handle.remove()
    return {"peak_bytes": peaks,
            "difference": {name: max_difference(out[name], out["full logits"]) for name in cases if name != "full logits"}}


def saved_bytes(n: int, n_layer: int, batch: int, norm: str, dtype: str) -> int:
    cfg = load_config(None, gpt_overrides(n, n_layer, SEQ, 256) | {"model.norm": norm})
    model, _ = build_model(cfg)
    x = torch.randint(0, 256, (batch, SEQ))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(dtype):
        model(x, x)
    return sum(storages.values())


def activation_bytes(n: int, norm: str, dtype: str) -> float:
    """(c): saved bytes per token per block per unit of width, from the difference of 3 and 1 blocks at
    batches 2 and 1 (which cancels the bf16 weight copies, saved once per block whatever the batch)."""
    per_block = {b: (saved_bytes(n, 3, b, norm, dtype) - saved_bytes(n, 1, b, norm, dtype)) / 2 for b in (1, 2)}
    return (per_block[2] - per_block[1]) / SEQ / n


# (e): a shape at which weights, state, activations and every optimizer's workspace all matter, and the optimizers
# with every refresh at every step (Shampoo's roots, SOAP's bases, Sophia's estimate), Shampoo also with stored
# roots and Muon also batched
SMALL = {"model.n_embd": 128, "model.n_layer": 2, "model.head_dim": 32, "model.block_size": 64,
         "model.vocab_size": 256, "train.batch_size": 4, "train.micro_batch_size": 4, "train.device": "cpu"}
EVERY_STEP = {"precondition_interval": 1, "hessian_interval": 1}
OPTIMIZER_CASES = [(name, {f"optim.{k}": v for k, v in EVERY_STEP.items() if registry.reads(name, k)})
                   for name in registry.OPTIMIZERS] + [("shampoo", {"optim.precondition_interval": 2}),
                                                        ("muon_kimi", {"optim.ns_batched": True})]
# and the GPU's numerics on CPU, where the loss's chunk weighs more (n=256, vocab 2048, 8 x 64 tokens, Muon-Kimi)
NUMERICS_CASES = {"bf16 autocast": {"train.dtype": "bfloat16"},
                  "activation checkpointing": {"model.activation_checkpointing": True},
                  "bf16 autocast + checkpointing": {"train.dtype": "bfloat16", "model.activation_checkpointing": True}}
WIDER = SMALL | {"model.n_embd": 256, "model.vocab_size": 2048, "train.batch_size": 8, "train.micro_batch_size": 8}


class RandomWindows:
    """TokenBatches' interface over one random batch: memory does not depend on what the tokens are."""

    def __init__(self, cfg: Config):
        self.x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size + 1),
                               generator=torch.Generator().manual_seed(0))

    def get(self, step, index=0, size=None):
        x = self.x[index * size:(index + 1) * size] if size else self.x
        return x[:, :-1], x[:, 1:]


def training_peak(cfg: Config, steps: int = 3) -> int:
    """(e): the peak bytes of building `cfg`'s model and optimizer on CPU and taking `steps` training steps
    (trainer.step.train_step, one process), everything counted: what peak_memory_gib(cfg, 1, "cpu") estimates."""
    rt = Runtime(cfg)

    def train():
        torch.manual_seed(0)
        model, table = build_model(cfg)
        opt = build_optimizer(cfg, model, table)
        for step in range(steps):
            train_step(model, opt, RandomWindows(cfg), step, cfg, rt, model)

    return peak_bytes(train)


def gpu_runs() -> dict[str, Config]:
    """Every GPU run of configs/ (top level) and configs/sweeps/, by name (sweeps at every grid point, expanded
    by experiments.grid as scripts/sweep.py expands them)."""
    runs = {str(path.relative_to(ROOT)): from_flat(read_yaml(path)) for path in sorted(CONFIGS.glob("*.yaml"))}
    for path in sweep_files(CONFIGS / "sweeps"):
        for run in load_sweep(path, Path(path.stem)).runs:  # the out dir only names run.dir: nothing is written
            runs[f"{path.relative_to(ROOT)} {run.name}"] = run.config
    return {k: c for k, c in runs.items() if c.train.device != "cpu"}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 4], help="sequences of 1024 tokens in (a), (b)")
    ap.add_argument("--no-record", action="store_true", help="print only")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mib = 2**20

    results = {"loss": {}, "model": {}}
    rows = []
    for dtype in ("float32", "bfloat16"):
        for b in args.batch:
            r = results["loss"][f"{dtype} batch {b}"] = loss_head(b, dtype)
            p = r["peak_bytes"]
            rows.append({"dtype": dtype, "batch x seq": f"{b} x {SEQ}", "full logits MiB": p["full logits"] / mib,
                         "chunked MiB": p["chunked"] / mib, "saved": f"{1 - p['chunked'] / p['full logits']:.0%}",
                         "loss |diff|": f"{r['difference']['loss']:.2g}",
                         "grad rel diff": f"{r['difference']['gradient']:.2g}"})
    print_table(rows, f"(a) head + loss, n={N_EMBD}, vocab {VOCAB}: peak bytes of torch tensors, forward + backward")

    rows = []
    for dtype in ("float32", "bfloat16"):
        for b in args.batch:
            r = results["model"][f"{dtype} batch {b}"] = whole_model(b, dtype)
            p = r["peak_bytes"]
            row = {"dtype": dtype, "batch x seq": f"{b} x {SEQ}"}
            row.update({f"{k} MiB": v / mib for k, v in p.items()})
            row["chunked saves"] = f"{1 - p['chunked'] / p['full logits']:.0%}"
            row["+ ckpt saves"] = f"{1 - p['chunked + activation checkpointing'] / p['full logits']:.0%}"
            diffs = r["difference"]
            row["grad rel diff"] = f"{max(d['gradient'] for d in diffs.values()):.2g}"
            rows.append(row)
    print_table(rows, f"(b) the model, n={N_EMBD}, L={N_LAYER}, vocab {VOCAB}: forward + backward")

    act = {f"{dtype} {norm} n={n}": activation_bytes(n, norm, dtype) for dtype in ("bfloat16", "float32")
           for norm in ("layernorm", "none") for n in (128, 256)}
    results["activation_bytes_per_token_per_block_per_n"] = act
    print_table([{"case": k, "bytes / token / block / n": v} for k, v in act.items()],
                f"(c) saved activations, eager (the estimate's experiments.cost.ACTIVATION_BYTES: {ACTIVATION_BYTES})")

    runs = gpu_runs()
    estimates = {name: peak_memory_gib(cfg, world=8) for name, cfg in runs.items()}
    results["estimates_gib"] = estimates
    largest = {}
    for name, e in estimates.items():  # the largest run of each file
        f = name.split()[0]
        if f not in largest or e["total"] > estimates[largest[f]]["total"]:
            largest[f] = name
    rows = [{"run": name, "micro": runs[name].train.micro_batch_size,
             **{k: round(v, 1) for k, v in estimates[name].items()}} for name in largest.values()]
    print_table(rows, f"(d) estimated GiB per GPU (8 ranks), the largest run of each file; micro-batches chosen "
                      f"within {CHOICE_GIB} GiB, every run held to {CARD_GIB} GiB")

    rows, checked = [], {}
    for name, extra in OPTIMIZER_CASES:
        cfg = load_config(None, SMALL | {"optim.name": name, **extra})
        measured, estimate = training_peak(cfg) / mib, peak_memory_gib(cfg, world=1, device="cpu")["total"] * 1024
        checked[f"{name} {extra}"] = {"measured_mib": measured, "estimate_mib": estimate}
        rows.append({"optimizer": name, "settings": " ".join(f"{k.split('.')[1]}={v}" for k, v in extra.items()),
                     "measured MiB": measured, "estimated MiB": estimate, "error": f"{estimate / measured - 1:+.1%}"})
    for case, extra in NUMERICS_CASES.items():
        cfg = load_config(None, WIDER | extra)
        measured, estimate = training_peak(cfg) / mib, peak_memory_gib(cfg, world=1, device="cpu")["total"] * 1024
        checked[case] = {"measured_mib": measured, "estimate_mib": estimate}
        rows.append({"optimizer": "muon_kimi", "settings": f"{case}, n=256, vocab 2048, 8 x 64", "measured MiB": measured,
                     "estimated MiB": estimate, "error": f"{estimate / measured - 1:+.1%}"})
    results["cpu_estimate_check"] = checked
    print_table(rows, "(e) peak of building and 3 training steps on CPU (one process; float32, n=128, L=2, 4 x 64"
                      " tokens, vocab 256 unless said) against experiments.cost.peak_memory_gib(device='cpu')")

    if not args.no_record:
        record("memory", {"n_embd": N_EMBD, "n_layer": N_LAYER, "seq": SEQ, "vocab": VOCAB, "batches": args.batch,
                          "loss_chunk_logits": model_module.LOSS_CHUNK_LOGITS, "threads": args.threads}, results)


if __name__ == "__main__":
    main()
