"""Sample text from a trained run: python sample.py RUN_DIR [--prompt TEXT | --prompt-file FILE] [options]

Loads RUN_DIR/ckpt.pt (the run's latest checkpoint) and its config, and continues the prompt with the run's own
tokenizer, on the run's device and numerics (bf16 autocast on CUDA unless the run said otherwise; --device
overrides). No prompt starts at the beginning of a document (the end-of-text token). The same --seed gives the
same text; samples are drawn one after another, so a sample does not depend on how many are asked for. A
missing, foreign or unreadable checkpoint is a one-line error.
"""

import argparse
import sys
from pathlib import Path

import torch

from config import ConfigError
from data.tokenizers import get_tokenizer
from trainer.saved import load

EOT_TEXT = "<|endoftext|>"


def decode(tokenizer, ids) -> str:
    """The text of `ids`, each end-of-text token shown as <|endoftext|> (bytes would print it as a NUL)."""
    parts, current = [], []
    for i in ids:
        if i == tokenizer.eot:
            parts.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return EOT_TEXT.join([*parts, tokenizer.decode(current)])


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run's train.out_dir (holds ckpt.pt)")
    prompt = ap.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    prompt.add_argument("--prompt-file", type=Path, help="read the prompt from this file")
    ap.add_argument("--num-samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8, help="0: the most likely token every time")
    ap.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: the run's train.device")
    args = ap.parse_args(argv)
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.temperature < 0 or args.top_k < 0:
        ap.error("--temperature and --top-k must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        prompt = args.prompt_file.read_text() if args.prompt_file else args.prompt
        cfg, model, rt, ckpt = load(args.run_dir, args.device)
    except (ConfigError, OSError, RuntimeError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    ids = [tokenizer.eot, *tokenizer.encode_batch([prompt])[0].tolist()] if prompt else [tokenizer.eot]
    idx = torch.tensor([ids], device=rt.device)
    generator = torch.Generator(rt.device).manual_seed(args.seed)
    print(f"# {args.run_dir}: step {ckpt['step']}, {cfg.data.tokenizer} tokens, seed {args.seed}", file=sys.stderr)
    for _ in range(args.num_samples):  # one after another, so that a sample does not depend on how many follow it
        with rt.autocast:
            out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k or None,
                                 vocab=tokenizer.vocab_size, generator=generator)
        print(prompt + decode(tokenizer, out[0, len(ids):].tolist()))
        print("-" * 40, flush=True)


if __name__ == "__main__":
    main()
