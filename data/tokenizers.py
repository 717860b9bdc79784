"""Tokenizers: GPT-2's BPE (through tiktoken) and raw UTF-8 bytes.

Both expose the same small interface (name, vocab_size, eot, encode_batch(texts, threads) -> numpy arrays,
decode), so data.prepare does not care which one it runs. Text is encoded "ordinarily": a literal "<|endoftext|>" inside
a document is plain text, and the only EOT tokens in a prepared corpus are the ones data.prepare puts
between documents.
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiktoken

# sha256 of GPT-2's merge ranks in .tiktoken form (tiktoken ships the same hash for r50k_base), so a
# wrong or damaged offline file fails loudly instead of producing a silently different tokenization.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT = 50256

TOKENIZERS = ("gpt2", "bytes")


class GPT2:
    """GPT-2's tokenizer: 50,257 ids, EOT = <|endoftext|> = 50256.

    `ranks_file` (a .tiktoken file) builds the encoding offline; without one, tiktoken downloads the
    vocabulary on first use.
    """

    name = "gpt2"

    def __init__(self, ranks_file=None):
        if ranks_file:
            from tiktoken.load import load_tiktoken_bpe
            from tiktoken_ext.openai_public import r50k_pat_str

            ranks = load_tiktoken_bpe(str(ranks_file), expected_hash=GPT2_RANKS_SHA256)
            self.enc = tiktoken.Encoding(
                name="gpt2",
                pat_str=r50k_pat_str,
                mergeable_ranks=ranks,
                special_tokens={"<|endoftext|>": GPT2_EOT},
                explicit_n_vocab=GPT2_EOT + 1,
            )
        else:
            try:
                self.enc = tiktoken.get_encoding("gpt2")
            except OSError as e:  # requests' network errors are OSErrors
                raise RuntimeError(
                    "could not download GPT-2's vocabulary; offline, point $GPT2_TIKTOKEN_FILE (or --ranks-file) "
                    "at a gpt2.tiktoken file"
                ) from e
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
    """The tokenizer called `name`; for gpt2, `ranks_file` or $GPT2_TIKTOKEN_FILE selects an offline file."""
    if name == "gpt2":
        ranks_file = ranks_file or os.environ.get("GPT2_TIKTOKEN_FILE")
        return _gpt2(str(ranks_file) if ranks_file else None)
    if name == "bytes":
        return Bytes()
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")


@functools.cache
def _gpt2(ranks_file):
    # Cached: building the BPE tables takes a while and data.prepare asks for the tokenizer per batch.
    return GPT2(ranks_file)
