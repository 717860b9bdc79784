"""data/: tokenizers, prepare (local files, stdlib corpus, CLI), the prepared-directory format, the loader.

Offline and fast: corpora are a few dozen documents written here, datasets' caches live in tmp_path,
and GPT-2 comes from the ranks file the repository ships (data/gpt2.tiktoken).
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import data.corpora
import data.format
import data.prepare
import data.tokenizers
from data.corpora import MIN_DOC_CHARS, InputError, split_text, stdlib_files, stdlib_root
from data.format import default_dir, is_prepared, prepare_command, read_meta
from data.loader import TokenBatches, ensure_offline_corpus, open_dataset, resolve_data_dir
from data.prepare import prepare, split_documents
from data.tokenizers import GPT2_RANKS_FILE, GPT2_RANKS_SHA256, get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GPT2_FILE = ROOT / "data" / "gpt2.tiktoken"  # shipped with the repository
TOKENIZERS = ["bytes", "gpt2"]

# Documents with non-ASCII text, code, and a literal "<|endoftext|>" that must stay text.
DOCS = [
    "Hello world, the quick brown fox.",
    "naïve café, 数据, 🚀\nsecond line\n",
    "a literal <|endoftext|> is just text",
    "def f(x):\n    return x * 2\n",
] + [f"document {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(36)]


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("GPT2_TIKTOKEN_FILE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setattr(data.format, "PREPARED_ROOT", tmp_path / "prepared")  # never write into the repo


def tokenizer(name):
    return get_tokenizer(name, GPT2_FILE if name == "gpt2" else None)


def write_corpus(directory, fmt, docs=DOCS):
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        paths = [directory / f"doc{i:03d}.txt" for i in range(len(docs))]
        for path, doc in zip(paths, docs):
            path.write_text(doc, encoding="utf-8")
        return paths
    if fmt == "jsonl":
        path = directory / "docs.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs)))
        return [path]
    path = directory / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path)
    return [path]


def bin_tokens(path):
    return np.fromfile(path, dtype=np.uint16).tolist()


def documents_in(tokens, eot):
    """Split a token stream at EOT; every document must end with one."""
    assert tokens and tokens[-1] == eot
    docs, current = [], []
    for t in tokens:
        if t == eot:
            docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    return docs


def check_prepared(out, docs, tok, val_fraction):
    """Check `out` against an independent encoding of `docs`; returns the val documents' token lists.

    Each split must be a run of whole documents, each its encoding followed by EOT, in corpus order, and
    together the two splits must hold every document exactly once.
    """
    encoded = [tuple(ids.tolist()) for ids in tok.encode_batch(docs)]
    assert tok.eot not in {t for ids in encoded for t in ids}
    found = {}
    for split in ("train", "val"):
        found[split] = documents_in(bin_tokens(out / f"{split}.bin"), tok.eot)
        position = -1
        for doc in found[split]:
            position = next((j for j in range(position + 1, len(docs)) if encoded[j] == doc), None)
            assert position is not None, f"{split}.bin holds a document that is not the corpus's next one"
    assert Counter(found["train"] + found["val"]) == Counter(encoded)
    assert len(found["val"]) == max(1, round(len(docs) * val_fraction))

    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == tok.name
    assert meta["vocab_size"] == tok.vocab_size
    assert meta["eot"] == tok.eot
    assert meta["dtype"] == "uint16"
    assert meta["val_fraction"] == val_fraction
    for split in ("train", "val"):
        assert meta[f"{split}_docs"] == len(found[split])
        assert meta[f"{split}_tokens"] == sum(len(doc) + 1 for doc in found[split])
    return found["val"]


# --- tokenizers ---------------------------------------------------------------------------------------


def test_gpt2_offline_file_gives_gpt2_ids(monkeypatch):
    tok = get_tokenizer("gpt2", GPT2_FILE)
    assert (tok.name, tok.vocab_size, tok.eot) == ("gpt2", 50257, 50256)
    hello = [15496, 995, 11, 262, 2068, 7586, 21831, 13]
    assert [ids.tolist() for ids in tok.encode_batch(["Hello world, the quick brown fox."])] == [hello]
    assert 50256 not in tok.encode_batch(["<|endoftext|>"])[0]  # special tokens are not parsed from text
    for threads in (1, 3):  # the numpy encoder over threads is tiktoken's encode_ordinary, document by document
        assert [ids.tolist() for ids in tok.encode_batch(DOCS, threads)] == tok.enc.encode_ordinary_batch(DOCS)
    monkeypatch.setenv("GPT2_TIKTOKEN_FILE", str(GPT2_FILE))
    assert get_tokenizer("gpt2").encode_batch(["Hello world, the quick brown fox."])[0].tolist() == hello


def test_gpt2_rejects_a_wrong_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("SGVsbG8= 0\n")
    with pytest.raises(ValueError, match="[Hh]ash"):
        get_tokenizer("gpt2", bad)
    with pytest.raises(FileNotFoundError, match="nope.tiktoken"):
        get_tokenizer("gpt2", tmp_path / "nope.tiktoken")


def test_the_shipped_ranks_file():
    """data/gpt2.tiktoken is GPT-2's ranks file, documented in data/README.md, and git does not ignore it."""
    assert GPT2_RANKS_FILE == GPT2_FILE
    assert hashlib.sha256(GPT2_FILE.read_bytes()).hexdigest() == GPT2_RANKS_SHA256
    readme = (ROOT / "data" / "README.md").read_text()
    assert "gpt2.tiktoken" in readme and "openai-whisper" in readme and "MIT" in readme and GPT2_RANKS_SHA256 in readme
    if shutil.which("git") and (ROOT / ".git").exists():
        for path in ("data/gpt2.tiktoken", "data/README.md"):
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
            assert ignored.returncode == 1, f"{path} is git-ignored"


def test_gpt2_defaults_to_the_shipped_file_and_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the GPT-2 tokenizer must not download anything")

    monkeypatch.setattr(data.tokenizers.tiktoken, "get_encoding", no_network)
    monkeypatch.setattr("tiktoken.load.read_file", no_network)
    monkeypatch.setattr("tiktoken.load.read_file_cached", no_network)
    data.tokenizers._gpt2.cache_clear()
    try:
        tok = get_tokenizer("gpt2")
        assert tok.ranks_file == GPT2_FILE
        assert tok.encode_batch(["Hello world"])[0].tolist() == [15496, 995]
        # $GPT2_TIKTOKEN_FILE is honoured (a wrong file fails), and an explicit ranks file overrides it.
        bad = tmp_path / "bad.tiktoken"
        bad.write_text("SGVsbG8= 0\n")
        monkeypatch.setenv("GPT2_TIKTOKEN_FILE", str(bad))
        with pytest.raises(ValueError, match="bad.tiktoken is not GPT-2's ranks file"):
            get_tokenizer("gpt2")
        assert get_tokenizer("gpt2", GPT2_FILE).ranks_file == GPT2_FILE
    finally:
        data.tokenizers._gpt2.cache_clear()


def test_bytes_tokenizer_round_trips():
    tok = get_tokenizer("bytes")
    assert (tok.name, tok.vocab_size, tok.eot) == ("bytes", 256, 0)
    text = "naïve café, 数据, 🚀"
    [ids] = tok.encode_batch([text])
    assert ids.tolist() == list(text.encode("utf-8")) and len(ids) > len(text)
    assert tok.decode(ids) == text


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("sentencepiece")


# --- prepare -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_prepare_files_gives_exact_tokens(tmp_path, fmt, tok_name):
    inputs = write_corpus(tmp_path / "corpus", fmt)
    out = prepare(
        "files",
        out=tmp_path / "out",
        tokenizer=tok_name,
        inputs=inputs,
        ranks_file=GPT2_FILE,
        val_fraction=0.1,
        seed=3,
        num_proc=1,
    )
    check_prepared(out, DOCS, tokenizer(tok_name), val_fraction=0.1)
    meta = read_meta(out)
    assert meta["source"] == {"name": "files", "files": [str(p.resolve()) for p in inputs]}
    assert meta["split_seed"] == 3
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_parallel_tokenizing_gives_the_same_files(tmp_path, monkeypatch, tok_name):
    """num_proc=2 tokenizes over threads for a small corpus and over processes for a large one (here: forced
    by a low threshold, the OpenWebText path); both must give exactly what one worker gives."""
    inputs = write_corpus(tmp_path / "corpus", "jsonl")
    kwargs = {"tokenizer": tok_name, "inputs": inputs, "ranks_file": GPT2_FILE, "val_fraction": 0.1}
    one = prepare("files", out=tmp_path / "one", num_proc=1, **kwargs)
    threads = prepare("files", out=tmp_path / "threads", num_proc=2, **kwargs)
    monkeypatch.setattr(data.prepare, "MIN_DOCS_PER_PROC", 10)
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setattr(data.prepare, "_encode", functools.partial(record_pid, pids, data.prepare._encode))
    processes = prepare("files", out=tmp_path / "processes", num_proc=2, **kwargs)
    spawned = {int(p.name) for p in pids.iterdir()}
    assert len(spawned) == 2 and os.getpid() not in spawned
    for out in (threads, processes):
        for name in ("train.bin", "val.bin"):
            assert (out / name).read_bytes() == (one / name).read_bytes()


def record_pid(directory, encode, batch, **kwargs):
    (directory / str(os.getpid())).touch()
    return encode(batch, **kwargs)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_openwebtext_path_on_a_local_parquet_repository(tmp_path, tok_name):
    """The OpenWebText code path (datasets.load_dataset of a Hub id) on a local directory laid out like the
    Hub repository's Parquet shards; --max-docs streams the first documents instead of loading them all."""
    repo = tmp_path / "openwebtext"
    (repo / "plain_text").mkdir(parents=True)
    for i, shard in enumerate((DOCS[:25], DOCS[25:])):
        pq.write_table(pa.table({"text": shard}), repo / "plain_text" / f"train-{i:05d}-of-00002.parquet")
    kwargs = {"tokenizer": tok_name, "dataset_id": str(repo), "ranks_file": GPT2_FILE, "val_fraction": 0.1}
    out = prepare("openwebtext", out=tmp_path / "all", num_proc=1, **kwargs)
    check_prepared(out, DOCS, tokenizer(tok_name), val_fraction=0.1)
    assert read_meta(out)["source"] == {"name": "openwebtext", "dataset_id": str(repo), "revision": "main"}
    first = prepare("openwebtext", out=tmp_path / "first", max_docs=10, **kwargs)
    check_prepared(first, DOCS[:10], tokenizer(tok_name), val_fraction=0.1)


def test_prepare_mixed_inputs_keep_their_order(tmp_path):
    parts = [DOCS[:10], DOCS[10:13], DOCS[13:]]
    inputs = (
        write_corpus(tmp_path / "a", "parquet", parts[0])
        + write_corpus(tmp_path / "b", "txt", parts[1])
        + write_corpus(tmp_path / "c", "jsonl", parts[2])
    )
    out = prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=inputs, val_fraction=0.2, num_proc=1)
    check_prepared(out, DOCS, tokenizer("bytes"), val_fraction=0.2)


def test_small_corpus_still_gets_a_val_document(tmp_path):
    inputs = write_corpus(tmp_path / "corpus", "jsonl", DOCS[:3])
    out = prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=inputs, num_proc=1)
    assert check_prepared(out, DOCS[:3], tokenizer("bytes"), val_fraction=0.01) != []
    with pytest.raises(ValueError, match="at least 2 documents"):
        prepare(
            "files", out=tmp_path / "one", tokenizer="bytes", inputs=write_corpus(tmp_path / "c1", "jsonl", DOCS[:1])
        )


def test_split_is_seeded():
    train, val = split_documents(40, 0.25, seed=7)
    assert len(val) == 10 and sorted(np.concatenate([train, val]).tolist()) == list(range(40))
    again_train, again_val = split_documents(40, 0.25, seed=7)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_documents(40, 0.25, seed=8)[1])


def test_prepare_is_deterministic_per_seed(tmp_path):
    inputs = write_corpus(tmp_path / "corpus", "jsonl")

    def run(name, seed):
        out = tmp_path / name
        return prepare("files", out=out, tokenizer="bytes", inputs=inputs, val_fraction=0.25, seed=seed, num_proc=1)

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    for split in ("train.bin", "val.bin"):
        assert (a / split).read_bytes() == (b / split).read_bytes()
    assert (a / "val.bin").read_bytes() != (c / "val.bin").read_bytes()


def test_rerun_is_a_noop_and_force_rebuilds(tmp_path, capsys):
    inputs = write_corpus(tmp_path / "corpus", "txt")
    kwargs = {"out": tmp_path / "out", "tokenizer": "bytes", "inputs": inputs, "num_proc": 1}
    out = prepare("files", **kwargs)
    files = sorted(out.iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    capsys.readouterr()

    prepare("files", **kwargs)
    assert "already prepared" in capsys.readouterr().out
    assert sorted(out.iterdir()) == files
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before

    with pytest.raises(ValueError, match="different preparation.*split_seed"):
        prepare("files", **kwargs, seed=99)
    prepare("files", **kwargs, force=True)
    assert (out / "meta.json").stat().st_mtime_ns != before["meta.json"][0]
    assert (out / "train.bin").read_bytes() == before["train.bin"][1]


def test_an_edited_text_file_is_read_again(tmp_path):
    """datasets caches what it loaded from local files; an edited file must not be served from that cache."""
    inputs = write_corpus(tmp_path / "corpus", "txt")
    kwargs = {"tokenizer": "bytes", "inputs": inputs, "val_fraction": 0.1, "num_proc": 1}
    prepare("files", out=tmp_path / "before", **kwargs)
    edited = [*DOCS[:5], "an edited document", *DOCS[6:]]
    inputs[5].write_text(edited[5], encoding="utf-8")
    check_prepared(prepare("files", out=tmp_path / "after", **kwargs), edited, tokenizer("bytes"), val_fraction=0.1)


def test_a_missing_input_file_is_named_before_any_work(tmp_path):
    inputs = [*write_corpus(tmp_path / "corpus", "txt")[:2], tmp_path / "nope.txt"]
    with pytest.raises(FileNotFoundError, match="no such input file: .*nope.txt"):
        prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=inputs, num_proc=1)
    assert not (tmp_path / "out").exists()


def test_truncated_bin_is_an_error_and_gets_rebuilt(tmp_path):
    inputs = write_corpus(tmp_path / "corpus", "jsonl")
    out = prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=inputs, num_proc=1)
    good = (out / "train.bin").read_bytes()
    with open(out / "train.bin", "r+b") as f:
        f.truncate(len(good) - 2)
    assert not is_prepared(out)
    with pytest.raises(ValueError, match=r"truncated or corrupt.*python -m data\.prepare files .*--force"):
        read_meta(out)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        TokenBatches(out, "train", block_size=8, batch_size=2, seed=0)
    prepare("files", out=out, tokenizer="bytes", inputs=inputs, num_proc=1)  # not finished, so not a no-op
    assert (out / "train.bin").read_bytes() == good and is_prepared(out)


def test_interrupted_prepare_is_never_finished(tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp"):
        (partial / name).write_bytes(b"")
    assert not is_prepared(partial)

    inputs = write_corpus(tmp_path / "corpus", "jsonl")
    out = prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=inputs, num_proc=1)
    (out / "val.bin.tmp").write_bytes(b"\0" * 10)  # a stale partial write changes nothing
    assert is_prepared(out)

    real_write_bin = data.prepare.write_bin

    def crash_on_val(tokens, path, **kwargs):
        if path.name == "val.bin":
            path.with_name("val.bin.tmp").write_bytes(b"\1\0")
            raise KeyboardInterrupt
        return real_write_bin(tokens, path, **kwargs)

    monkeypatch.setattr(data.prepare, "write_bin", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare("files", out=out, tokenizer="bytes", inputs=inputs, seed=5, num_proc=1, force=True)
    assert not (out / "meta.json").exists() and not is_prepared(out)
    with pytest.raises(FileNotFoundError, match="not a finished prepared directory"):
        open_dataset(out)

    monkeypatch.setattr(data.prepare, "write_bin", real_write_bin)
    prepare("files", out=out, tokenizer="bytes", inputs=inputs, seed=5, num_proc=1)
    check_prepared(out, DOCS, tokenizer("bytes"), val_fraction=0.01)
    assert read_meta(out)["split_seed"] == 5


def test_missing_directory_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*python -m data\.prepare stdlib --tokenizer bytes$"):
        open_dataset(default_dir("stdlib", "bytes"))
    elsewhere = tmp_path / "openwebtext-gpt2"
    assert prepare_command(elsewhere) == f"python -m data.prepare openwebtext --tokenizer gpt2 --out {elsewhere}"
    assert prepare_command(tmp_path / "mine") == f"python -m data.prepare NAME --out {tmp_path / 'mine'}"


def test_stdlib_corpus(tmp_path):
    files = stdlib_files()
    relative = [p.relative_to(stdlib_root()) for p in files]
    assert files == sorted(files) and all(p.suffix == ".py" and p.stat().st_size > 0 for p in files)
    assert not [p for p in relative if {"site-packages", "test", "tests", "idle_test"} & set(p.parts)]
    assert 5e6 < sum(p.stat().st_size for p in files) < 30e6
    docs = [p.read_text(encoding="utf-8") for p in files[:50]]

    out = prepare("stdlib", out=tmp_path / "out", tokenizer="bytes", max_docs=50, val_fraction=0.1, num_proc=1)
    check_prepared(out, docs, tokenizer("bytes"), val_fraction=0.1)
    source = read_meta(out)["source"]
    assert source["name"] == "stdlib" and source["files"] == 50 and source["max_docs"] == 50


def test_ensure_offline_corpus_prepares_once(tmp_path):
    data_dir = ensure_offline_corpus("bytes")
    assert data_dir == default_dir("stdlib", "bytes") == tmp_path / "prepared" / "stdlib-bytes"
    meta = open_dataset(data_dir, block_size=128)
    assert meta["source"]["name"] == "stdlib" and meta["train_docs"] + meta["val_docs"] == len(stdlib_files())
    mtime = (data_dir / "meta.json").stat().st_mtime_ns
    assert ensure_offline_corpus("bytes") == data_dir
    assert (data_dir / "meta.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_cli(tmp_path, tok_name):
    inputs = write_corpus(tmp_path / "corpus", "txt") + write_corpus(tmp_path / "more", "jsonl", ["one more"])
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPT2_TIKTOKEN_FILE": str(GPT2_FILE)}
    command = [
        sys.executable,
        "-m",
        "data.prepare",
        "files",
        "--input",
        *map(str, inputs),
        "--out",
        str(out),
        "--tokenizer",
        tok_name,
        "--num-proc",
        "2",
        "--val-fraction",
        "0.1",
        "--seed",
        "11",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    check_prepared(out, DOCS + ["one more"], tokenizer(tok_name), val_fraction=0.1)
    assert read_meta(out)["split_seed"] == 11
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "already prepared" in again.stdout


def run_prepare(*args, timeout=300):
    """`python -m data.prepare ARGS` in a subprocess, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "data.prepare", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(directory):
    """Every file under `directory`: name -> (mtime, bytes)."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_clean_error(result, *names):
    """A failed command: nonzero status, a message naming `names` on stderr, and no Python traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1, result.stderr
    for name in names:
        assert str(name) in error[0], result.stderr


def paragraphs_text(n, seed=0):
    """n paragraphs of 1-6 lines of words, separated by blank lines (some with spaces on them)."""
    rng = np.random.default_rng(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "naïve", "数据"]
    paragraphs = [
        "\n".join(" ".join(rng.choice(words, 8)) for _ in range(rng.integers(1, 7))) for _ in range(n)
    ]
    return "".join(p + ("\n\n" if i % 3 else "\n  \n\n") for i, p in enumerate(paragraphs))


# --- a single plain-text file --------------------------------------------------------------------------


def test_split_text_joins_paragraphs_into_documents():
    text = "\n\n  \nPara one\nline two\n\n\n   \nPara two\n  indented\n\nthree\n\n"
    assert split_text(text, 1) == ["Para one\nline two\n", "Para two\n  indented\n", "three\n"]
    # paragraphs are joined, blank lines inside a document kept, until a document has min_chars; a shorter
    # remainder joins the last document
    assert split_text(text, 15) == ["Para one\nline two\n", "Para two\n  indented\n\nthree\n"]
    assert split_text(text, 10_000) == [text.strip("\n ") + "\n"]
    # no blank lines: whole lines, joined the same way
    assert split_text("l1\nl2\nl3\nl4\nl5", 5) == ["l1\nl2\n", "l3\nl4\nl5"]
    assert split_text("", 5) == [] and split_text("one line", 5) == ["one line"]
    text = paragraphs_text(200)
    docs = split_text(text)
    assert len(docs) > 5 and all(len(doc) >= MIN_DOC_CHARS for doc in docs)
    assert "".join(docs).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_a_single_text_file_is_split_into_documents(tmp_path):
    text = paragraphs_text(300)
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    out = prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=[path], val_fraction=0.1, num_proc=1)
    docs = split_text(text)
    assert len(docs) >= 10
    check_prepared(out, docs, tokenizer("bytes"), val_fraction=0.1)
    meta = read_meta(out)
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0
    assert meta["source"] == {"name": "files", "files": [str(path)], "text_split": {"min_chars": MIN_DOC_CHARS}}
    # with a second file, each file is one document again
    other = tmp_path / "other.txt"
    other.write_text("another file", encoding="utf-8")
    both = prepare("files", out=tmp_path / "both", tokenizer="bytes", inputs=[path, other], num_proc=1)
    check_prepared(both, [text, "another file"], tokenizer("bytes"), val_fraction=0.01)


def test_cli_splits_a_single_text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(paragraphs_text(300), encoding="utf-8")
    result = run_prepare("files", "--input", path, "--out", tmp_path / "out", "--tokenizer", "gpt2")
    assert result.returncode == 0, result.stderr
    meta = read_meta(tmp_path / "out")
    assert meta["train_docs"] > 1 and meta["val_docs"] >= 1 and meta["val_tokens"] > 0


def test_a_text_file_too_small_to_split_is_a_clear_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("One paragraph.\n\nAnd another, far below 2,000 characters.\n", encoding="utf-8")
    with pytest.raises(InputError, match="small.txt: too small to split"):
        prepare("files", out=tmp_path / "out", tokenizer="bytes", inputs=[path], num_proc=1)
    result = run_prepare("files", "--input", path, "--out", tmp_path / "out", "--tokenizer", "bytes")
    assert_clean_error(result, path, "too small to split")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["single txt", "txt among others", "jsonl"])
def test_an_undecodable_file_is_named_and_nothing_is_written(tmp_path, case):
    """Invalid UTF-8 stops data.prepare with one line naming the file, before OUT is touched: a finished
    preparation there, and an unrelated file, stay as they were even with --force."""
    good = write_corpus(tmp_path / "corpus", "txt", DOCS[:4])
    if case == "jsonl":
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(b'{"text": "fine"}\n{"text": "x\xff\xfe\xfa"}\n')
    else:
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"text, then \xff\xfe\xfa")
    inputs = [bad] if case == "single txt" else [*good[:2], bad, *good[2:]]
    out = tmp_path / "out"
    prepare("files", out=out, tokenizer="bytes", inputs=good, num_proc=1)
    (out / "notes.txt").write_text("not ours")
    before = snapshot(out)
    result = run_prepare("files", "--input", *inputs, "--out", out, "--tokenizer", "bytes", "--force")
    assert_clean_error(result, bad)
    assert "UTF-8" in result.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], "invalid choice: 'nope'"),
        (["stdlib", "--input", "a.txt"], "--input is for NAME=files"),
        (["files"], "needs --input"),
        (["stdlib", "--dataset-id", "x"], "--dataset-id is for NAME=openwebtext"),
        (["stdlib", "--max-docs", "0"], "positive integer"),
        (["files", "--input", "a.txt", "--num-proc", "-2"], "positive integer"),
        (["files", "--input", "a.txt", "--tokenizer", "sentencepiece"], "invalid choice: 'sentencepiece'"),
        (["files", "--input", "{tmp}/nope.txt"], "no such input file: {tmp}/nope.txt"),
        (["files", "--input", "{tmp}/data.csv"], "{tmp}/data.csv: unsupported file type"),
        (["files", "--input", "{tmp}/data.txt", "--val-fraction", "1.5"], "val fraction must be in (0, 1)"),
        (["files", "--input", "{tmp}/data.txt", "--ranks-file", "{tmp}/no.tiktoken"], "{tmp}/no.tiktoken"),
        (["stdlib", "--max-docs", "1", "--out", "{tmp}/out"], "need at least 2 documents"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "data.txt").write_text(paragraphs_text(300))
    with pytest.raises(SystemExit) as exit_:
        data.prepare.main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_.value.code in (1, 2)
    error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and message.format(tmp=tmp_path) in error[0]
    assert not (tmp_path / "out").exists()


def test_help_states_the_documents_policy(capsys):
    with pytest.raises(SystemExit) as exit_:
        data.prepare.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"documents of at least {MIN_DOC_CHARS:,} characters" in text and "blank lines" in text
    assert f"MIN_DOC_CHARS ({MIN_DOC_CHARS:,})" in data.corpora.__doc__


# --- loader ------------------------------------------------------------------------------------------


def make_prepared(directory, n_train, n_val):
    """A prepared directory whose token at position i is i % 251 (train) or (i + 100) % 251 (val)."""
    directory.mkdir(parents=True)
    (np.arange(n_train) % 251).astype(np.uint16).tofile(directory / "train.bin")
    ((np.arange(n_val) + 100) % 251).astype(np.uint16).tofile(directory / "val.bin")
    meta = {
        "tokenizer": "bytes",
        "vocab_size": 256,
        "eot": 0,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "train_docs": 1,
        "val_docs": 1,
        "source": {"name": "files", "files": []},
        "split_seed": 0,
        "val_fraction": 0.5,
        "dtype": "uint16",
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def test_batches_are_a_pure_function_of_seed_split_step(tmp_path):
    d = make_prepared(tmp_path / "d", n_train=10_000, n_val=3_000)
    batches = TokenBatches(d, "train", block_size=16, batch_size=8, seed=1)
    x, y = batches.get(step=5)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    x2, y2 = TokenBatches(d, "train", block_size=16, batch_size=8, seed=1).get(step=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    for other_x, _ in [batches.get(6), TokenBatches(d, "train", block_size=16, batch_size=8, seed=2).get(5),
                       TokenBatches(d, "val", block_size=16, batch_size=8, seed=1).get(5)]:
        assert not torch.equal(x, other_x)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_micro_batches_are_slices_of_the_global_batch(tmp_path, size):
    """However ranks and micro-batches split it, a step trains on the same windows."""
    d = make_prepared(tmp_path / "d", n_train=10_000, n_val=3_000)
    batches = TokenBatches(d, "train", block_size=16, batch_size=8, seed=1)
    whole, parts = batches.get(5), [batches.get(5, i, size) for i in range(8 // size)]
    assert torch.equal(whole[0], torch.cat([x for x, _ in parts])) and torch.equal(whole[1], torch.cat([y for _, y in parts]))


def test_batches_read_the_windows_at_their_offsets(tmp_path):
    d = make_prepared(tmp_path / "d", n_train=10_000, n_val=3_000)
    for split, shift in (("train", 0), ("val", 100)):
        batches = TokenBatches(d, split, block_size=16, batch_size=8, seed=0)
        x, y = batches.get(step=3)
        memmap = np.memmap(d / f"{split}.bin", dtype=np.uint16, mode="r")
        for row, offset in enumerate(batches.offsets(step=3)):
            assert x[row].tolist() == ((np.arange(offset, offset + 16) + shift) % 251).tolist()
            assert x[row].tolist() == memmap[offset : offset + 16].tolist()
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_offsets_cover_exactly_the_valid_range(tmp_path):
    d = make_prepared(tmp_path / "d", n_train=19, n_val=17)  # block 16: starts 0..2 (train), 0 (val)
    train = TokenBatches(d, "train", block_size=16, batch_size=64, seed=0)
    assert set(train.offsets(step=0).tolist()) == {0, 1, 2}
    assert set(TokenBatches(d, "val", block_size=16, batch_size=8, seed=0).offsets(step=0).tolist()) == {0}
    _, y = train.get(step=0)
    assert int(y.max()) == 18  # the last token is reachable as a target


def test_loader_validates_before_any_compute(tmp_path):
    d = make_prepared(tmp_path / "d", n_train=100, n_val=10)
    with pytest.raises(ValueError, match="fewer than block_size"):
        TokenBatches(d, "train", block_size=16, batch_size=2, seed=0)  # val.bin is too short
    with pytest.raises(ValueError, match="split"):
        TokenBatches(d, "test", block_size=4, batch_size=2, seed=0)
    with pytest.raises(FileNotFoundError, match="python -m data.prepare"):
        TokenBatches(tmp_path / "missing", "train", block_size=4, batch_size=2, seed=0)


def test_resolve_data_dir(tmp_path):
    assert resolve_data_dir("stdlib", "bytes") == default_dir("stdlib", "bytes")
    assert resolve_data_dir("openwebtext", "gpt2") == default_dir("openwebtext", "gpt2")
    assert resolve_data_dir(str(tmp_path / "mine"), "gpt2") == tmp_path / "mine"
