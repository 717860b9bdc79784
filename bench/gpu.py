"""python -m bench.gpu: training throughput and MFU on a CUDA GPU; without one, the expected numbers only.

The paper's base run (configs/owt_base.yaml: n=256, L=4, seq 1024) and a GPT-2-124M-shaped run
(configs/owt_gpt2_124m.yaml: n=768, L=12, seq 1024), each at its config's micro-batch, with train.py's
numerics (trainer.runtime.Runtime: bf16 autocast; Newton-Schulz in bf16): eager vs torch.compile,
Muon-Kimi hybrid vs AdamW-only, and two memory/launch options on the compiled Muon-Kimi run (activation
checkpointing; Newton-Schulz per matrix instead of batched over same-shape matrices, the CUDA default). MFU =
tokens/s x perf.train_flops_per_token / perf.peak_flops (dense bf16 datasheet peak of the device's form
factor). Peak memory: torch.cuda.max_memory_allocated over each candidate's build and warm-up (compilation
included), less what was allocated before it.

Each model is measured in a fresh process of its own, as train.py runs one: the model is built as train.py
builds it (mup.scaling.build_model, optim.hybrid.build_optimizer, torch.compile of the module) and sees one
input shape. Compiling a second shape in the same process would make dynamo recompile with a dynamic batch
dimension, a graph train.py never runs.

The expected numbers need no GPU and are printed first: FLOPs per token counted on the meta device, and
the tokens/s, step time and run time they imply at 40% MFU of an H100 (989 TFLOP/s bf16 dense).

    python -m bench.gpu                                               # on a CUDA machine
    python -m bench.gpu --device cpu --rounds 1 --reps 2 --warmup 1   # smoke test of the same code at
                                                                      # tiny shapes (numbers meaningless)
"""

import argparse
import concurrent.futures
import multiprocessing

import torch

import perf
from bench.common import add_timing_args, interleaved, ms, our_step, print_table, record
from config import load_config
import model as model_module
from model import GPT
from mup.scaling import multipliers
from trainer.runtime import Runtime

MODELS = {"base n=256 L=4": "configs/owt_base.yaml", "GPT-2 124M n=768 L=12": "configs/owt_gpt2_124m.yaml"}
# name: (torch.compile, config overrides, Newton-Schulz batched over same-shape matrices, None: as built, batched on
# CUDA); the first word of a name and "AdamW" name the row a variant's Muon/AdamW ratio is taken against
VARIANTS = {"eager AdamW": (False, {"optim.name": "adamw"}, None),
            "eager Muon-Kimi": (False, {"optim.name": "muon_kimi"}, None),
            "compiled AdamW": (True, {"optim.name": "adamw"}, None),
            "compiled Muon-Kimi": (True, {"optim.name": "muon_kimi"}, None),
            "compiled Muon-Kimi per-matrix NS": (True, {"optim.name": "muon_kimi"}, False),
            "compiled Muon-Kimi act. ckpt": (True, {"optim.name": "muon_kimi", "model.activation_checkpointing": True},
                                             None)}
EXPECTED_MFU, H100 = 0.4, perf.PEAK_BF16["H100"]
TINY = {"model.n_embd": 64, "model.n_layer": 2, "model.block_size": 64, "model.vocab_size": 512,
        "train.batch_size": 2, "train.micro_batch_size": 2, "train.dtype": "bfloat16"}


def expected(path: str) -> dict:
    """What the FLOP count predicts for the run in `path` on an H100 at 40% MFU."""
    cfg = load_config(path)
    with torch.device("meta"):
        model = GPT(cfg.model, **multipliers(cfg))
    params = sum(p.numel() for p in model.parameters())
    flops = perf.train_flops_per_token(model)
    tokens_per_s = EXPECTED_MFU * H100 / flops
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    return {"params M": params / 1e6,
            "non-embedding M": (params - model.embed.wte.weight.numel() - model.embed.wpe.weight.numel()) / 1e6,
            "GFLOP/token": flops / 1e9, "tokens/s at 40% MFU": tokens_per_s, "tokens/step": tokens_per_step,
            "s/step": tokens_per_step / tokens_per_s,
            "run minutes": cfg.train.max_iters * tokens_per_step / tokens_per_s / 60}


def measure_in_own_process(path: str, overrides: dict, args) -> dict:
    """measure() in a fresh (spawned) process: one model shape per process, as in train.py."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(measure, path, overrides, args).result()


def measure(path: str, overrides: dict, args) -> dict:
    """Every variant of one model, built (and compiled) one after another, then timed interleaved."""
    torch.set_num_threads(args.threads)
    cfg = load_config(path, overrides)
    run = Runtime(cfg)
    run.start()
    cuda = run.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    steps, memory = {}, {}
    for name, (compiled, variant, batched_ns) in VARIANTS.items():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        model, steps[name] = our_step(overrides | variant, cfg.train.micro_batch_size, run.device, run.autocast,
                                      compiled, config=path, ns_batched=batched_ns)
        for _ in range(args.warmup):
            steps[name]()
        sync()
        memory[name] = (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else None
    times = interleaved(steps, args.rounds, args.reps, warmup=0, sync=sync)
    flops, peak = perf.train_flops_per_token(model), perf.peak_flops(run.device)
    tokens = cfg.train.micro_batch_size * cfg.model.block_size
    return {"batch": cfg.train.micro_batch_size, "seq": cfg.model.block_size, "flops_per_token": flops,
            "peak_flops": peak, "step_s": times, "peak_memory_gib": memory,
            "tokens_per_s": {n: tokens / t["median"] for n, t in times.items()},
            "mfu": {n: tokens / t["median"] * flops / peak if peak else None for n, t in times.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    add_timing_args(ap, rounds=5, reps=10, warmup=3)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: smoke-test this code at tiny shapes (numbers meaningless, not recorded)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    exp = {name: expected(path) for name, path in MODELS.items()}
    print_table([{"model": name, **e} for name, e in exp.items()],
                f"expected from the FLOP count: {EXPECTED_MFU:.0%} MFU of an H100 ({H100 / 1e12:.0f} TFLOP/s bf16); "
                f"s/step and run minutes at the config's batch and max_iters, one GPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("\nbench.gpu: no CUDA device here, nothing measured (--device cpu smoke-tests the code)")
        return

    overrides = {"train.device": args.device} | (TINY if args.device == "cpu" else {})
    results = {name: measure_in_own_process(path, overrides, args) for name, path in MODELS.items()}
    rows = []
    for model_name, r in results.items():
        for name, t in r["step_s"].items():
            compiled = name.split()[0]
            mem = r["peak_memory_gib"][name]
            rows.append({"model": model_name, "variant": name, "batch x seq": f"{r['batch']} x {r['seq']}",
                         "step ms median (IQR)": ms(t), "tokens/s": r["tokens_per_s"][name],
                         "MFU": "n/a" if r["mfu"][name] is None else f"{r['mfu'][name]:.1%}",
                         "peak GiB": "n/a" if mem is None else f"{mem:.2f}",
                         "Muon/AdamW": t["median"] / r["step_s"][f"{compiled} AdamW"]["median"]})
    print_table(rows, f"measured on {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU (smoke)'}, "
                      f"{args.rounds} rounds x {args.reps} steps")
    if args.device == "cpu":
        print("\nsmoke run at tiny shapes: not recorded")
        return
    record("gpu", {"models": MODELS, "variants": {k: list(v) for k, v in VARIANTS.items()}, "autocast": "bfloat16",
                   "loss_chunk_logits": model_module.LOSS_CHUNK_LOGITS,
                   "rounds": args.rounds, "reps": args.reps, "warmup": args.warmup},
           {"expected": exp, "measured": results})


if __name__ == "__main__":
    main()
