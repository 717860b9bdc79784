"""python -m bench.peer: a training step of this repo's GPT vs transformers' GPT2LMHeadModel, on CPU.

Equal shape and work: n=256, L=4, 4 heads of 64, sequence 128, batch 16, vocabulary 50304, biases, tied
embeddings, no dropout, fp32. Both attend through F.scaled_dot_product_attention (transformers'
attn_implementation="sdpa"), both use the exact GELU (GPT-2's default gelu_new is the tanh approximation,
written out in Python). The peer takes the loss from its full logits with F.cross_entropy; ours, as model.py
does now, with torch's chunked linear cross-entropy (model.Head.loss: no full logits, no fp32 copy; before it
took the peer's route, and bench.memory compares the two routes). Both
train with torch's AdamW at the same betas and eps: ours with optim.name=adamw and
scaling.parameterization=sp, so the comparison is AdamW to AdamW; the paper's Muon-Kimi hybrid is a third
row for information. A step is forward, backward, optimizer step and zero_grad.

Step time: interleaved rounds, median and interquartile range (bench.common). Peak memory: one fresh
process per row (bench.common.peak_rss_mib). If ours is slower (or --profile), both are profiled with
torch.profiler and their top operators printed, so the gap has a measured cause.
"""

import argparse

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from bench.common import (
    add_timing_args,
    gpt_overrides,
    interleaved,
    ms,
    our_step,
    peak_rss_mib,
    print_table,
    random_batch,
    record,
    train_step,
)
from config import load_config

N_EMBD, N_LAYER, SEQ, BATCH, VOCAB = 256, 4, 128, 16, 50304
OURS = gpt_overrides(N_EMBD, N_LAYER, SEQ, VOCAB) | {"scaling.parameterization": "sp"}


def set_width(n: int) -> None:
    """Every candidate's width (the shape constants are module-level: spawned memory processes rebuild them)."""
    global N_EMBD, OURS
    N_EMBD, OURS = n, gpt_overrides(n, N_LAYER, SEQ, VOCAB) | {"scaling.parameterization": "sp"}


def peer():
    conf = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_EMBD // 64,
                      activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      tie_word_embeddings=True, use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(conf).train()
    o = load_config(None, OURS | {"optim.name": "adamw"}).optim  # the same AdamW settings as ours
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    x, y = random_batch(VOCAB, BATCH, SEQ)
    return model, train_step(lambda: F.cross_entropy(model(input_ids=x).logits.view(-1, VOCAB), y.view(-1)), opt)


def nanogpt(path: str):
    """karpathy/nanoGPT's model.py, loaded from a path the user gives (never copied here), at the same shape:
    its own GPT and cross-entropy over the full logits, torch's AdamW with our settings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(block_size=SEQ, vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_EMBD // 64,
                                        n_embd=N_EMBD, dropout=0.0, bias=True)).train()
    o = load_config(None, OURS | {"optim.name": "adamw"}).optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    x, y = random_batch(VOCAB, BATCH, SEQ)
    return model, train_step(lambda: model(x, y)[1], opt)


CANDIDATES = {
    "ours AdamW": lambda: our_step(OURS | {"optim.name": "adamw"}, BATCH),
    "transformers GPT2LMHeadModel AdamW": peer,
    "ours Muon-Kimi + AdamW": lambda: our_step(OURS | {"optim.name": "muon_kimi"}, BATCH),
}
NANOGPT = "nanoGPT model.py AdamW"


def run_steps(name: str, steps: int, nanogpt_path: str | None = None, n_embd: int = N_EMBD):
    """Build candidate `name` and take `steps` steps (what peak_rss_mib measures in a fresh process)."""
    set_width(n_embd)
    _, step = nanogpt(nanogpt_path) if name == NANOGPT else CANDIDATES[name]()
    for _ in range(steps):
        step()


def top_ops(step, steps: int = 2, k: int = 8) -> list[dict]:
    """The k (operator, input shapes) pairs with the most self CPU time over `steps` steps (after one
    untimed step); the shapes tell which of an operator's calls cost the time."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    return [{"op": e.key, "input shapes": str([s for s in e.input_shapes if s])[:60],
             "ms/step": e.self_cpu_time_total / 1e3 / steps, "share": round(e.self_cpu_time_total / total, 3),
             "calls/step": e.count // steps} for e in top]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    add_timing_args(ap, rounds=7, reps=2, warmup=1)
    ap.add_argument("--memory-steps", type=int, default=3, help="steps taken in each peak-memory process")
    ap.add_argument("--profile", action="store_true", help="profile both models even if ours is not slower")
    ap.add_argument("--nanogpt", metavar="MODEL_PY", help="karpathy/nanoGPT's model.py: a second peer")
    ap.add_argument("--n-embd", type=int, default=N_EMBD, help="width of all models (heads of 64)")
    args = ap.parse_args(argv)
    set_width(args.n_embd)
    torch.set_num_threads(args.threads)
    if args.nanogpt:
        CANDIDATES[NANOGPT] = lambda: nanogpt(args.nanogpt)

    built = {name: make() for name, make in CANDIDATES.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in built.items()}
    times = interleaved({name: step for name, (_, step) in built.items()}, args.rounds, args.reps, args.warmup)
    memory = {name: peak_rss_mib(run_steps, name, args.memory_steps, args.nanogpt, N_EMBD) for name in CANDIDATES}

    ref = times["transformers GPT2LMHeadModel AdamW"]["median"]
    rows = [{"model": name, "params": params[name], "step ms median (IQR)": ms(times[name]),
             "tokens/s": BATCH * SEQ / times[name]["median"], "vs peer": times[name]["median"] / ref,
             "peak RSS MiB": memory[name]} for name in CANDIDATES]
    print_table(rows, f"training step, n={N_EMBD} L={N_LAYER} seq={SEQ} batch={BATCH} vocab={VOCAB}, fp32, "
                      f"{args.threads} threads, {args.rounds} rounds x {args.reps} steps")
    ratio = times["ours AdamW"]["median"] / ref
    memory_ratio = memory["ours AdamW"] / memory["transformers GPT2LMHeadModel AdamW"]
    print(f"\nours/peer (AdamW): step time {ratio:.3f}, peak memory {memory_ratio:.3f} (target <= 1.0)")
    if NANOGPT in times:
        print(f"ours/nanoGPT (AdamW): step time {times['ours AdamW']['median'] / times[NANOGPT]['median']:.3f}"
              f" (target <= 0.95)")

    profiles = {}
    if ratio > 1.0 or args.profile:
        for name in ("ours AdamW", "transformers GPT2LMHeadModel AdamW"):
            profiles[name] = top_ops(built[name][1], k=12)
            print_table(profiles[name], f"top operators by self CPU time: {name}")

    record("peer", {"n_embd": N_EMBD, "n_layer": N_LAYER, "n_head": N_EMBD // 64, "seq": SEQ, "batch": BATCH,
                    "vocab": VOCAB, "dtype": "float32", "attention": "sdpa", "activation": "gelu (exact)",
                    "transformers": transformers.__version__,
                    "threads": args.threads, "rounds": args.rounds, "reps": args.reps, "warmup": args.warmup,
                    "memory_steps": args.memory_steps},
           {"step_s": times, "params": params, "peak_rss_mib": memory, "ratio_step": ratio,
            "ratio_memory": memory_ratio, "profiles": profiles})


if __name__ == "__main__":
    main()
