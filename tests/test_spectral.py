"""Spectral diagnostics against SVDs computed here, with each operator's orientation and multiplier written
out by hand (embeddings map one-hot -> h, so their operator is the transpose of the stored matrix)."""

import math

import pytest
import torch

from config import load_config
from mup import spectral
from mup.scaling import build_model, multipliers
from optim.hybrid import build_optimizer


def sigma_max(W):
    return torch.linalg.svdvals(W.double())[0].item()


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12), (3, 64, 24)])
def test_rms_norm_op_is_scaled_spectral_norm(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out, inp = shape[-2:]
    got = spectral.rms_norm_op(W).reshape(-1)
    want = [sigma_max(m) * math.sqrt(inp / out) for m in W.reshape(-1, out, inp)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_power_iteration_on_a_large_matrix(monkeypatch):
    """Above EXACT_MAX_NUMEL no SVD runs; power iteration lands within 1% of it, from below."""
    W = torch.randn(1024, 1100, generator=torch.Generator().manual_seed(0))
    assert W.numel() > spectral.EXACT_MAX_NUMEL
    want = sigma_max(W) * math.sqrt(1100 / 1024)

    def no_svd(*args, **kwargs):
        raise AssertionError("exact SVD on a large matrix")

    monkeypatch.setattr(torch.linalg, "matrix_norm", no_svd)
    got = spectral.rms_norm_op(W).item()
    assert want * 0.99 < got <= want * (1 + 1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_report_matches_hand_computation(tie):
    # muP away from the base shape, so that every multiplier differs from 1: r_n = 2, r_L = 2
    cfg = load_config(None, {"model.n_embd": 32, "model.n_layer": 2, "model.head_dim": 16, "model.block_size": 16,
                             "model.vocab_size": 64, "model.tie_embeddings": tie, "scaling.base_width": 16,
                             "scaling.base_depth": 1, "train.device": "cpu", "optim.lr": 0.01})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    x = torch.randint(64, (4, 16))
    model(x, x.roll(-1, 1))[1].backward()
    before = spectral.snapshot(model, table)
    opt.step()
    rng = torch.get_rng_state()
    got = spectral.report(model, table, before)
    assert torch.equal(torch.get_rng_state(), rng)  # diagnostics leave the training RNG alone

    alpha = multipliers(cfg)
    params = dict(model.named_parameters())
    weights, deltas = {}, {}
    io = {}  # input layers: the largest RMS of a token's vector; the head: sqrt(n) x its largest row norm
    for name in ("embed.wte", "embed.wpe"):
        W, W0 = params[f"{name}.weight"].detach(), before[f"{name}.weight"]
        io[name] = {what: max(row.norm().item() for row in M) / math.sqrt(32) for what, M in (("W", W), ("dW", W - W0))}
    head_name = "embed.wte.weight" if tie else "head.weight"  # vocab x n, as nn.Linear
    W, W0 = params[head_name].detach(), before[head_name]
    io["head"] = {what: max(row.norm().item() for row in M) * math.sqrt(32) for what, M in (("W", W), ("dW", W - W0))}
    for i in range(2):
        for m, (rows, cols) in {"attn.q": (32, 32), "attn.k": (32, 32), "attn.v": (32, 32), "attn.o": (32, 32),
                                "mlp.fc": (128, 32), "mlp.proj": (32, 128)}.items():
            name = f"blocks.{i}.{m}"
            W, W0 = params[f"{name}.weight"].detach(), before[f"{name}.weight"]
            weights[name] = sigma_max(W) * math.sqrt(cols / rows)
            deltas[name] = sigma_max(W - W0) * math.sqrt(cols / rows)

    want = {}
    for name in weights:
        want[f"spec/{name}/W"], want[f"spec/{name}/dW"] = weights[name], deltas[name]
    for name, a, norm in (("embed.wte", alpha["alpha_in"], "1toR"), ("embed.wpe", alpha["alpha_in"], "1toR"),
                          ("head", alpha["alpha_out"], "Rtoinf")):
        for what in ("W", "dW"):
            want[f"spec/{name}/{what}_{norm}"] = io[name][what]
            want[f"spec/{name}/alpha_{what}_{norm}"] = a * io[name][what]
    branches = (("attn", ("v", "o"), alpha["alpha_attn"]), ("mlp", ("fc", "proj"), alpha["alpha_mlp"]))
    for i in range(2):
        for branch, (w1, w2), a in branches:
            p = f"blocks.{i}.{branch}"
            W1, W2, dW1, dW2 = (d[f"{p}.{w}"] for d, w in ((weights, w1), (weights, w2), (deltas, w1), (deltas, w2)))
            want[f"spec/{p}/alpha_W2_W1"] = a * W2 * W1
            want[f"spec/{p}/alpha_dW2_W1"] = a * dW2 * W1
            want[f"spec/{p}/alpha_W2_dW1"] = a * W2 * dW1
            want[f"spec/{p}/alpha_dW2_dW1"] = a * dW2 * dW1

    assert alpha["alpha_attn"] == 0.5 and alpha["alpha_out"] == 0.5
    assert all(v > 0 for k, v in want.items() if "/dW" in k or "_dW" in k)  # the step moved every matrix
    assert got.keys() == want.keys()
    assert got == pytest.approx(want, rel=1e-4)


def test_input_and_output_norms_stay_flat_with_width_when_vocab_is_large():
    """Exact muP, vocabulary 64x the base width: alpha x the embedding's and the untied head's norms move by
    under 1.5x from n = 32 to 256 at init (a max over 2048 tokens: its finite-n excess shrinks ~1/sqrt(n)),
    where the RMS operator norm of the embedding (~ sqrt(vocab / n) when vocab >> n) falls by over 2x."""
    flat, rms_op = {}, {}
    for n in (32, 64, 128, 256):
        cfg = load_config(None, {"model.n_embd": n, "model.n_layer": 2, "model.head_dim": 16, "model.block_size": 16,
                                 "model.vocab_size": 2048, "model.tie_embeddings": False, "scaling.base_width": 32,
                                 "train.device": "cpu"})
        torch.manual_seed(0)
        model, table = build_model(cfg)
        got = spectral.report(model, table, spectral.snapshot(model, table))
        flat[n] = got["spec/embed.wte/alpha_W_1toR"], got["spec/head/alpha_W_Rtoinf"]
        rms_op[n] = spectral.rms_norm_op(model.embed.wte.weight.detach().T).item()
    for i in range(2):
        values = [v[i] for v in flat.values()]
        assert max(values) / min(values) < 1.5 and values == sorted(values, reverse=True)  # settling, not drifting
    assert rms_op[32] / rms_op[256] > 2  # ~ sqrt(vocab / n): 8.0 at n = 32, 3.5 at 256
