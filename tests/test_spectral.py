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
    for name in ("embed.wte", "embed.wpe"):  # stored (rows, n); the operator is n x rows
        W, W0 = params[f"{name}.weight"].detach(), before[f"{name}.weight"]
        weights[name] = sigma_max(W) * math.sqrt(W.shape[0] / W.shape[1])
        deltas[name] = sigma_max(W - W0) * math.sqrt(W.shape[0] / W.shape[1])
    head_name = "embed.wte.weight" if tie else "head.weight"  # vocab x n, as nn.Linear
    W, W0 = params[head_name].detach(), before[head_name]
    weights["head"] = sigma_max(W) * math.sqrt(32 / 64)
    deltas["head"] = sigma_max(W - W0) * math.sqrt(32 / 64)
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
    for name, a in (("embed.wte", alpha["alpha_in"]), ("embed.wpe", alpha["alpha_in"]), ("head", alpha["alpha_out"])):
        want[f"spec/{name}/alpha_W"], want[f"spec/{name}/alpha_dW"] = a * weights[name], a * deltas[name]
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
