"""python -m data.prepare NAME: a corpus -> train.bin, val.bin (uint16 token ids) and meta.json.

The same pipeline for every corpus: documents -> tokenize (ds.map, EOT after every document) ->
seeded document-level train/val split -> concatenate each split's tokens, in corpus order, into its .bin.
Every file is written as .tmp and renamed into place, and meta.json comes last and is removed first when
rebuilding, so an interrupted run can never pass for a finished one (see data.format). Re-running on a
finished directory does nothing unless --force.

    python -m data.prepare stdlib --tokenizer bytes      # offline corpus, seconds
    python -m data.prepare openwebtext --num-proc 16     # the paper's data (~9B GPT-2 tokens)
    python -m data.prepare files --input a.txt b.jsonl c.parquet --out data/prepared/mine
    python -m data.prepare files --input input.txt       # one text file, cut into documents (below)

Documents of NAME=files: each plain-text file (.txt, .py) is one document, each record of a .jsonl/.json or
.parquet file one (its "text" field). A single plain-text file on its own is cut into documents instead: at
blank lines, consecutive paragraphs joined into documents of at least 2,000 characters (a text without blank
lines is cut at line ends the same way); it must give at least 2 (data.corpora.split_text).

Errors in the input (a missing, unreadable or non-UTF-8 file, an unsupported type, a file too small to split)
name the file and stop before anything in OUT is written or removed; the command line prints them as one line
on stderr and exits with status 1 (status 2 for a malformed command line).
"""

import argparse
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from atomic import atomic_path, write_json
from data.corpora import OPENWEBTEXT_ID, OPENWEBTEXT_REVISION, describe, load_documents
from data.format import CORPORA, DTYPE, default_dir, read_meta
from data.tokenizers import TOKENIZERS, get_tokenizer

DEFAULT_SEED = 2357
# nanoGPT's 0.05% leaves OpenWebText ~4M validation tokens; a small corpus needs a larger share.
VAL_FRACTION = {"openwebtext": 0.0005}
SMALL_CORPUS_VAL_FRACTION = 0.01
DEFAULT_NUM_PROC = max(1, min(8, (os.cpu_count() or 1) // 2))


def split_documents(n_docs, val_fraction, seed):
    """(train, val) document indices, each in corpus order. Both splits get at least one document."""
    if n_docs < 2:
        raise ValueError(f"need at least 2 documents to make a train and a val split, got {n_docs}")
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    order = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


IDS = pa.list_(pa.from_numpy_dtype(DTYPE))
FEATURES = datasets.Features.from_arrow_schema(pa.schema({"ids": IDS}))
# Below this many documents per process, threads of one process tokenize faster than a process pool, which
# costs datasets' map about half a second to start (bench.prepare: 731 stdlib files, 2 processes slower than 1).
MIN_DOCS_PER_PROC = 10_000


def _encode(batch, tokenizer, ranks_file, threads):
    """Token ids of a batch of documents, EOT appended, as an Arrow table built from numpy arrays: no Python
    int lists, whose conversion by datasets would cost as much as the encoding (bench.prepare measures it)."""
    tok = get_tokenizer(tokenizer, ranks_file)
    docs = tok.encode_batch(batch["text"], threads)
    offsets = np.zeros(len(docs) + 1, dtype=np.int32)
    np.cumsum([len(doc) + 1 for doc in docs], out=offsets[1:])
    ids = np.full(offsets[-1], tok.eot, dtype=DTYPE)  # each document's ids go before its EOT
    for doc, start in zip(docs, offsets):
        ids[start : start + len(doc)] = doc
    return pa.table({"ids": pa.ListArray.from_arrays(offsets, ids, type=IDS)})


def tokenize(docs, tokenizer, ranks_file=None, num_proc=None):
    """One row of token ids (ending in EOT) per document, num_proc-way parallel: over processes for a large
    corpus such as OpenWebText, over threads of this process for a small one (tiktoken releases the GIL)."""
    num_proc = num_proc or 1
    procs = max(1, min(num_proc, len(docs) // MIN_DOCS_PER_PROC))
    return docs.map(
        _encode,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "ranks_file": ranks_file, "threads": num_proc // procs},
        remove_columns=docs.column_names,
        features=FEATURES,
        num_proc=procs if procs > 1 else None,
        # datasets fingerprints _encode by name, not by the tokenizer code behind it, so a cached result
        # could silently outlive a change to that code; tokenizing again is the safe side.
        load_from_cache_file=False,
        desc=f"tokenizing ({tokenizer})",
    )


def write_bin(tokens, path, batch_size=1024):
    """Write all documents' ids back to back into `path` (atomically); returns the token count."""
    n_tokens = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        batches = tokens.with_format("arrow").iter(batch_size=batch_size)
        for batch in tqdm(batches, total=-(-len(tokens) // batch_size), desc=f"writing {path.name}", unit="batch"):
            ids = np.asarray(pc.list_flatten(batch["ids"]), dtype=DTYPE)
            f.write(ids.tobytes())
            n_tokens += len(ids)
    return n_tokens


def prepare(
    name,
    out=None,
    tokenizer="gpt2",
    inputs=(),
    val_fraction=None,
    seed=DEFAULT_SEED,
    num_proc=DEFAULT_NUM_PROC,
    dataset_id=None,
    revision=None,
    ranks_file=None,
    max_docs=None,
    force=False,
):
    """Prepare corpus `name` into `out` (default: default_dir(name, tokenizer)); returns the directory."""
    out = Path(out) if out else default_dir(name, tokenizer)
    if val_fraction is None:
        val_fraction = VAL_FRACTION.get(name, SMALL_CORPUS_VAL_FRACTION)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
    tok = get_tokenizer(tokenizer, ranks_file)  # fail before loading anything if it is unavailable
    if tok.vocab_size > np.iinfo(DTYPE).max + 1:
        raise ValueError(f"{tok.name} has {tok.vocab_size} ids, too many for {np.dtype(DTYPE).name}")
    source = describe(name, inputs, dataset_id, revision, max_docs)
    wanted = {"tokenizer": tok.name, "source": source, "split_seed": seed, "val_fraction": val_fraction}

    if (out / "meta.json").exists() and not force:
        try:
            meta = read_meta(out)
        except ValueError as e:
            print(f"{e}\nrebuilding {out}")
        else:
            differ = [key for key, value in wanted.items() if meta.get(key) != value]
            if differ:
                raise ValueError(
                    f"{out} already holds a different preparation (it differs in {', '.join(differ)}); "
                    "pass --force to overwrite it or choose another --out"
                )
            print(
                f"{out} is already prepared ({meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens); "
                "nothing to do (--force rebuilds it)"
            )
            return out

    tokens = tokenize(load_documents(source, num_proc), tok.name, ranks_file, num_proc)
    train_idx, val_idx = split_documents(len(tokens), val_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # from here on the directory counts as unfinished
    n_train = write_bin(tokens.select(train_idx), out / "train.bin")
    n_val = write_bin(tokens.select(val_idx), out / "val.bin")
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot": tok.eot,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "train_docs": len(train_idx),
        "val_docs": len(val_idx),
        "source": source,
        "split_seed": seed,
        "val_fraction": val_fraction,
        "dtype": np.dtype(DTYPE).name,
    }
    write_json(out / "meta.json", meta)
    print(
        f"wrote {out}: {n_train:,} train and {n_val:,} val tokens ({len(train_idx):,} and {len(val_idx):,} documents)"
    )
    return out


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None):
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description=description,
        epilog=epilog.split("\n\n", 1)[1],  # the examples, the documents of NAME=files, the errors
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=CORPORA, help="the corpus")
    parser.add_argument("--out", help="output directory (default: data/prepared/NAME-TOKENIZER)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="gpt2")
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files for NAME=files: .txt/.py (a document each; a single one is cut into documents, see below), "
        ".jsonl/.json, .parquet (a document per record)",
    )
    parser.add_argument(
        "--val-fraction", type=float, help="share of documents held out (default: 0.0005 for openwebtext, else 0.01)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the train/val split")
    parser.add_argument(
        "--num-proc", type=positive_int, default=DEFAULT_NUM_PROC,
        help="tokenizing processes (threads, for a small corpus)",
    )
    parser.add_argument("--dataset-id", help=f"Hub dataset for openwebtext (default: {OPENWEBTEXT_ID})")
    parser.add_argument("--revision", help=f"Hub revision for openwebtext (default: {OPENWEBTEXT_REVISION})")
    parser.add_argument(
        "--ranks-file",
        help="GPT-2 .tiktoken ranks file (default: $GPT2_TIKTOKEN_FILE, else the shipped data/gpt2.tiktoken)",
    )
    parser.add_argument("--max-docs", type=positive_int, help="use only the first N documents (quick trials)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT is already prepared")
    args = parser.parse_args(argv)
    if args.input and args.name != "files":
        parser.error(f"--input is for NAME=files, not {args.name}")
    if args.name == "files" and not args.input:
        parser.error("NAME=files needs --input PATH ...")
    for option in ("dataset_id", "revision"):
        if getattr(args, option) and args.name != "openwebtext":
            parser.error(f"--{option.replace('_', '-')} is for NAME=openwebtext, not {args.name}")
    try:
        prepare(
            args.name,
            out=args.out,
            tokenizer=args.tokenizer,
            inputs=args.input,
            val_fraction=args.val_fraction,
            seed=args.seed,
            num_proc=args.num_proc,
            dataset_id=args.dataset_id,
            revision=args.revision,
            ranks_file=args.ranks_file,
            max_docs=args.max_docs,
            force=args.force,
        )
    except (ValueError, OSError) as e:  # bad input or arguments, a full disk: a message, not a traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
