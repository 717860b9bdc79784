"""Benchmarks that print a table and append their numbers to bench/results.jsonl (not part of pytest).

    python -m bench.peer        this repo's GPT vs transformers' GPT2LMHeadModel, step time and memory (CPU)
    python -m bench.overhead    muP vs SP; Muon-Kimi vs AdamW and its Newton-Schulz FLOPs; NS dtype
    python -m bench.prepare     data.prepare tokens/s vs a bare tiktoken loop
    python -m bench.gpu         tokens/s and MFU with bf16 + torch.compile (skips without CUDA)
    python -m bench.memory      chunked loss and activation checkpointing: peak bytes (CPU); GPU memory per run
    python -m bench.ns_batch    Muon's Newton-Schulz per matrix vs batched over same-shape matrices (CPU)

`transformers` is a benchmark-only extra (pyproject's `bench` extra): pip install transformers.
"""
