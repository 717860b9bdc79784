"""The hybrid optimizer: Muon-Kimi update scale, agreement with torch.optim.Muon, groups, schedule,
state round trip."""

import math

import pytest
import torch

from config import load_config
from mup.scaling import build_model
from optim.hybrid import build_optimizer
from optim.muon import Muon, newton_schulz
from optim.schedule import lr_factor
from tests.conftest import tiny, tokens


@pytest.mark.parametrize("shape", [(128, 128), (512, 128), (128, 512)])
def test_muon_kimi_update_rms(shape):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape))
    opt = Muon([w], lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)
    w.grad = torch.randn(shape)
    before = w.detach().clone()
    opt.step()
    rms = (w.detach() - before).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.2 * 0.01, rel=0.15)


def test_matches_torch_muon_in_bf16_and_float32_is_close():
    torch.manual_seed(0)
    shapes = [(64, 64), (256, 64), (64, 256)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    f32 = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    opts = [Muon(ours, ns_dtype=torch.bfloat16, **kw), torch.optim.Muon(ref, **kw),
            Muon(f32, ns_dtype=torch.float32, **kw)]
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in zip((ours, ref, f32), opts):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, c in zip(ours, ref, f32):
        assert torch.equal(a, b)
        delta_ref = b.detach() - c.detach()
        assert delta_ref.abs().max() < 0.05 * 0.02 * 0.2 * math.sqrt(256) * 3


def test_newton_schulz_orthogonalizes():
    g = torch.randn(96, 48)
    x = newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and s.min() > 0.5 and s.max() < 1.3  # quintic NS: S' ~ U(0.5, 1.5)


def test_groups_follow_table_and_claim_every_parameter():
    cfg = tiny(**{"model.n_embd": 128, "model.head_dim": 32, "model.n_layer": 8})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    assert set(opt.optimizers) == {"muon_kimi", "adamw"}
    by_id = {}
    for name, o in opt.optimizers.items():
        for g in o.param_groups:
            for n, p in zip(g["names"], g["params"]):
                assert id(p) not in by_id, n
                by_id[id(p)] = (name, g["lr"], g["weight_decay"], g["eps"] if name == "adamw" else None)
    params = dict(model.named_parameters())
    assert len(by_id) == len(params)
    for t in table:
        assert by_id[id(params[t.name])] == (t.optimizer, t.lr, t.weight_decay, t.eps)


def test_unclaimed_parameter_is_named():
    cfg = tiny()
    model, table = build_model(cfg)
    with pytest.raises(ValueError, match="blocks.0.attn.q.weight"):
        build_optimizer(cfg, model, [t for t in table if t.name != "blocks.0.attn.q.weight"])


def test_schedule_warmup_cosine_floor():
    o = load_config(None, {"optim.lr": 0.01, "optim.warmup_iters": 10, "optim.min_lr": 1e-3}).optim
    assert lr_factor(0, o, 110) == pytest.approx(0.1)
    assert lr_factor(9, o, 110) == pytest.approx(1.0)
    assert lr_factor(10, o, 110) == pytest.approx(1.0)
    assert lr_factor(60, o, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, o, 110) == pytest.approx(0.1)
    o2 = load_config(None, {"optim.min_lr": 0.0, "optim.schedule": "constant", "optim.warmup_iters": 0}).optim
    assert lr_factor(5, o2, 10) == 1.0


def test_schedule_keeps_group_ratios():
    cfg = tiny(**{"model.n_embd": 128, "model.head_dim": 32})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    opt.set_lr_factor(0.25)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.25 * g["base_lr"])


def _train(model, opt, steps, cfg, start=0):
    losses = []
    for s in range(start, start + steps):
        x = tokens(cfg, seed=s)
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", ["muon_kimi", "muon", "adamw", "sgd"])
def test_state_dict_round_trip_continues_identically(family, tmp_path):
    cfg = tiny(**{"optim.name": family})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    _train(model, opt, 3, cfg)
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ck.pt")
    expected = _train(model, opt, 3, cfg, start=3)

    model2, table2 = build_model(cfg)
    opt2 = build_optimizer(cfg, model2, table2)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optim"])
    assert _train(model2, opt2, 3, cfg, start=3) == expected
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n


def test_ns_batched_key_reaches_muon_and_matches_the_per_matrix_step():
    from mup.scaling import build_model
    from optim.hybrid import build_optimizer

    after = {}
    for batched in (False, True):
        cfg = tiny(**{"optim.ns_batched": batched, "model.n_layer": 3})
        torch.manual_seed(0)
        model, table = build_model(cfg)
        opt = build_optimizer(cfg, model, table)
        assert opt.optimizers["muon_kimi"].ns_batched is batched
        x = tokens(cfg)
        model(x, x)[1].backward()
        opt.step()
        after[batched] = {k: v.clone() for k, v in model.state_dict().items()}
    for k in after[False]:
        torch.testing.assert_close(after[True][k], after[False][k], rtol=0, atol=1e-6)
