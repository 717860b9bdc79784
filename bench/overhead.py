"""python -m bench.overhead: what muP and Muon cost at run time, on CPU.

(a) muP vs SP, full training steps at equal shape. muP's multipliers are Python floats fixed at build time
    and SP runs the same multiplications by 1.0, so the step time should not differ (target: within 2%).
    AdamW, because under muP it splits the parameters into the most groups (per-role lr and eps). At the
    base shape (256, 4) muP and SP are the same numbers: that row is an A/A test, the noise floor.
(b) Muon-Kimi hybrid vs AdamW-only: the optimizer steps timed on the same model and gradients, against
    the forward + backward they follow. The extra cost is Newton-Schulz. For a hidden matrix m x n
    (m <= n, the iteration runs on the wide orientation), each of ns_steps iterations
        X <- aX + (bA + cA^2) X,  A = X X^T
    costs 2 m^2 n (A = X X^T) + 2 m^3 (A^2) + 2 m^2 n ((bA + cA^2) X) = 4 m^2 n + 2 m^3 FLOPs, independent
    of the batch. The model costs perf.train_flops_per_token x tokens per step, so the overhead shrinks
    as the batch grows; the table gives the ratio at this benchmark's batch and at the paper's.
(c) Newton-Schulz in float32 vs bfloat16 (optim.ns_dtype) on this CPU, the reason for the CPU default.
"""

import argparse
import dataclasses

import torch

import perf
from bench.common import (
    add_timing_args,
    build,
    gpt_overrides,
    interleaved,
    ms,
    our_step,
    print_table,
    random_batch,
    record,
)
from config import load_config
from model import GPT
from mup.scaling import scaling_table
from optim.hybrid import build_optimizer

SEQ, VOCAB = 128, 50304
PARAM_SHAPES = [(256, 4), (512, 8)]  # (a)
PARAM_BATCH = 8
WIDTHS, DEPTH, BATCH = [128, 256, 512], 4, 16  # (b), (c)
PAPER_TOKENS, PAPER_SEQ = 240 * 1024, 1024  # the paper's tokens per step (configs/owt_base.yaml)
OPTIMIZERS = {"AdamW": {"optim.name": "adamw"},
              "Muon-Kimi fp32": {"optim.name": "muon_kimi", "optim.ns_dtype": "float32"},
              "Muon-Kimi bf16": {"optim.name": "muon_kimi", "optim.ns_dtype": "bfloat16"}}


def ns_flops(shape, steps: int) -> int:
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m**3)


def parameterization(args) -> list[dict]:
    rows = []
    for n, L in PARAM_SHAPES:
        built = {p: our_step(gpt_overrides(n, L, SEQ, VOCAB) | {"scaling.parameterization": p, "optim.name": "adamw"},
                             PARAM_BATCH) for p in ("sp", "mup")}
        t = interleaved({p: step for p, (_, step) in built.items()}, args.rounds, args.reps, args.warmup)
        mup_model = built["mup"][0]
        rows.append({"n_embd": n, "n_layer": L, "SP ms": ms(t["sp"]), "muP ms": ms(t["mup"]),
                     "muP/SP": t["mup"]["median"] / t["sp"]["median"],
                     "muP alpha attn/mlp, out": f"{mup_model.blocks[0].alpha_attn:g}/{mup_model.blocks[0].alpha_mlp:g}, "
                                                f"{mup_model.head.alpha_out:g}",
                     "_times": t})
    return rows


def muon(n: int, args) -> dict:
    """One width of (b) and (c): every optimizer steps the same model on the same gradients."""
    overrides = gpt_overrides(n, DEPTH, SEQ, VOCAB)
    model, _ = build(overrides | OPTIMIZERS["AdamW"])
    cfgs = {name: load_config(None, overrides | o) for name, o in OPTIMIZERS.items()}
    opts = {name: build_optimizer(c, model, scaling_table(c, model)) for name, c in cfgs.items()}
    x, y = random_batch(VOCAB, BATCH, SEQ)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()

    forward_backward()  # the optimizer candidates need gradients before the first round
    t = interleaved({"fwd+bwd": forward_backward} | {name: o.step for name, o in opts.items()},
                    args.rounds, args.reps, args.warmup)

    muon_cfg = cfgs["Muon-Kimi fp32"]
    hidden = [p.shape for g in opts["Muon-Kimi fp32"].optimizers["muon_kimi"].param_groups for p in g["params"]]
    ns = sum(ns_flops(s, muon_cfg.optim.ns_steps) for s in hidden)
    model_flops = perf.train_flops_per_token(model) * BATCH * SEQ
    with torch.device("meta"):
        paper_model = GPT(dataclasses.replace(muon_cfg.model, block_size=PAPER_SEQ))
    paper_flops = perf.train_flops_per_token(paper_model) * PAPER_TOKENS
    base = t["fwd+bwd"]["median"] + t["AdamW"]["median"]
    extra = {k: t[f"Muon-Kimi {k}"]["median"] - t["AdamW"]["median"] for k in ("fp32", "bf16")}
    return {
        "n_embd": n, "hidden matrices": len(hidden), "fwd+bwd ms": ms(t["fwd+bwd"]),
        "AdamW step ms": ms(t["AdamW"]), "Muon fp32 step ms": ms(t["Muon-Kimi fp32"]),
        "Muon bf16 step ms": ms(t["Muon-Kimi bf16"]),
        "overhead fp32": extra["fp32"] / base, "overhead bf16": extra["bf16"] / base,
        "NS GFLOP": ns / 1e9, "model GFLOP": model_flops / 1e9, "NS/model": ns / model_flops,
        "NS/model paper batch": ns / paper_flops,
        "model GFLOP/s": model_flops / t["fwd+bwd"]["median"] / 1e9,
        "NS GFLOP/s fp32": ns / extra["fp32"] / 1e9, "NS GFLOP/s bf16": ns / extra["bf16"] / 1e9,
        "_times": t,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    add_timing_args(ap, rounds=7, reps=1, warmup=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    a = parameterization(args)
    print_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in a],
                f"(a) training step (AdamW), seq={SEQ} batch={PARAM_BATCH} vocab={VOCAB}, median (IQR)")
    b = [muon(n, args) for n in WIDTHS]
    cols = ("n_embd", "hidden matrices", "fwd+bwd ms", "AdamW step ms", "Muon fp32 step ms", "overhead fp32",
            "NS GFLOP", "model GFLOP", "NS/model", "NS/model paper batch", "model GFLOP/s", "NS GFLOP/s fp32")
    print_table([{k: r[k] for k in cols} for r in b],
                f"(b) Muon-Kimi hybrid vs AdamW: L={DEPTH} seq={SEQ} batch={BATCH} vocab={VOCAB}; optimizer steps "
                f"on the same gradients; overhead = (Muon step - AdamW step) / (fwd+bwd + AdamW step); "
                f"paper batch = {PAPER_TOKENS:,} tokens of {PAPER_SEQ}")
    cols = ("n_embd", "Muon fp32 step ms", "Muon bf16 step ms", "overhead fp32", "overhead bf16",
            "NS GFLOP/s fp32", "NS GFLOP/s bf16")
    print_table([{k: r[k] for k in cols} for r in b], "(c) Newton-Schulz dtype (optim.ns_dtype) on this CPU")

    record("overhead", {"seq": SEQ, "vocab": VOCAB, "param_shapes": PARAM_SHAPES, "param_batch": PARAM_BATCH,
                        "param_optimizer": "adamw", "widths": WIDTHS, "depth": DEPTH, "batch": BATCH,
                        "paper_tokens_per_step": PAPER_TOKENS, "threads": args.threads, "rounds": args.rounds,
                        "reps": args.reps, "warmup": args.warmup},
           {"parameterization": [{k.lstrip("_"): v for k, v in r.items() if "ms" not in k} for r in a],
            "muon": [{k.lstrip("_"): v for k, v in r.items() if "ms" not in k} for r in b]})


if __name__ == "__main__":
    main()
