"""The optimizers added for the paper's recipe (Shampoo, SOAP, SSO, Lion, Sophia), each against its paper's
update computed here by hand in numpy (float64), then at the hybrid's level: exact resume, the LR schedule
keeping each group's muP ratio, the curvature hook, spectral diagnostics."""

import math
import sys

import numpy as np
import pytest
import torch

from config import ConfigError, from_flat, load_config, read_yaml
from mup import spectral
from experiments.coord import split_sweep
from mup.scaling import build_model
from optim import registry
from optim.hybrid import build_optimizer
from optim import shampoo
from optim.shampoo import Shampoo
from optim.sophia import SophiaG
from optim.sso import NS_COEFFICIENTS, SSO
from bench.common import gloo
from tests.conftest import tiny, tokens

NEW = ["shampoo", "soap", "sso", "lion", "sophia"]
MATRIX = {"shampoo", "soap", "sso"}  # hidden matrices; AdamW for the rest


def rand(*shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def run_torch(opt_cls, p0, grads, groups=None, **kwargs):
    """Step a torch optimizer over `grads` from `p0` (one parameter per group spec); returns numpy params."""
    params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in p0]
    specs = groups or [{}] * len(params)
    opt = opt_cls([{"params": [p], **s} for p, s in zip(params, specs)], **kwargs)
    for g_step in grads:
        for p, g in zip(params, g_step):
            p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    return [p.detach().double().numpy() for p in params], opt


# ---- Lion (Chen et al. 2023, Algorithm 2): c = b1 m + (1-b1) g; w -= lr (sign(c) + wd w); m = b2 m + (1-b2) g

def test_lion_matches_the_paper():
    from pytorch_optimizer import Lion

    b1, b2 = 0.9, 0.99
    groups = [{"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.003, "weight_decay": 0.0}]
    p0 = [rand(4, 3, seed=0), rand(5, seed=1)]
    grads = [[rand(4, 3, seed=10 + s), rand(5, seed=20 + s)] for s in range(3)]
    got, _ = run_torch(Lion, p0, grads, groups, betas=(b1, b2))
    for i, spec in enumerate(groups):
        w, m = p0[i].copy(), np.zeros_like(p0[i])
        for g_step in grads:
            g = g_step[i]
            c = b1 * m + (1 - b1) * g
            w = w - spec["lr"] * (np.sign(c) + spec["weight_decay"] * w)
            m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(got[i], w, rtol=1e-6, atol=1e-7)


# ---- SophiaG (Liu et al. 2023, Algorithm 3 with GNB): w -= lr wd w; m = b1 m + (1-b1) g;
#      w -= lr clip(m / max(rho h, eps), clip); h = b2 h + (1-b2) B g_hat^2 after every k-th step

def test_sophia_matches_the_paper():
    b1, b2, rho, clip, eps, lr, wd, B = 0.9, 0.5, 0.04, 0.5, 1e-12, 0.01, 0.1, 8
    p0, g1, g2, g_hat = rand(6, 5, seed=0), rand(6, 5, seed=1), rand(6, 5, seed=2), rand(6, 5, seed=3)
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = SophiaG([p], lr=lr, betas=(b1, b2), rho=rho, clip=clip, eps=eps, weight_decay=wd, hessian_interval=1)
    p.grad = torch.tensor(g1, dtype=torch.float32)
    opt.step()
    p.grad = torch.tensor(g_hat, dtype=torch.float32)
    opt.update_hessian(B)
    p.grad = torch.tensor(g2, dtype=torch.float32)
    opt.step()

    w, m, h = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    ratios = []
    for g in (g1, g2):
        w = w - lr * wd * w
        m = b1 * m + (1 - b1) * g
        ratios.append(m / np.maximum(rho * h, eps))
        w = w - lr * np.clip(ratios[-1], -clip, clip)
        if g is g1:
            h = b2 * h + (1 - b2) * B * g_hat**2
    assert (np.abs(ratios[1]) < clip).any() and (np.abs(ratios[1]) > clip).any()  # both branches of the clip
    np.testing.assert_allclose(p.detach().double().numpy(), w, rtol=1e-5, atol=1e-7)


# ---- Shampoo (Gupta et al. 2018, Algorithm 1): L += G G^T, R += G^T G; w -= lr (L + e I)^-1/4 G (R + e I)^-1/4 with
#      e = eps x the statistic's largest eigenvalue; roots at steps 1, 1 + k, ...; a step with kept roots divided
#      by max(1, its spectral norm)

def inv_root(a, eps):
    s, q = np.linalg.eigh(a)
    s = np.maximum(s, 0)
    return q @ np.diag((s + eps * s[-1]) ** -0.25) @ q.T


@pytest.mark.parametrize("eps", [1e-3, 1e-7], ids=["float32-eigh", "float64-eigh"])
@pytest.mark.parametrize("interval", [1, 2])
def test_shampoo_matches_the_paper(interval, eps):
    lr, wd = 0.02, 0.1
    p0 = rand(5, 3, seed=0)
    g1, g2 = rand(5, 3, seed=1), rand(5, 3, seed=2)
    # step 2 points where step 1's statistics have not looked, step 4 where steps 1-3's have
    grads = [[g1], [g2], [rand(5, 3, seed=3)], [0.1 * (g1 + g2)]]
    got, _ = run_torch(Shampoo, [p0], grads, [{"lr": lr, "weight_decay": wd, "eps": eps}],
                       precondition_interval=interval)
    w, L, R, stale_norms = p0.copy(), np.zeros((5, 5)), np.zeros((3, 3)), []
    for t, (g,) in enumerate(grads):
        L, R = L + g @ g.T, R + g.T @ g
        if t % interval == 0:
            Lr, Rr = inv_root(L, eps), inv_root(R, eps)
            u = Lr @ g @ Rr
        else:
            u = Lr @ g @ Rr
            stale_norms.append(np.linalg.norm(u, 2))
            u = u / max(1.0, stale_norms[-1])
        w = w * (1 - lr * wd) - lr * u
    if interval == 2:  # step 2 (new directions) was scaled down, step 4 not
        assert stale_norms[0] > 1 > stale_norms[1], stale_norms
    np.testing.assert_allclose(got[0], w, rtol=1e-5, atol=1e-6)


def test_shampoo_first_step_is_orthogonal_and_eps_must_be_positive():
    """With one gradient and eps -> 0, (G G^T)^-1/4 G (G^T G)^-1/4 = U V^T: every singular value is 1. A zero
    gradient steps nowhere (its statistics are zero, their roots finite)."""
    p0, g = rand(6, 4, seed=0), rand(6, 4, seed=1)
    got, _ = run_torch(Shampoo, [p0], [[g]], [{"lr": 1.0, "eps": 1e-12}])
    np.testing.assert_allclose(np.linalg.svd(p0 - got[0], compute_uv=False), 1.0, rtol=1e-4)
    got, _ = run_torch(Shampoo, [p0], [[0 * g], [0 * g]], [{"lr": 1.0}], precondition_interval=2)
    np.testing.assert_array_equal(got[0], p0.astype(np.float32))
    with pytest.raises(ValueError, match="eps > 0"):
        Shampoo([torch.nn.Parameter(torch.zeros(2, 2))], eps=0.0)


def low_rank(m, n, rank, dtype, seed, scale=1.0):
    """A rank-`rank` gradient formed as a product in `dtype` (float32, or bf16 as under autocast): its tail
    singular values are rounding noise, which an eps that the eigendecomposition cannot resolve amplifies."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    return scale * (a.to(dtype) @ b.to(dtype)).float()


def step_norms(grads, eps, interval=1) -> list[float]:
    """||dW||_2 / lr of each step of Shampoo (no weight decay) over `grads`."""
    p = torch.nn.Parameter(torch.zeros(grads[0].shape))
    opt = Shampoo([p], lr=1.0, eps=eps, precondition_interval=interval)
    norms = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g
        opt.step()
        norms.append(torch.linalg.matrix_norm((p.detach() - before).double(), 2).item())
    return norms


# Shampoo's own eps at the base depth (a float32 eigendecomposition) and at L = 256 under the spec's row, r_L = 64
# (float64)
SHAMPOO_EPS = registry.own_default("shampoo", "matrix_eps")
EPS_AT_DEPTHS = [SHAMPOO_EPS, SHAMPOO_EPS / 64**2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(256, 64), (64, 256)])
def test_one_step_on_low_rank_gradients_stays_within_lr(shape, dtype):
    """||dW||_2 <= lr up to rounding at every gradient scale: an absolute eps of 1e-16 stepped a rank-3 float32
    product 63 lr at 256 x 64, and 1e-8 stepped it 8 lr at scale 1e3 (python -m bench.shampoo_eps)."""
    for rank, scale in [(1, 1e-6), (3, 1.0), (8, 1e3)]:
        for eps in EPS_AT_DEPTHS:
            assert step_norms([low_rank(*shape, rank, dtype, seed=rank, scale=scale)], eps)[0] <= 1.5, (rank, eps)


def test_one_step_stays_within_lr_at_1024_by_256_and_one_side_at_1024_by_4096():
    """A rank-3 float32 product (bf16's noise is loud enough for any eps, bench.shampoo_eps). At 1024 x 256 the
    whole step (an absolute eps of 1e-16: 178 lr); at the MLP's 1024 x 4096 only its 1024 side, whose root carries
    the rounding-level eigenvalues (a 4096^2 eigendecomposition takes ~30 s here): the one-sided step
    ||(L + eps lambda_max I)^-1/2 G||_2 <= 1 with L = G G^T, its square being ||root^2 L root^2||_2."""
    g = low_rank(1024, 256, 3, torch.float32, seed=0)
    for eps in EPS_AT_DEPTHS:
        assert step_norms([g], eps)[0] <= 1.5, eps
    g = low_rank(1024, 4096, 3, torch.float32, seed=0).double()
    L = g @ g.T
    for eps in EPS_AT_DEPTHS:
        root2 = shampoo.inverse_fourth_root(L, eps).matrix_power(2)
        assert torch.linalg.matrix_norm(root2 @ L @ root2, 2) <= 1.5**2, eps


def test_kept_roots_never_step_past_lr(monkeypatch):
    """Twelve low-rank gradients, each in directions the statistics have not seen: kept roots amplify them by up
    to (eps lambda_max)^-1/4 on each side (unscaled: up to 333 lr, 21,000 lr at eps / 64^2), and only the
    scaling keeps the steps within lr."""
    grads = {dtype: [low_rank(256, 64, 3, dtype, seed=s) for s in range(12)] for dtype in (torch.float32,
                                                                                          torch.bfloat16)}
    for dtype, gs in grads.items():
        for eps in EPS_AT_DEPTHS:
            assert max(step_norms(gs, eps, interval=10)) <= 1.5, (dtype, eps)
    monkeypatch.setattr(shampoo, "spectral_norm", lambda a: torch.ones(()))  # no scaling
    assert max(step_norms(grads[torch.float32], SHAMPOO_EPS, interval=10)) > 100


@pytest.mark.parametrize("shape", [(256, 64), (64, 256)])
def test_float32_eigendecompositions_hold_against_float64_where_used(shape, monkeypatch):
    """At eps >= FLOAT32_EPS the eigendecomposition runs in float32: on low-rank bf16 gradients (a continuum of
    rounding-noise eigenvalues near eps, the hardest case measured) the step stays within 1% of lr of the
    float64 one's."""
    for rank in (1, 3, 8):
        g = low_rank(*shape, rank, torch.bfloat16, seed=rank)
        for eps in (shampoo.FLOAT32_EPS, SHAMPOO_EPS):
            got = one_update(g, eps)
            with monkeypatch.context() as m:
                m.setattr(shampoo, "FLOAT32_EPS", math.inf)  # float64 everywhere
                want = one_update(g, eps)
            assert 0 < torch.linalg.matrix_norm(got - want, 2) <= 0.01, (rank, eps)


def one_update(g, eps) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64))
    p.grad = g.double()
    Shampoo([p], lr=1.0, eps=eps).step()
    return -p.detach()


# ---- SOAP (Vyas et al. 2024, Algorithm 3; the authors' code): step 1 only fills L, R and takes their
#      eigenbases; then Adam on G' = Q_L^T G Q_R (m kept unrotated, v rotated), N = Q_L (M'/(sqrt v + eps)) Q_R^T,
#      bias-corrected step, w -= ...; w *= 1 - lr wd; L, R <- EMA; every f Adam steps Q <- QR(L Q) (v re-sorted)

def test_soap_matches_the_paper():
    from pytorch_optimizer import SOAP

    lr, wd, eps, b1, b2, f = 0.01, 0.1, 1e-8, 0.9, 0.95, 2
    p0 = rand(4, 4, seed=0)
    grads = [[rand(4, 4, seed=s)] for s in range(1, 6)]
    got, _ = run_torch(SOAP, [p0], grads, [{"lr": lr, "weight_decay": wd, "eps": eps}], betas=(b1, b2),
                       precondition_frequency=f)

    def eigenbasis(a):
        return np.linalg.eigh(a)[1][:, ::-1]  # descending eigenvalues

    w, (g1,) = p0.copy(), grads[0]
    GL, GR = (1 - b2) * g1 @ g1.T, (1 - b2) * g1.T @ g1  # shampoo_beta = beta2
    QL, QR = eigenbasis(GL), eigenbasis(GR)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for k, (g,) in enumerate(grads[1:], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (QL.T @ g @ QR) ** 2
        n = QL @ ((QL.T @ m @ QR) / (np.sqrt(v) + eps)) @ QR.T
        w = (w - lr * math.sqrt(1 - b2**k) / (1 - b1**k) * n) * (1 - lr * wd)
        GL, GR = b2 * GL + (1 - b2) * g @ g.T, b2 * GR + (1 - b2) * g.T @ g
        if k % f == 0:  # one power-iteration step and QR, v's axes re-sorted by the estimated eigenvalues
            iL = np.argsort(-np.diag(QL.T @ GL @ QL), kind="stable")
            iR = np.argsort(-np.diag(QR.T @ GR @ QR), kind="stable")
            v = v[iL][:, iR]
            QL, QR = np.linalg.qr((GL @ QL)[:, iL])[0], np.linalg.qr((GR @ QR)[:, iR])[0]
    np.testing.assert_allclose(got[0], w, rtol=1e-4, atol=1e-6)


# ---- SSO (Xie et al. 2026, Algorithm 1): momentum, M / ||M||_F, top singular pair, retraction W <- W R / sigma,
#      lambda: <Theta, msign(M + lambda Theta)> = 0, W <- W (1 - lr wd) - lr R msign(M + lambda Theta)

def ns_numpy(g, steps):
    a, b, c = NS_COEFFICIENTS
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / max(np.linalg.norm(x), 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def sso_lambda(m, u, v, steps, tol=1e-6):
    theta = u @ v.T
    h = lambda lam: (u.T @ ns_numpy(m + lam * theta, steps) @ v).item()  # noqa: E731
    lo, f_lo = 0.0, h(0.0)
    if abs(f_lo) <= tol:
        return 0.0
    step = 1e-3 if f_lo < 0 else -1e-3
    for _ in range(10):
        hi, f_hi = lo + step, h(lo + step)
        if (f_hi > 0) != (f_lo > 0):
            break
        lo, f_lo, step = hi, f_hi, 2 * step
    (a, f_a), (b, f_b) = sorted([(lo, f_lo), (hi, f_hi)], key=lambda t: t[1])
    best, f_best = (a, f_a) if abs(f_a) < abs(f_b) else (b, f_b)
    for _ in range(20):
        mid = (a + b) / 2
        f_mid = h(mid)
        if abs(f_mid) < abs(f_best):
            best, f_best = mid, f_mid
        if abs(f_mid) <= tol:
            break
        a, b = (mid, b) if f_mid <= 0 else (a, mid)
    assert abs(f_best) < 1e-3  # tangent to the sphere
    return best


@pytest.mark.parametrize("shape,nesterov", [((8, 5), True), ((5, 8), False)])
def test_sso_matches_the_paper(shape, nesterov):
    lr, wd, beta, c, ns_steps, iters = 0.05, 0.1, 0.9, 2.0, 5, 10
    p0 = rand(*shape, seed=0) * 0.1 + np.outer(rand(shape[0], seed=5), rand(shape[1], seed=6)) * 0.1  # a clear top
    grads = [[rand(*shape, seed=s)] for s in (1, 2)]
    got, _ = run_torch(SSO, [p0], grads, [{"lr": lr, "weight_decay": wd}], momentum=beta, nesterov=nesterov,
                       radius=c, ns_steps=ns_steps, power_iters=iters)
    w, buf, v = p0.copy(), np.zeros_like(p0), np.ones((shape[1], 1))
    R = c * math.sqrt(shape[0] / shape[1])
    for (g,) in grads:
        buf = beta * buf + (1 - beta) * g
        m = (1 - beta) * g + beta * buf if nesterov else buf
        m = m / np.linalg.norm(m)
        for _ in range(iters):  # power iteration, warm-started from the last step's v
            u = w @ v / np.linalg.norm(w @ v)
            v = w.T @ u / np.linalg.norm(w.T @ u)
        w = w * R / (u.T @ w @ v).item()
        lam = sso_lambda(m, u, v, ns_steps)
        w = w * (1 - lr * wd) - lr * R * ns_numpy(m + lam * (u @ v.T), ns_steps)
    np.testing.assert_allclose(got[0], w, rtol=1e-4, atol=1e-5)
    # back on the sphere, shrunk by the decay, up to the tangent step's second-order term
    assert np.linalg.norm(got[0], 2) == pytest.approx(R * (1 - lr * wd), rel=lr**2)


# ---- the hybrid: groups, schedule, exact resume, curvature hook, diagnostics

def hidden_names(table):
    return {t.name for t in table if t.role == "hidden"}


@pytest.mark.parametrize("name", NEW)
def test_groups_follow_table(name):
    cfg = tiny(**{"optim.name": name, "model.n_layer": 4, "scaling.base_depth": 2, "scaling.base_width": 32})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    assert set(opt.optimizers) == ({name, "adamw"} if name in MATRIX else {name})
    params = dict(model.named_parameters())
    by_id = {}
    for opt_name, o in opt.optimizers.items():
        for g in o.param_groups:
            for p in g["params"]:
                by_id[id(p)] = (opt_name, g["lr"], g["weight_decay"], g.get("eps"))
    assert len(by_id) == len(params)
    for t in table:
        assert by_id[id(params[t.name])] == (t.optimizer, t.lr, t.weight_decay, t.eps), t.name


@pytest.mark.parametrize("name", NEW)
def test_schedule_keeps_each_groups_mup_ratio(name):
    cfg = tiny(**{"optim.name": name, "model.n_layer": 4, "scaling.base_depth": 2, "scaling.base_width": 32,
                  "scaling.parameterization": "mup_k1"})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    base = [g["lr"] for g in opt.param_groups]
    assert len(set(base)) > 1  # the table gives this shape several lrs
    opt.set_lr_factor(0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.3 * b for b in base]
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    for t in table:
        assert lr_of[t.name] == 0.3 * t.lr


NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def seeds(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


def curvature_inputs(x, label_seeds, micro=None):
    """update_curvature's micro-batches of x: (sequences, their label seeds, a dropout seed)."""
    micro = micro or len(x)
    return [(x[i:i + micro], label_seeds[i:i + micro], 100 + i) for i in range(0, len(x), micro)]


def train(model, opt, cfg, steps, start=0):
    """The loop's order: forward, backward, step, zero_grad, then the curvature hook on the first inputs."""
    losses = []
    for s in range(start, start + steps):
        x = tokens(cfg, seed=s)
        _, loss = model(x, x.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if opt.wants_curvature(s):
            opt.update_curvature(model, curvature_inputs(x, seeds(1000 + s, len(x))), NO_AUTOCAST, x.numel())
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list(registry.OPTIMIZERS))
def test_state_dict_round_trip_is_bitwise(name, tmp_path):
    """2 steps, save, load into a fresh model and optimizer, 2 more == 4 straight steps, bit for bit; the
    intervals are 2, so preconditioner refreshes and Hessian estimates fall on both sides of the save."""
    intervals = {f"optim.{k}": 2 for k in ("precondition_interval", "hessian_interval") if registry.reads(name, k)}
    cfg = tiny(**{"optim.name": name, **intervals, "optim.weight_decay": 0.1})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    straight = train(model, opt, cfg, 4)

    torch.manual_seed(0)
    model1, table1 = build_model(cfg)
    opt1 = build_optimizer(cfg, model1, table1)
    first = train(model1, opt1, cfg, 2)
    torch.save({"model": model1.state_dict(), "optim": opt1.state_dict()}, tmp_path / "ck.pt")
    torch.manual_seed(1)  # a different init, all overwritten by the checkpoint
    model2, table2 = build_model(cfg)
    opt2 = build_optimizer(cfg, model2, table2)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optim"])
    assert first + train(model2, opt2, cfg, 2, start=2) == straight
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n


def test_only_sophia_wants_curvature():
    for name in ["muon_kimi", "muon", "adamw", "sgd", *NEW]:
        cfg = tiny(**{"optim.name": name, **({"optim.hessian_interval": 3} if name == "sophia" else {})})
        model, table = build_model(cfg)
        opt = build_optimizer(cfg, model, table)
        due = [s for s in range(9) if opt.wants_curvature(s)]
        assert due == ([2, 5, 8] if name == "sophia" else []), name
        if name != "sophia":
            x = tokens(cfg)
            opt.update_curvature(model, curvature_inputs(x, seeds(0, len(x))), NO_AUTOCAST, x.numel())  # a no-op
            assert all(p.grad is None for p in model.parameters())


def test_curvature_is_the_gnb_estimate_from_the_seeds():
    """h = (1 - beta2) B g^2 with g the gradient of the mean loss against labels drawn from softmax(logits), each
    sequence's by a generator seeded with its label seed; dropout masks from the dropout seed; gradients are
    zeroed after; the global RNG is untouched."""
    cfg = tiny(**{"optim.name": "sophia", "optim.betas": [0.9, 0.8], "model.dropout": 0.1})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    x, labels = tokens(cfg, B=3), seeds(7, 3)
    rng = torch.get_rng_state()
    opt.update_curvature(model, [(x, labels, 11)], NO_AUTOCAST, x.numel())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())

    with torch.random.fork_rng():
        torch.manual_seed(11)  # the pass's dropout masks come from its seed
        logits, _ = model(x)
    y = torch.stack([torch.multinomial(torch.softmax(row, -1), 1, generator=torch.Generator().manual_seed(s)).squeeze(1)
                     for row, s in zip(logits, labels)])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    state = opt.optimizers["sophia"].state
    scale = max(0.2 * x.numel() * g.square().max().item() for g in grads)
    for p, g in zip(model.parameters(), grads):  # the chunked loss's gradient: the full logits' up to rounding
        torch.testing.assert_close(state[p]["hessian"], 0.2 * x.numel() * g * g, rtol=1e-5, atol=1e-6 * scale)
    before = {p: state[p]["hessian"].clone() for p in model.parameters()}
    opt.update_curvature(model, [(x, seeds(8, 3), 11)], NO_AUTOCAST, x.numel())
    assert any(not torch.equal(state[p]["hessian"], 0.8 * before[p] + 0.2 * x.numel() * g * g)
               for p, g in zip(model.parameters(), grads))  # other seeds, other labels


def hessians(micro: int, x) -> list:
    """Sophia's first estimate on x, given in micro-batches of `micro` sequences."""
    cfg = tiny(**{"optim.name": "sophia"})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    opt.update_curvature(model, curvature_inputs(x, seeds(7, len(x)), micro), NO_AUTOCAST, x.numel())
    return [opt.optimizers["sophia"].state[p]["hessian"] for p in model.parameters()]


def test_curvature_does_not_depend_on_the_micro_batch():
    """The labels follow each sequence's seed and the gradient is weighted by tokens: micro-batches of 1, 2 or 4
    sequences give the estimate of one batch of 4, up to float rounding (the sum's order)."""
    x = tokens(tiny(), B=4)
    whole = hessians(4, x)
    for micro in (1, 2):
        assert_close_to_rounding(hessians(micro, x), whole)


def assert_close_to_rounding(a: list, b: list):
    """Equal up to float32 rounding of gradients (relative to the largest entry: a gradient that is 0 in exact
    arithmetic, such as a key bias's, is rounding noise in both)."""
    scale = max(t.abs().max().item() for t in b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", NEW)
def test_spectral_diagnostics_read_every_optimizer(name):
    cfg = tiny(**{"optim.name": name})
    ref_cfg = tiny()
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    for s in range(2):  # SOAP's first step only sets up its preconditioner
        x = tokens(cfg, seed=s)
        model(x, x.roll(-1, 1))[1].backward()
        before = spectral.snapshot(model, table)
        opt.step()
        opt.zero_grad()
    report = spectral.report(model, table, before)
    ref_model, ref_table = build_model(ref_cfg)
    assert set(report) == set(spectral.report(ref_model, ref_table, spectral.snapshot(ref_model, ref_table)))
    assert all(math.isfinite(v) for v in report.values())
    assert all(report[f"spec/{n.removesuffix('.weight')}/dW"] > 0 for n in hidden_names(table))


# ---- configuration

def test_unknown_optimizer_lists_every_valid_one():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"optim.name": "adam"})
    for name in ["muon_kimi", "muon", "adamw", "sgd", *NEW]:
        assert name in str(e.value)


@pytest.mark.parametrize("key,value,message", [
    ("optim.precondition_interval", 0, "optim.precondition_interval: must be > 0"),
    ("optim.hessian_interval", 2.5, "optim.hessian_interval: expected int"),
    ("optim.sophia_rho", 0, "optim.sophia_rho: must be > 0"),
    ("optim.sophia_clip", -1, "optim.sophia_clip: must be > 0"),
    ("optim.sso_radius", 0, "optim.sso_radius: must be > 0"),
])
def test_optimizer_settings_are_checked(key, value, message):
    reader = next(name for name in registry.OPTIMIZERS if registry.reads(name, key.removeprefix("optim.")))
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"optim.name": reader, key: value})


def test_missing_library_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import fails as if not installed
    cfg = tiny(**{"optim.name": "lion"})
    model, table = build_model(cfg)
    with pytest.raises(ImportError, match="pip install pytorch_optimizer"):
        build_optimizer(cfg, model, table)


@pytest.mark.parametrize("axis", ["width", "depth"])
@pytest.mark.parametrize("name", NEW)
def test_coordinate_check_configs_choose_the_optimizer(name, axis):
    sweep, rest = split_sweep(read_yaml(f"configs/coord/tiny_{axis}_{name}.yaml"))
    assert from_flat(rest).optim.name == name and sweep.axis == axis


class Batches:
    """TokenBatches' interface over one fixed batch of 8 random sequences."""

    def __init__(self, cfg):
        self.x = tokens(cfg, B=8, seed=3)

    def get(self, step, index=0, size=8):
        x = self.x[index * size:(index + 1) * size]
        return x, x.roll(-1, 1)


def curvature_on_ranks(rank, world, out, micro):
    """Sophia's first estimate through trainer.step.curvature on this rank of `world` (a gloo group when > 1)."""
    import os

    from trainer.runtime import Runtime
    from trainer.step import curvature

    if world > 1:
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    cfg = tiny(**{"optim.name": "sophia", "optim.hessian_batch_size": 6, "train.batch_size": 8,
                  "train.micro_batch_size": micro})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    curvature(opt, model, Batches(cfg), 5, cfg, Runtime(cfg))
    torch.save([opt.optimizers["sophia"].state[p]["hessian"] for p in model.parameters()], out / f"h{world}_{rank}.pt")


def test_curvature_is_split_across_ranks_and_the_same_on_any_number(tmp_path):
    """6 of the batch's 8 sequences: 3 on each of 2 gloo ranks in micro-batches of 2 and 1, against 6 on one
    process in micro-batches of 4 and 2: the same estimate up to float rounding, and the same on both ranks."""
    curvature_on_ranks(0, 1, tmp_path, micro=4)
    gloo(curvature_on_ranks, 2, tmp_path, 2)
    one, a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("h1_0.pt", "h2_0.pt", "h2_1.pt"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert_close_to_rounding(a, one)
    assert any(t.abs().max() > 0 for t in one)
