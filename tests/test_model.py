"""The model applies the multipliers it is handed, where docs/SPEC-mup.md says."""

import pytest
import torch

from config import load_config
from model import GPT
from mup.scaling import build_model

TINY = {"model.n_embd": 64, "model.head_dim": 16, "model.n_layer": 2, "model.block_size": 16,
        "model.vocab_size": 64, "data.tokenizer": "bytes"}


def tiny(**extra):
    return load_config(None, {**TINY, **extra})


def tokens(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.model.vocab_size, (B, cfg.model.block_size), generator=g)


def copy_of(model, cfg, **alphas):
    other = GPT(cfg.model, **{"alpha_in": 1.0, "alpha_attn": 1.0, "alpha_mlp": 1.0, "alpha_out": 1.0, **alphas})
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_logits_scale_with_alpha_out():
    cfg = tiny()
    model, _ = build_model(cfg)
    x = tokens(cfg)
    a, _ = copy_of(model, cfg)(x)
    b, _ = copy_of(model, cfg, alpha_out=3.0)(x)
    torch.testing.assert_close(b, 3.0 * a)


@pytest.mark.parametrize("norm", ["layernorm", "none"])
def test_zero_branch_multipliers_reduce_to_embedding_norm_head(norm):
    cfg = tiny(**{"model.norm": norm})
    model, _ = build_model(cfg)
    x = tokens(cfg)
    m = copy_of(model, cfg, alpha_attn=0.0, alpha_mlp=0.0, alpha_in=0.5)
    logits, _ = m(x)
    h0 = 0.5 * (m.embed.wte(x) + m.embed.wpe(torch.arange(x.shape[1])))
    torch.testing.assert_close(logits, m.ln_f(h0) @ m.embed.wte.weight.T)
    full, _ = copy_of(model, cfg, alpha_in=0.5)(x)
    assert not torch.allclose(full, logits)  # the branches do contribute when switched on


def test_branch_multiplier_scales_residual_update():
    cfg = tiny(**{"model.n_layer": 1})
    model, _ = build_model(cfg)
    h = torch.randn(2, cfg.model.block_size, cfg.model.n_embd)
    block = copy_of(model, cfg, alpha_mlp=0.0).blocks[0]
    attn_only = block(h) - h
    block.alpha_attn = 2.0
    torch.testing.assert_close(block(h) - h, 2.0 * attn_only)


def test_causal():
    cfg = tiny()
    model, _ = build_model(cfg)
    model.eval()
    x = tokens(cfg)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % cfg.model.vocab_size
    torch.testing.assert_close(model(x)[0][:, :-1], model(y)[0][:, :-1])


def test_qkv_separate_and_tied_head():
    cfg = tiny()
    model, table = build_model(cfg)
    names = {t.name for t in table}
    assert {"blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight"} <= names
    assert model.head.weight is model.embed.wte.weight and "head.weight" not in names
    untied, table = build_model(tiny(**{"model.tie_embeddings": False}))
    assert untied.head.weight is not untied.embed.wte.weight and "head.weight" in {t.name for t in table}


def test_options_bias_and_norm():
    _, table = build_model(tiny(**{"model.bias": False, "model.norm": "none"}))
    assert {t.role for t in table} == {"hidden", "input"}


def test_init_follows_table():
    cfg = tiny(**{"model.n_embd": 256, "model.head_dim": 32, "scaling.base_width": 64, "model.vocab_size": 2048})
    model, table = build_model(cfg)
    params = dict(model.named_parameters())
    for t in table:
        p = params[t.name]
        if t.init_std is not None:
            assert p.std().item() == pytest.approx(t.init_std, rel=0.05), t.name
        elif t.name.endswith("ln_1.weight"):
            assert torch.all(p == 1)
        else:
            assert torch.all(p == 0) or t.name.endswith(".weight")
    q = next(t for t in table if t.name == "blocks.0.attn.q.weight")
    assert q.init_std == pytest.approx(0.02 / 2)  # sigma^2 / r_n with r_n = 4


def test_attn_scale_option_changes_output():
    cfg = tiny()
    model, _ = build_model(cfg)
    x = tokens(cfg)
    other = GPT(tiny(**{"model.attn_scale": "linear"}).model)
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model.eval()(x)[0], other.eval()(x)[0])
    assert other.blocks[0].attn.scale == pytest.approx(1 / 16)
