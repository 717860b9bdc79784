"""Tokenizers: GPT-2's BPE (through tiktoken) and raw UTF-8 bytes.

GPT-2's merge ranks ship with the repository (data/gpt2.tiktoken, see data/README.md), so the GPT-2
tokenizer never touches the network: an explicit ranks file, else $GPT2_TIKTOKEN_FILE, else the shipped file.

Both expose the same small interface (name, vocab_size, eot, encode_batch(texts, threads) -> numpy arrays,
decode), so data.prepare does not care which one it runs. Text is encoded "ordinarily": a literal "<|endoftext|>" inside
a document is plain text, and the only EOT tokens in a prepared corpus are the ones data.prepare puts
between documents.
"""

import base64
import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tiktoken

# sha256 of GPT-2's merge ranks in .tiktoken form (tiktoken ships the same hash for r50k_base), so a
# wrong or damaged ranks file fails loudly instead of producing a silently different tokenization.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_RANKS_FILE = Path(__file__).resolve().parent / "gpt2.tiktoken"  # shipped with the repository
GPT2_EOT = 50256

TOKENIZERS = ("gpt2", "bytes")


class GPT2:
    """GPT-2's tokenizer: 50,257 ids, EOT = <|endoftext|> = 50256, built from a .tiktoken ranks file
    (default: the shipped data/gpt2.tiktoken) whose sha256 must be GPT-2's. Nothing is downloaded."""

    name = "gpt2"

    def __init__(self, ranks_file=None):
        from tiktoken_ext.openai_public import r50k_pat_str

        self.ranks_file = Path(ranks_file).expanduser() if ranks_file else GPT2_RANKS_FILE
        self.enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=load_ranks(self.ranks_file),
            special_tokens={"<|endoftext|>": GPT2_EOT},
            explicit_n_vocab=GPT2_EOT + 1,
        )
        self.vocab_size = self.enc.n_vocab
        self.eot = self.enc.eot_token

    def encode_batch(self, texts, threads=1):
        """Each text's ids as a numpy array, over `threads` threads (tiktoken releases the GIL).

        tiktoken's batch encoder returns Python int lists, whose conversion costs data.prepare about a third
        of the encoding itself; its numpy encoder skips them but has no batch form, hence the thread pool.
        `disallowed_special=()` with no allowed specials encodes exactly as encode_ordinary (tested)."""
        if threads == 1:
            return [self._encode(text) for text in texts]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self._encode, texts))

    def _encode(self, text):
        return self.enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids):
        return self.enc.decode(list(ids))


def load_ranks(path):
    """GPT-2's merge ranks from a local .tiktoken file (base64 token, space, rank per line), checked against
    GPT2_RANKS_SHA256. Read here rather than by tiktoken.load.load_tiktoken_bpe, which would also fetch a URL
    and copy the file into its cache."""
    try:
        contents = Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read GPT-2's ranks file {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(contents).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise ValueError(
            f"{path} is not GPT-2's ranks file: its sha256 hash is {digest}, expected {GPT2_RANKS_SHA256} "
            "(a damaged copy? data/README.md says where the file comes from)"
        )
    lines = (line.split() for line in contents.splitlines() if line)
    return {base64.b64decode(token): int(rank) for token, rank in lines}


class Bytes:
    """UTF-8 bytes, vocab 256, for tiny runs that should not depend on any vocabulary file.

    EOT is 0, the NUL byte: it does not occur in natural-language or source-code corpora (the stdlib
    corpus is checked to contain none), so it is free to mark document boundaries. A NUL inside a
    document would read as a boundary.
    """

    name = "bytes"
    vocab_size = 256
    eot = 0

    def encode_batch(self, texts, threads=1):
        """Each text's UTF-8 bytes as a numpy array; `threads` is unused (a memory copy, nothing to spread)."""
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def get_tokenizer(name, ranks_file=None):
    """The tokenizer called `name`; for gpt2, the ranks file is `ranks_file`, else $GPT2_TIKTOKEN_FILE, else
    the shipped data/gpt2.tiktoken."""
    if name == "gpt2":
        ranks_file = ranks_file or os.environ.get("GPT2_TIKTOKEN_FILE") or GPT2_RANKS_FILE
        return _gpt2(str(ranks_file))
    if name == "bytes":
        return Bytes()
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")


@functools.cache
def _gpt2(ranks_file):
    # Cached: building the BPE tables takes a while and data.prepare asks for the tokenizer per batch.
    return GPT2(ranks_file)
