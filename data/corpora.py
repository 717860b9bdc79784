"""Where documents come from. Every corpus becomes a datasets.Dataset with one "text" row per document.

- openwebtext: the paper's data, from the Hugging Face Hub in Parquet form (datasets 5 runs no loading
  scripts). The default repository holds the full corpus as Parquet shards on its main branch; its
  refs/convert/parquet branch is only a partial conversion, so it is not the default.
- stdlib: a corpus every Python installation has, so the default configuration needs no network: the
  standard library's own .py files (about 12 MB on CPython 3.11), one document per file, sorted by path.
  Left out: installed packages (site-packages), the test suites (any test/, tests/ or idle_test/
  directory) and empty files.
- files: local files. Plain text (.txt, or Python source .py) is one document per file; JSON lines (.jsonl,
  .json) and Parquet (.parquet) give one document per record, read from the "text" field.
  A single plain-text file on its own (one --input, .txt or .py) would be one document, too few for a
  train/val split, so it is cut into documents instead (split_text): at blank lines into paragraphs, and
  consecutive paragraphs are joined into documents of at least MIN_DOC_CHARS (2,000) characters; a last
  shorter stretch joins the document before it. A text without blank lines is cut the same way at line ends.
  Within a document the text is unchanged; the blank lines at a cut are dropped (EOT stands there). A file
  that gives fewer than 2 such documents is an error naming it. meta.json's source records the rule
  ("text_split").

Local files, stdlib included, are read by datasets' own builders (json, parquet, and the generator builder
for plain text), so they take the same path as Hub data and the same cache. Text is read as UTF-8 (universal
newlines); a file that cannot be read or decoded is an InputError naming it, raised before any output is
written.
"""

import functools
import hashlib
import inspect
import itertools
import os
import platform
import re
import sysconfig
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.exceptions import DatasetGenerationError

OPENWEBTEXT_ID = "Skylion007/openwebtext"
OPENWEBTEXT_REVISION = "main"

BUILDERS = {".txt": "text", ".py": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT = datasets.Features({"text": datasets.Value("string")})
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_DOC_CHARS = 2000  # documents cut from a single plain-text input are at least this long (split_text)
# A run of lines that each hold some non-whitespace, up to and including the last one's newline.
PARAGRAPH = re.compile(r"(?:[^\S\n]*\S[^\n]*(?:\n|$))+")
NONBLANK_LINE = re.compile(r"[^\S\n]*\S[^\n]*(?:\n|$)")


class InputError(ValueError):
    """An input file that cannot be used (unreadable, not UTF-8, malformed, too small); the message names it."""


def hf_cache_dir():
    """datasets' cache, read from the environment now rather than when datasets was imported."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "datasets")
    return None  # datasets' default


def stdlib_root():
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def stdlib_files():
    """The stdlib's own non-empty .py files, sorted; skipped directories are pruned, not walked (site-packages
    alone can hold thousands of files)."""
    files = []
    for directory, subdirs, names in os.walk(stdlib_root()):
        subdirs[:] = [d for d in subdirs if d not in STDLIB_SKIP_DIRS]
        files += [Path(directory, n) for n in names if n.endswith(".py")]
    return [path for path in sorted(files) if path.stat().st_size > 0]


def load_files(paths):
    """Documents from local files, in the order given."""
    parts = []
    for builder, group in itertools.groupby(map(Path, paths), key=_builder):
        group = list(group)
        parts.append(_text_only(_load_group(builder, group), group))
    return datasets.concatenate_datasets(parts)


class _BadText(ValueError):
    """A loaded file's "text" column is unusable; _load_group adds the file's name."""


def _load_group(builder, paths):
    """One builder's dataset of consecutive files; a failure becomes an InputError naming the culprit file."""
    try:
        ds = _load(builder, paths)
        if builder != "text":
            _check_text_column(ds)
        return ds
    except InputError:
        raise
    except (DatasetGenerationError, ValueError, OSError) as e:
        cause = _root_cause(e)
        if isinstance(cause, InputError):
            raise cause from None
        if len(paths) > 1:  # name the file that fails on its own (only on this error path)
            for path in paths:
                _load_group(builder, [path])
        where = ", ".join(map(str, paths))
        if isinstance(cause, _BadText):
            raise InputError(f"{where}: {cause}") from None
        them = "it" if len(paths) == 1 else "them together"
        raise InputError(f"{where}: cannot read {them} as {builder}: {type(cause).__name__}: {cause}") from None


def _check_text_column(ds):
    """JSON and Parquet readers take string bytes as they come; invalid UTF-8 would only fail mid-tokenizing."""
    if "text" not in ds.column_names:
        return  # _text_only names the problem
    column = ds.data.column("text")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise _BadText(f"its 'text' field holds {column.type} values, not strings")
    if column.null_count:
        raise _BadText(f"{column.null_count:,} of its records have no 'text' (null or missing)")
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        raise _BadText("a 'text' value is not valid UTF-8; data.prepare reads text as UTF-8") from None


def _load(builder, paths):
    if builder == "text":
        return _load_texts(paths)
    data_files = [str(p.resolve()) for p in paths]
    return datasets.load_dataset(builder, data_files=data_files, split="train", cache_dir=hf_cache_dir())


def _root_cause(e):
    """The innermost exception `e` was raised from (datasets raises DatasetGenerationError from a builder's
    error). Explicit causes only: an exception's implicit context may be an unrelated one being handled."""
    for _ in range(100):  # chains are short; the bound only guards against a cycle
        if e.__cause__ is None:
            break
        e = e.__cause__
    return e


def _load_texts(paths):
    """One document per plain-text file, through datasets' generator builder, cached like any builder's output
    (the cache key covers each file's path, size and mtime). Not the text builder: it treats every path as a
    possibly remote, compressed archive, about 0.7 ms per file, 90% of loading the 731-file stdlib corpus."""
    files = [(str(p.resolve()), st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()]]
    return _from_generator(_read_texts, {"files": files}, read_text)


def _from_generator(generator, gen_kwargs, *helpers):
    """datasets' generator builder, with an InputError raised inside unwrapped. datasets keys its cache on
    the generator's name and gen_kwargs, not its code, so a hash of the code (the generator's and the helpers
    it calls) goes into gen_kwargs: an edit to how files become documents is never served from a stale cache."""
    code = hashlib.sha256(b"".join(_code_bytes(f) for f in (generator, *helpers))).hexdigest()
    try:
        return datasets.Dataset.from_generator(
            generator, features=TEXT, gen_kwargs={**gen_kwargs, "code": code}, cache_dir=hf_cache_dir()
        )
    except DatasetGenerationError as e:
        cause = _root_cause(e)
        if isinstance(cause, InputError):
            raise cause from None
        raise


def _code_bytes(function):
    try:
        return inspect.getsource(function).encode()
    except (OSError, TypeError):  # no source at hand (bytecode only): the bytecode itself
        return function.__code__.co_code


def _read_texts(files, code):
    for path, _size, _mtime in files:
        yield {"text": read_text(path)}


def read_text(path):
    """A file's text: UTF-8, universal newlines (as datasets' text builder reads); an InputError naming the
    file, and the first offending byte, if it is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raw = Path(path).read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f"byte {raw[e.start:e.start + 1].hex()} at offset {e.start:,}: {e.reason}"
            raise InputError(
                f"{path}: not UTF-8 text ({where}); data.prepare reads text as UTF-8, so convert the file first "
                "(e.g. iconv -f LATIN1 -t UTF-8)"
            ) from None
        raise
    except OSError as e:
        raise InputError(f"{path}: cannot read it: {e.strerror or e}") from None


def split_text(text, min_chars=MIN_DOC_CHARS):
    """A single plain-text file's documents (see the module docstring): whole paragraphs (runs of non-blank
    lines; whole non-blank lines when there is at most one paragraph) joined in order until a document holds
    at least `min_chars` characters; a shorter remainder joins the last document. Each document is the
    text from its first unit's start to its last unit's end, unchanged."""
    units = [m.span() for m in PARAGRAPH.finditer(text)]
    if len(units) < 2:
        units = [m.span() for m in NONBLANK_LINE.finditer(text)]
    spans, start = [], None
    for unit_start, unit_end in units:
        start = unit_start if start is None else start
        if unit_end - start >= min_chars:
            spans.append((start, unit_end))
            start = None
    if start is not None:  # the remainder, shorter than min_chars
        if spans:
            spans[-1] = (spans[-1][0], units[-1][1])
        else:
            spans.append((start, units[-1][1]))
    return [text[a:b] for a, b in spans]


def _read_split_text(path, size, mtime, min_chars, code):
    docs = split_text(read_text(path), min_chars)
    if len(docs) < 2:
        raise InputError(
            f"{path}: too small to split into a train and a val document ({size:,} bytes make {len(docs)} "
            f"document(s); a single plain-text input is cut at blank lines, else at line ends, into documents of "
            f"at least {min_chars:,} characters); give more text, or several files (each is one document)"
        )
    for doc in docs:
        yield {"text": doc}


def load_split_text(path, min_chars=MIN_DOC_CHARS):
    """The documents split_text cuts a single plain-text file into; an InputError naming it if they are fewer
    than 2, or if it cannot be read."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"{path}: cannot read it: {e.strerror or e}") from None
    kwargs = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, "min_chars": min_chars}
    return _from_generator(_read_split_text, kwargs, read_text, split_text)


def describe(name, inputs=(), dataset_id=None, revision=None, max_docs=None):
    """A JSON-able record of what corpus `name` is, without loading it (meta.json's "source")."""
    if name == "openwebtext":
        source = {
            "name": name,
            "dataset_id": dataset_id or OPENWEBTEXT_ID,
            "revision": revision or OPENWEBTEXT_REVISION,
        }
    elif name == "stdlib":
        files = stdlib_files()[:max_docs]
        source = {"name": name, "root": str(stdlib_root()), "python": platform.python_version(), "files": len(files)}
    elif name == "files":
        if not inputs:
            raise ValueError("corpus 'files' needs --input PATH ...")
        missing = [str(p) for p in inputs if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"no such input file: {', '.join(missing)}")
        builders = [_builder(Path(p)) for p in inputs]  # an unsupported type fails here, before any work
        source = {"name": name, "files": [str(Path(p).resolve()) for p in inputs]}
        if builders == ["text"]:  # a single plain-text file is split into documents (split_text)
            source["text_split"] = {"min_chars": MIN_DOC_CHARS}
    else:
        raise ValueError(f"unknown corpus {name!r}; choose one of openwebtext, stdlib, files")
    if max_docs:
        source["max_docs"] = max_docs
    return source


def load_documents(source, num_proc=None):
    """The documents of the corpus that `describe` returned `source` for."""
    name, max_docs = source["name"], source.get("max_docs")
    if name == "openwebtext":
        return _load_hub(source["dataset_id"], source["revision"], num_proc, max_docs)
    if name == "stdlib":
        return load_files(stdlib_files()[:max_docs])  # one document per file
    if "text_split" in source:
        [path] = source["files"]
        ds = load_split_text(path, source["text_split"]["min_chars"])
    else:
        ds = load_files(source["files"])
    return ds.select(range(min(max_docs, len(ds)))) if max_docs else ds


def _load_hub(dataset_id, revision, num_proc, max_docs):
    if max_docs:  # a quick look at a huge corpus: stream the first documents instead of downloading it all
        stream = datasets.load_dataset(dataset_id, revision=revision, split="train", streaming=True)
        return datasets.Dataset.from_list(list(stream.select_columns(["text"]).take(max_docs)))
    ds = datasets.load_dataset(
        dataset_id, revision=revision, split="train", cache_dir=hf_cache_dir(), num_proc=num_proc
    )
    return _text_only(ds, dataset_id)


def _builder(path):
    try:
        return BUILDERS[path.suffix.lower()]
    except KeyError:
        raise InputError(f"{path}: unsupported file type; use {', '.join(BUILDERS)}") from None


def _text_only(ds, origin):
    """`origin`: a name, or the paths the documents were read from (named in the error)."""
    if "text" not in ds.column_names:
        if not isinstance(origin, str):
            origin = ", ".join(map(str, origin))
        raise InputError(f"{origin}: documents need a 'text' field; found {ds.column_names}")
    return ds.select_columns(["text"])
