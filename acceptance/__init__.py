"""python -m acceptance: the GPU acceptance check, the first command to run on a machine with GPUs.

One command, bounded by --budget (15 minutes; expected about 7 on one H100 from the FLOP counts and compile
times, not yet timed on one), that exercises what training on GPUs uses and ends with a verdict table: PASS,
FAIL or SKIP for each check, with what it found. The exit code is 0 only if no check failed (a skipped check
does not fail it). Each step says what it runs; the runs' logs stay in --out.

  device        CUDA is visible: every GPU's name, memory, bf16 support and bf16 peak (perf.PEAK_BF16); a bf16
                autocast matmul on each agrees with float32; NCCL is available
  data          the offline corpus in GPT-2 tokens (python -m data.prepare stdlib --tokenizer gpt2): tiktoken
                and the GPT-2 ranks shipped in data/gpt2.tiktoken, no network
  optimizer     the base model and its optimizer as train.py builds them on the GPU: AdamW is fused, Muon's
                Newton-Schulz runs in bfloat16 and batched; one training step under bf16 autocast
                (trainer.step.train_step) is finite and moves every parameter; bf16 Newton-Schulz agrees with
                float32 on a gradient, and the batched iteration over every matrix of a shape with the per-matrix one
  optimizers    every optimizer of optim/registry.py, 8 steps at the base shape (micro-batch 30, compiled per
                block, bf16) on one fixed batch, refresh intervals at 2 (acceptance/optimizers.py): its loss falls,
                nothing compiles after the first step, its peak memory is within 1.5 x
                experiments.cost.peak_memory_gib
  split         every matrix optimizer split across the GPUs (optim/split.py, NCCL) against every rank stepping
                every matrix, 3 steps on the same gradients (acceptance/split.py): the weights differ by at most
                1% of the largest update (cuBLAS may pick other kernels for an owner's smaller stack; on CPU they
                are equal bit for bit). SKIP with one GPU
  train         python train.py configs/owt_base.yaml (the paper's base shape n=256, L=4, seq 1024, its
                micro-batch 30, torch.compile, bf16 autocast) for 60 steps of 8 x 30 sequences (245,760
                tokens; 8 x 30 over the GPUs there are) on the stdlib corpus: status done, finite loss, falling
                by at least 1 nat, finite validation loss
  throughput    that run's tokens/s and MFU (its metrics.jsonl; the compiling first step is left out) against the
                FLOP count (perf.train_flops_per_token): 40% MFU would be 0.4 x peak / FLOPs per token; FAIL
                below --min-mfu (5%)
  ddp           the same run under torchrun over every visible GPU (NCCL), with activation checkpointing (so
                recomputed blocks run compiled and under DDP): done on every rank, and the same losses as the
                one-GPU run (within 0.05); tokens/s and scaling. SKIP with one GPU
  recompiles    those runs compiled their model once, evaluations in between included: no "Recompiling
                function" under TORCH_LOGS=recompiles (the DDP run's checkpointed blocks included)
  memory-width  peak GPU memory (torch.cuda.max_memory_allocated) of training steps (train_step: forward,
  memory-depth  backward, clip, optimizer step; eager, bf16 autocast) at the largest shapes of
                configs/sweeps/width.yaml (n=4096, L=4, micro-batch 15) and depth.yaml (n=256, L=256,
                micro-batch 10), seq 1024, vocab 50304, on one GPU, against experiments.cost.peak_memory_gib:
                FAIL on out-of-memory, above experiments.cost.CARD_GIB (71 GiB, an 80 GB card less 10%) or above
                1.5 x the estimate the micro-batches are sized with; also forward+backward tokens/s and MFU there

--smoke runs the same checks on CPU, where the CPU can: device cpu (bf16 autocast matmul, gloo), the byte
tokenizer's corpus, a tiny model (n=64, L=2, seq 64, 12 steps) with bf16 autocast, torch.compile (inductor
on CPU) and bfloat16 batched Newton-Schulz, every optimizer for 6 steps, DDP and the split as torchrun with 2
gloo processes (the split bit for bit), and the memory steps at tiny shapes derived from the same sweep files
(peak bytes from torch.profiler). tests/test_acceptance.py runs it.

It is a check of a machine, not a benchmark: its numbers are verdicts against thresholds. checks.py holds
the checks, verdicts.py what they conclude from the runs' records (plain functions, tested without running
anything), memory.py the memory worker (a process of its own, for a clean peak).

    python -m acceptance                      # on a GPU machine: all checks, at most 15 minutes
    python -m acceptance --smoke              # on CPU: the same code at tiny shapes, 2-3 minutes
    python -m acceptance --only device,train  # some checks (throughput and recompiles read train's run)
"""
