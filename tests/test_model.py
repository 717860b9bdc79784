"""The model applies the multipliers it is handed, where docs/SPEC-mup.md says."""

import pytest
import torch

from model import GPT
from mup.scaling import build_model, multipliers
from tests.conftest import tiny, tokens



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
        elif t.name.endswith(".weight"):  # LayerNorm gains
            assert torch.all(p == 1), t.name
        else:  # biases
            assert torch.all(p == 0), t.name
    assert {t.name.rsplit(".", 1)[1] for t in table if t.init_std is None} == {"weight", "bias"}  # both checked
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


def loss_and_grads(model, x, y, seed=0, autocast=None):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    with autocast or torch.autocast("cpu", enabled=False):
        loss = model(x, y)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model, x, y):
    """Bytes autograd keeps from the forward for the backward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, y)
    return total


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_identical_loss_and_gradients(dropout):
    cfg = tiny(**{"model.dropout": dropout, "model.n_layer": 3})
    model, _ = build_model(cfg)
    ckpt = GPT(tiny(**{"model.dropout": dropout, "model.n_layer": 3, "model.activation_checkpointing": True}).model,
               **multipliers(cfg))
    ckpt.load_state_dict(model.state_dict())
    assert all(b.checkpointing for b in ckpt.blocks) and not any(b.checkpointing for b in model.blocks)
    x, y = tokens(cfg, B=4), tokens(cfg, B=4, seed=1)
    loss, grads = loss_and_grads(model, x, y)
    loss_c, grads_c = loss_and_grads(ckpt, x, y)
    assert torch.equal(loss, loss_c)
    assert all(torch.equal(grads[n], grads_c[n]) for n in grads)
    if dropout:  # the masks really are random: another seed, another loss
        assert not torch.equal(loss, loss_and_grads(model, x, y, seed=1)[0])
    assert saved_bytes(ckpt, x, y) < 0.5 * saved_bytes(model, x, y)  # and the blocks' activations are not kept


def test_activation_checkpointing_only_when_training_with_grad(monkeypatch):
    """Outputs are the same either way, so count what runs: in training each block's attention runs twice
    (forward, then again in backward); in evaluation mode, even with gradients, or without gradients, once,
    and nothing is checkpointed."""
    import model as model_module

    cfg = tiny(**{"model.activation_checkpointing": True})
    model, _ = build_model(cfg)
    x, y = tokens(cfg), tokens(cfg, seed=1)
    forwards, checkpointed = [], []
    for block in model.blocks:
        block.attn.register_forward_hook(lambda m, a, out: forwards.append(1))
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: checkpointed.append(1) or real(*a, **k))

    def count(train: bool, grad: bool) -> tuple[int, int]:
        forwards.clear(), checkpointed.clear()
        model.train(train)
        with torch.set_grad_enabled(grad):
            loss = model(x, y)[1]
            if grad:
                loss.backward()
        return len(forwards), len(checkpointed)

    L = cfg.model.n_layer
    assert count(train=True, grad=True) == (2 * L, L)  # recomputed in backward
    assert count(train=False, grad=True) == (L, 0)
    assert count(train=True, grad=False) == (L, 0)
    assert count(train=False, grad=False) == (L, 0)


def test_hooked_block_fires_once_per_forward_with_checkpointing():
    """The coordinate check hooks every block: recomputation in backward must not call the hook again."""
    cfg = tiny(**{"model.activation_checkpointing": True})
    model, _ = build_model(cfg)
    calls = []
    model.blocks[0].register_forward_hook(lambda m, a, out: calls.append(out.shape))
    model(tokens(cfg), tokens(cfg, seed=1))[1].backward()
    assert len(calls) == 1


def full_logits_loss(model, x, y):
    logits, _ = model(x)
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


@pytest.mark.parametrize("chunk_logits", [2**27, 24 * 512])  # one chunk; chunks of 16 tokens, the last short
def test_chunked_loss_matches_full_logits(monkeypatch, chunk_logits):
    import model as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK_LOGITS", chunk_logits)
    cfg = tiny(**{"model.vocab_size": 512, "model.block_size": 36})
    model, _ = build_model(cfg)
    x, y = tokens(cfg, B=3), tokens(cfg, B=3, seed=1)
    logits, loss = model(x, y)
    assert logits is None
    model.zero_grad()
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = full_logits_loss(model, x, y)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    scale = max(p.grad.abs().max() for p in model.parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-6 * scale, msg=n)


def test_chunked_loss_under_bf16_autocast_is_close():
    cfg = tiny(**{"model.vocab_size": 512})
    model, _ = build_model(cfg)
    x, y = tokens(cfg, B=4), tokens(cfg, B=4, seed=1)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    loss, grads = loss_and_grads(model, x, y, autocast=bf16)
    model.zero_grad()
    with bf16:
        ref = full_logits_loss(model, x, y)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-2 * ref.item()
    g, r = torch.cat([g.flatten() for g in grads.values()]), torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (g - r).norm() < 0.05 * r.norm()


def test_loss_with_targets_is_the_cross_entropy_of_the_logits():
    """With targets the model never builds the logits, yet its loss and gradients are those of the plain
    cross-entropy of the logits it returns without targets."""
    cfg = tiny(**{"model.tie_embeddings": False})
    model, _ = build_model(cfg)
    x, y = tokens(cfg), tokens(cfg, seed=1)
    logits, none = model(x)
    ref = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
    ref_grads = torch.autograd.grad(ref, [model.head.weight, model.blocks[0].attn.q.weight])
    no_logits, loss = model(x, y)
    grads = torch.autograd.grad(loss, [model.head.weight, model.blocks[0].attn.q.weight])
    assert none is None and no_logits is None
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_chunk_rows():
    from model import LOSS_CHUNK_LOGITS, chunk_rows

    assert chunk_rows(2048, 256) == 2048  # byte vocabularies: one chunk
    assert chunk_rows(30 * 1024, 50304) == 2560 == LOSS_CHUNK_LOGITS // 50304 // 128 * 128
    assert chunk_rows(1000, LOSS_CHUNK_LOGITS // 10) == 10
