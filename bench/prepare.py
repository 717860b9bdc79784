"""python -m bench.prepare: tokens/s of data.prepare on the offline corpus vs a bare tiktoken loop.

Both turn the same text, the standard-library corpus (data.corpora.stdlib_files), into GPT-2 tokens from
the shipped ranks file (data/gpt2.tiktoken, or $GPT2_TIKTOKEN_FILE), with the same budget of N workers
(--workers, default: the usable cores):
- prepare: data.prepare.prepare("stdlib", num_proc=N) into a temporary directory with a fresh, temporary
  datasets cache each time, i.e. a first preparation: datasets' generator builder reading the files, the
  tokenizing map (N threads: the corpus is below data.prepare.MIN_DOCS_PER_PROC per process), the
  train/val split, and train.bin/val.bin written and fsynced.
- bare: read the same files, then one tiktoken encode_ordinary_batch(texts, num_threads=N). Nothing is
  converted or written.
tokens/s counts the text's tokens for both (prepare's EOT separators are left out). The GPT-2 tables are
built once beforehand (they are cached per process). The bytes tokenizer's preparation is a third row for
reference. Target: prepare >= 0.8 of the bare loop.

Then one more preparation with its stages timed (datasets loading, tokenizing map, writing, the rest),
and the cost of turning ids into Arrow rows two ways: tiktoken's int lists through datasets' conversion,
and data.prepare's numpy assembly, so a gap to the bare loop has a measured cause.
"""

import argparse
import contextlib
import io
import os
import tempfile
import time
from collections import defaultdict
from unittest import mock

import datasets

import data.prepare
from bench.common import add_timing_args, interleaved, ms, print_table, record
from data.corpora import stdlib_files
from data.format import read_meta
from data.tokenizers import get_tokenizer

STAGES = ((data.prepare, "load_documents"), (data.prepare, "tokenize"), (data.prepare, "write_bin"))


def prepare_once(tokenizer: str, workers: int) -> dict:
    """One first-time preparation of the stdlib corpus in a throwaway directory and datasets cache."""
    quiet = io.StringIO()  # progress bars and the closing message
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"HF_DATASETS_CACHE": f"{tmp}/hf"}), \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        out = data.prepare.prepare("stdlib", out=f"{tmp}/out", tokenizer=tokenizer, num_proc=workers)
        return read_meta(out)


def bare_loop(workers: int) -> int:
    """Tokens of the corpus's text, by reading its files and one tiktoken batch call."""
    texts = [path.read_text(encoding="utf-8") for path in stdlib_files()]
    ids = get_tokenizer("gpt2").enc.encode_ordinary_batch(texts, num_threads=workers)
    return sum(map(len, ids))


def text_tokens(meta: dict) -> int:
    return meta["train_tokens"] + meta["val_tokens"] - meta["train_docs"] - meta["val_docs"]


def stage_times(workers: int) -> dict:
    """Seconds in each stage of one preparation, by wrapping the functions data.prepare calls."""
    spent = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    with contextlib.ExitStack() as stack:
        for module, name in STAGES:
            stack.enter_context(mock.patch.object(module, name, timed(name, getattr(module, name))))
        t0 = time.perf_counter()
        prepare_once("gpt2", workers)
        total = time.perf_counter() - t0
    return {**spent, "other (split, select, meta, describe)": total - sum(spent.values()), "total": total}


def arrow_rows_s() -> dict:
    """Seconds (one process) to turn the corpus's ids into Arrow uint16 rows, EOT appended: from tiktoken's
    Python int lists by datasets' conversion (a map function returning them), and by data.prepare._encode's
    assembly of the numpy arrays its tokenizer returns (encoding excluded)."""
    texts = [path.read_text(encoding="utf-8") for path in stdlib_files()]
    tok = get_tokenizer("gpt2")
    lists = [[*doc, tok.eot] for doc in tok.enc.encode_ordinary_batch(texts)]
    t0 = time.perf_counter()
    datasets.Dataset.from_dict({"ids": lists}, features=data.prepare.FEATURES)
    t1 = time.perf_counter()
    arrays = tok.encode_batch(texts)
    with mock.patch.object(tok, "encode_batch", lambda texts, threads: arrays):
        t2 = time.perf_counter()
        data.prepare._encode({"text": texts}, "gpt2", None, 1)
        return {"datasets": t1 - t0, "data.prepare": time.perf_counter() - t2}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.prepare", description=__doc__.split("\n\n")[0])
    add_timing_args(ap, rounds=5, reps=1, warmup=0)  # the token counts below warm up
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="prepare's num_proc and tiktoken's num_threads (default: the usable cores)")
    args = ap.parse_args(argv)
    datasets.logging.set_verbosity_error()
    get_tokenizer("gpt2")  # build the BPE tables once, outside every timing

    n_text = bare_loop(args.workers)
    n_bytes_text = text_tokens(prepare_once("bytes", args.workers))
    if text_tokens(prepare_once("gpt2", args.workers)) != n_text:
        raise RuntimeError("data.prepare and the bare loop disagree on the corpus's token count")
    t = interleaved({"prepare gpt2": lambda: prepare_once("gpt2", args.workers),
                     "bare tiktoken loop gpt2": lambda: bare_loop(args.workers),
                     "prepare bytes": lambda: prepare_once("bytes", args.workers)},
                    args.rounds, args.reps, args.warmup)
    tokens = {"prepare gpt2": n_text, "bare tiktoken loop gpt2": n_text, "prepare bytes": n_bytes_text}
    rate = {name: tokens[name] / s["median"] for name, s in t.items()}
    ratio = rate["prepare gpt2"] / rate["bare tiktoken loop gpt2"]
    print_table([{"pipeline": name, "tokens": f"{tokens[name]:,}", "ms median (IQR)": ms(s),
                  "tokens/s": rate[name], "vs bare": rate[name] / rate["bare tiktoken loop gpt2"]}
                 for name, s in t.items()],
                f"stdlib corpus ({len(stdlib_files())} files), {args.workers} workers, {args.rounds} rounds")
    print(f"\nprepare / bare (gpt2): {ratio:.2f} (target >= 0.8)")

    stages = stage_times(args.workers)
    arrow = arrow_rows_s()
    print_table([{"stage": name, "seconds": s, "share": s / stages["total"]} for name, s in stages.items()],
                "where one gpt2 preparation spends its time")
    print(f"bare loop: "
          f"{t['bare tiktoken loop gpt2']['median']:.2f} s; turning its token lists into Arrow uint16 rows "
          f"(one process): {arrow['datasets']:.2f} s from int lists by datasets' conversion, "
          f"{arrow['data.prepare']:.2f} s from numpy arrays by data.prepare")

    record("prepare", {"corpus": "stdlib", "files": len(stdlib_files()), "workers": args.workers,
                       "prepare": "data.prepare.prepare, num_proc=workers, fresh datasets cache per run",
                       "bare": "read files + tiktoken encode_ordinary_batch(num_threads=workers)",
                       "rounds": args.rounds, "reps": args.reps, "warmup": args.warmup},
           {"seconds": t, "tokens": tokens, "tokens_per_s": rate, "ratio": ratio, "stages_s": stages,
            "arrow_rows_s": arrow})


if __name__ == "__main__":
    main()
