"""The GPU code paths, exercised on CPU where torch allows: bf16 autocast and torch.compile (inductor); the
device peak table and the FLOP count behind MFU; Muon's Newton-Schulz batched over same-shape matrices."""

import pytest

from tests.conftest import losses, run_inprocess


def test_bf16_autocast_trains_close_to_fp32(tmp_path, tiny_corpus):
    fp32 = run_inprocess(tmp_path / "fp32", tiny_corpus)
    bf16 = run_inprocess(tmp_path / "bf16", tiny_corpus, **{"train.dtype": "bfloat16"})
    assert bf16["status"] == "done"
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a != b  # autocast really ran in bf16
    assert all(abs(a[s] - b[s]) < 0.1 for s in a)
    assert abs(fp32["final_val_loss"] - bf16["final_val_loss"]) < 0.1


def test_compiled_model_matches_eager(tmp_path, tiny_corpus):
    pytest.importorskip("torch._inductor")
    run_inprocess(tmp_path / "eager", tiny_corpus, **{"train.max_iters": 3})
    run_inprocess(tmp_path / "compiled", tiny_corpus, **{"train.max_iters": 3, "train.compile": True})
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-3 for s in a)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM5
    ("NVIDIA H100 SXM5 80GB", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA GeForce RTX 4090", 165e12),
    ("NVIDIA GeForce GTX 1080", None),  # unknown: no MFU rather than a wrong one
])
def test_peak_flops_by_device_name(monkeypatch, name, peak):
    import torch

    import perf

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert perf.peak_flops(torch.device("cuda", 0)) == peak
    assert perf.peak_flops(torch.device("cpu")) is None


def test_flops_per_token_is_model_flops():
    """Counted on the full logits and without recomputation: activation checkpointing and the chunked loss
    do not change the number, and it is 6 x matmul parameters (head included) + attention per token."""
    import torch

    import perf
    from config import load_config
    from model import GPT

    overrides = {"model.n_embd": 128, "model.n_layer": 2, "model.head_dim": 32, "model.block_size": 64,
                 "model.vocab_size": 512}
    counts = []
    for ckpt in (False, True):
        cfg = load_config(None, overrides | {"model.activation_checkpointing": ckpt})
        with torch.device("meta"):
            counts.append(perf.train_flops_per_token(GPT(cfg.model)))
    n, L, T, V = 128, 2, 64, 512
    matmuls = 6 * (12 * n * n * L + n * V)
    attention = 12 * L * n * T  # SDPA, causal mask not discounted: 2 matmuls of (T x n) by (n x T), x3 with backward
    assert counts[0] == counts[1] == matmuls + attention


def test_flops_are_counted_without_a_copy_of_the_model():
    """On the meta device from the model's config: nothing of the live model's size is allocated (a copy was)."""
    import perf
    from bench.memory import peak_bytes
    from model import GPT
    from tests.conftest import tiny

    model = GPT(tiny(**{"model.n_embd": 256, "model.head_dim": 64}).model)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    counted = []
    assert peak_bytes(lambda: counted.append(perf.train_flops_per_token(model))) < size / 100
    assert counted[0] > 6 * size / 4  # and it counted the model: 6 FLOPs per parameter and token, and more


def hidden_shapes(n=64, L=3):
    """A model's Muon matrices, in model order: q, k, v, o, fc (tall), proj (wide) of every block, plus an odd
    shape that has no partner (a stack of one)."""
    return [s for _ in range(L) for s in [(n, n)] * 4 + [(4 * n, n), (n, 4 * n)]] + [(n, 24)]


def muon_run(shapes, steps=3, **kw):
    """Parameters and momentum buffers after `steps` Muon steps on fixed random gradients, with two groups of
    different lr, weight decay and lr adjustment."""
    import torch

    from optim.muon import Muon

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    half = len(params) // 2
    opt = Muon([{"params": params[:half]},
                {"params": params[half:], "lr": 0.03, "weight_decay": 0.0, "adjust_lr_fn": "original"}],
               lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in params] + [opt.state[p]["momentum_buffer"] for p in params]


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_step_is_the_per_matrix_step(monkeypatch, nesterov):
    """Everything but the matmuls, bit for bit: momentum, Nesterov, weight decay, per-shape lr, groups. The
    iteration is replaced by the same elementwise map in both paths, so only the step around it is compared;
    the stacks are those of the model's shapes (q, k, v, o together, fc, proj, and a lone matrix)."""
    import torch

    from optim import muon

    def fake(g, coefficients, steps, eps, dtype):
        return (g.to(dtype) * coefficients[0] + eps).sin() / steps

    stacks = []

    def fake_batched(g, *args):
        stacks.append(tuple(g.shape))
        return fake(g, *args)

    monkeypatch.setattr(muon, "newton_schulz", fake)
    monkeypatch.setattr(muon, "newton_schulz_batched", fake_batched)
    shapes = hidden_shapes()
    for dtype in (torch.float32, torch.bfloat16):
        per_matrix = muon_run(shapes, nesterov=nesterov, ns_dtype=dtype)
        stacks.clear()
        batched = muon_run(shapes, nesterov=nesterov, ns_dtype=dtype, ns_batched=True)
        assert all(torch.equal(a, b) for a, b in zip(per_matrix, batched))
        assert sorted(stacks) == sorted([(12, 64, 64), (3, 256, 64), (3, 64, 256)] * 3)  # across groups


def test_batched_muon_stacks_are_bounded(monkeypatch):
    """No stack holds more than MAX_STACK_ELEMENTS: the 8 square matrices of two blocks go as 3 + 3 + 2, a
    matrix above the bound alone through the per-matrix iteration; the result is the per-matrix step's."""
    import torch

    from optim import muon, registry

    stacks, singles = [], []
    batched_ns, single_ns = muon.newton_schulz_batched, muon.newton_schulz
    monkeypatch.setattr(muon, "newton_schulz_batched", lambda g, *a: stacks.append(tuple(g.shape)) or batched_ns(g, *a))
    monkeypatch.setattr(muon, "newton_schulz", lambda g, *a: singles.append(tuple(g.shape)) or single_ns(g, *a))
    monkeypatch.setattr(registry, "MAX_STACK_ELEMENTS", 3 * 64 * 64)
    shapes, steps = hidden_shapes(L=2), 3
    per_matrix = muon_run(shapes, steps, ns_dtype=torch.float32)
    singles.clear()
    batched = muon_run(shapes, steps, ns_dtype=torch.float32, ns_batched=True)
    assert sorted(stacks) == sorted([(3, 64, 64), (3, 64, 64), (2, 64, 64)] * steps)
    assert sorted(singles) == sorted([(256, 64), (256, 64), (64, 256), (64, 256), (64, 24)] * steps)
    for a, b in zip(per_matrix, batched):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_newton_schulz_matches_per_matrix(dtype):
    """On one thread the batched iteration gives the per-matrix result bit for bit on this repo's CPUs (MKL);
    with more threads a BLAS may split a batch and a single matrix differently: then within rounding."""
    import torch

    from optim.muon import newton_schulz, newton_schulz_batched

    dtype = getattr(torch, dtype)
    coefficients, threads = (3.4445, -4.7750, 2.0315), torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for shape in [(64, 64), (256, 64), (64, 256), (128, 128)]:
                g = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
                ref = torch.stack([newton_schulz(m, coefficients, 5, 1e-7, dtype) for m in g])
                out = newton_schulz_batched(g, coefficients, 5, 1e-7, dtype)
                if n_threads == 1 and torch.backends.mkl.is_available():
                    assert torch.equal(out, ref), shape
                tol = 1e-5 if dtype == torch.float32 else 2**-7  # float32 rounding; one bf16 rounding
                torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=tol)
    finally:
        torch.set_num_threads(threads)


def test_batched_muon_step_makes_as_many_operator_calls_at_any_depth():
    """What a GPU launches: the batched step's calls are per stack of same-shape matrices (and per param group), so
    they do not grow with depth; the per-matrix step's grow with the matrices (~26 each)."""
    from bench.op_count import second_step_calls, setup

    def calls(L, batched):
        muon = setup("muon_kimi", 32, L, batched, fused=True).optimizers["muon_kimi"]
        return sum(second_step_calls(muon.step).values())

    per_matrix = calls(16, False)
    assert per_matrix > 25 * 6 * 16
    assert calls(4, True) == calls(16, True) < per_matrix / 10
