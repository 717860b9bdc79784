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
(c) Bytes autograd saves per token per block, divided by the width n (bfloat16 autocast, eager, no
    checkpointing): the per-block activation figure of (d). Weights' bf16 copies are excluded by taking the
    difference between two batch sizes; a tensor saved by several ops counts once.
(d) The estimated peak GPU memory of every GPU run of configs/ and configs/sweeps/ at its micro-batch (bf16
    eager, no checkpointing, chunked loss; torch.compile only lowers it): fp32 weights and gradients,
    optimizer state, bf16 weight copies, DDP's gradient buckets, (c)'s activations, the loss's chunk.

Peak memory on CPU: torch keeps no allocator statistics there, so torch.profiler(profile_memory=True) records
every allocation and free of the measured call, and the peak is the high point of their running sum: exactly
the bytes of torch's tensors alive at once (no allocator slack), counted from the call's start. These numbers
do not depend on the machine's load, unlike the timings of the other benchmarks.

    python -m bench.memory                 # (a)-(d), records to bench/results.jsonl
    python -m bench.memory --batch 1 --no-record
"""

import argparse
import dataclasses
import functools
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import model as model_module
from bench.common import gpt_overrides, print_table, record
from config import Config, ModelConfig, load_config
from model import GPT, Head
from mup.scaling import build_model

ROOT = Path(__file__).resolve().parents[1]
N_EMBD, N_LAYER, SEQ, VOCAB = 256, 4, 1024, 50304
# (c)'s result, rounded: saved bytes per token per block, per unit of width, in bf16 autocast, with and without
# LayerNorm (measured 40.1-40.2 and 32.1 at n = 128, 256).
ACTIVATION_BYTES = {"layernorm": 40, "none": 32}
# The configs' micro-batches divide batch / 8 and keep (d)'s estimate within CHOICE_GIB, half an 80 GB card (room
# for fragmentation, the CUDA context, NCCL, the estimate's error); tests/test_configs.py holds every GPU run to
# CARD_GIB, what torch sees of an 80 GB H100 (79.2 GiB) less 10%.
CHOICE_GIB, CARD_GIB = 40, 71


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


def saved_bytes(n: int, n_layer: int, batch: int, norm: str) -> int:
    cfg = load_config(None, gpt_overrides(n, n_layer, SEQ, 256) | {"model.norm": norm})
    model, _ = build_model(cfg)
    x = torch.randint(0, 256, (batch, SEQ))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast("bfloat16"):
        model(x, x)
    return sum(storages.values())


def activation_bytes(n: int, norm: str) -> float:
    """(c): saved bytes per token per block per unit of width, from the difference of 3 and 1 blocks at
    batches 2 and 1 (which cancels the bf16 weight copies, saved once per block whatever the batch)."""
    per_block = {b: (saved_bytes(n, 3, b, norm) - saved_bytes(n, 1, b, norm)) / 2 for b in (1, 2)}
    return (per_block[2] - per_block[1]) / SEQ / n


@functools.cache
def parameter_counts(model_values: tuple) -> dict:
    """Of a ModelConfig (as a tuple): all parameters, those of the blocks' matrices (the hidden ones), the sum of
    rows^2 + cols^2 over those (a Shampoo-type preconditioner's size) and their longest side; on the meta device."""
    with torch.device("meta"):
        model = GPT(ModelConfig(*model_values))
    hidden = [p.shape for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2]
    return {"total": sum(p.numel() for p in model.parameters()), "hidden": sum(r * c for r, c in hidden),
            "sides": sum(r * r + c * c for r, c in hidden), "longest": max((max(s) for s in hidden), default=0)}


def optimizer_bytes(name: str, counts: dict) -> tuple[float, float]:
    """(state kept between steps, transient workspace of a step) in bytes, for optim.name `name`."""
    total, hidden, sides, longest = counts["total"], counts["hidden"], counts["sides"], counts["longest"]
    rest = 8 * (total - hidden)  # AdamW's two moments for what the hidden-matrix optimizers leave to it
    if name in ("muon_kimi", "muon", "sso"):
        return 4 * hidden + rest, 0  # one momentum buffer
    if name == "shampoo":  # L, R and their inverse roots in fp32; float64 eigh of the longest side
        return 8 * sides + rest, 24 * longest**2
    if name == "soap":  # Adam's moments in the eigenbasis, L, R and their eigenbases
        return 8 * hidden + 8 * sides + rest, 24 * longest**2
    if name in ("lion", "sgd"):
        return 4 * total, 0
    return 8 * total, 0  # adamw, sophia (moment and Hessian estimate), and any optimizer not listed here


def estimate_gib(cfg: Config, world: int = 8) -> dict:
    """(d): the peak GPU memory of one rank training `cfg` at its micro-batch, by part, in GiB."""
    m, t = cfg.model, cfg.train
    counts = parameter_counts(dataclasses.astuple(m))
    total = counts["total"]
    state, transient = optimizer_bytes(cfg.optim.name, counts)
    tokens = t.micro_batch_size * m.block_size
    chunk = min(model_module.LOSS_CHUNK_LOGITS, tokens * m.vocab_size)
    parts = {
        "weights + grads": 8 * total,
        "optimizer": state + transient,
        "bf16 weight copies": 2 * total,
        "DDP buckets": 4 * total if world > 1 else 0,
        "activations": ACTIVATION_BYTES[m.norm] * m.n_embd * m.n_layer * tokens,
        # the chunk's logits in fp32 and bf16, the fp32 weight-gradient scratch, the input and its gradient
        "loss": 6 * chunk + 4 * m.vocab_size * m.n_embd + 12 * tokens * m.n_embd,
    }
    parts = {k: v / 2**30 for k, v in parts.items()}
    return {**parts, "total": sum(parts.values())}


def gpu_runs() -> dict[str, Config]:
    """Every GPU run of configs/ (top level) and configs/sweeps/, by name (sweeps at every grid point)."""
    from tests.test_configs import run_configs, sweep_runs  # the test's expansion of the sweep files

    runs = {}
    for path, cfg in run_configs():
        runs[str(path.relative_to(ROOT))] = cfg
    for path, name, cfg in sweep_runs():
        runs[f"{path.relative_to(ROOT)} {name}"] = cfg
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

    act = {f"{norm} n={n}": activation_bytes(n, norm) for norm in ("layernorm", "none") for n in (128, 256)}
    results["activation_bytes_per_token_per_block_per_n"] = act
    print_table([{"case": k, "bytes / token / block / n": v} for k, v in act.items()],
                "(c) saved activations, bf16 autocast, eager")

    runs = gpu_runs()
    estimates = {name: estimate_gib(cfg) for name, cfg in runs.items()}
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

    if not args.no_record:
        record("memory", {"n_embd": N_EMBD, "n_layer": N_LAYER, "seq": SEQ, "vocab": VOCAB, "batches": args.batch,
                          "loss_chunk_logits": model_module.LOSS_CHUNK_LOGITS, "threads": args.threads}, results)


if __name__ == "__main__":
    main()
