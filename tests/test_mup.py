"""The scaling table against docs/SPEC-mup.md, with the expected values written out from the spec's tables
(not from mup/rules.py's exponent form), so a wrong exponent anywhere fails here."""

import json
import math
import subprocess
import sys

import pytest

from config import ConfigError, load_config
from mup.scaling import table_for

ETA, LAM, EPS, SIGMA = 2**-7, 0.1, 1e-16, 0.02
MATRIX_EPS = 1e-9  # the base epsilon of the hidden matrices' Shampoo or SOAP (optim.matrix_eps)
OWN_EPS = {"shampoo", "soap"}
SHAPES = [(128, 2), (512, 16), (1024, 8), (256, 32)]
PARAMS = ["sp", "mup", "mup_k1", "mup_width"]
FAMILIES = ["muon_kimi", "muon", "shampoo", "soap", "sso", "adamw", "lion", "sophia", "sgd"]
HYBRIDS = {"muon_kimi", "muon", "shampoo", "soap", "sso"}  # hidden matrices; AdamW for every other tensor


def cfg_at(n, L, p="mup", opt="muon_kimi", **extra):
    over = {"model.n_embd": n, "model.n_layer": L, "model.head_dim": 64, "model.vocab_size": 512,
            "model.block_size": 64, "scaling.base_width": 256, "scaling.base_depth": 4,
            "scaling.parameterization": p, "optim.name": opt, "optim.lr": ETA, "optim.weight_decay": LAM,
            "optim.eps": EPS, **({"optim.matrix_eps": MATRIX_EPS} if opt in OWN_EPS else {})}
    over.update(extra)
    return load_config(None, over)


def expected(p, opt, role, n, L, adamw_ratio=1.0, paper_rows=False):
    """(init_std, multiplier, lr, wd, eps, optimizer) of a tensor role, straight from docs/SPEC-mup.md; the AdamW
    half of a hybrid runs at adamw_ratio x its table's lr; paper_rows: the paper's row where a measured one is used."""
    rn, rL = n / 256, L / 4
    if p == "sp":
        rn = rL = 1.0
    if p == "mup_width":
        rL = 1.0
    k1 = p == "mup_k1"
    sq = math.sqrt
    o = opt if role == "hidden" or opt not in HYBRIDS else "adamw"
    # Tables A-D, rows "block multiplier" and "init variance"; k=1: hidden multiplier alpha/sqrt(r_L)
    block = 1 / sq(rL) if k1 else 1 / rL
    mult = {"input": 1.0, "hidden": block, "hidden_vector": block, "output": 1 / rn, "final_norm": 1.0}[role]
    var = {"input": SIGMA**2, "hidden": SIGMA**2 / rn, "output": SIGMA**2}.get(role)
    std = None if var is None else sq(var)
    eps = None
    if o == "muon_kimi":  # Table A; k=1 row Muon-Kimi
        lr, wd = (ETA / sq(rn * rL), LAM * sq(rn)) if k1 else (ETA / sq(rn), LAM * sq(rn))
    elif o == "soap" and not paper_rows:  # SOAP's measured row (SPEC-mup: measured deviation); k=1 row
        lr, wd = (ETA / (rn**0.875 * sq(rL)), LAM * rn**0.875) if k1 else (ETA / rn**0.875, LAM * rn**0.875)
        eps = MATRIX_EPS / (rn * sq(rL)) if k1 else MATRIX_EPS / (rn * rL)
    elif o in ("muon", "shampoo", "soap", "sso"):  # Table C (Muon, Shampoo, SOAP), Table E (SSO); k=1 rows
        lr, wd = (ETA / sq(rL), LAM) if k1 else (ETA, LAM)
        if o == "shampoo":  # v2's Shampoo eps row; k=1: eps / r_L
            eps = MATRIX_EPS / rL if k1 else MATRIX_EPS / rL**2
        if o == "soap":  # not in the paper: the square root of Shampoo's row (SOAP's eps is Adam's, gradient units)
            eps = MATRIX_EPS / sq(rL) if k1 else MATRIX_EPS / rL
    elif o in ("adamw", "lion", "sophia"):  # Table B (AdamW, also Lion, Sophia); k=1 row AdamW/Lion/Sophia
        lr, wd, eps = {
            "input": (ETA, LAM, EPS / rn),
            "output": (ETA, LAM, EPS / rn),
            "final_norm": (ETA, LAM, EPS / rn),
            "hidden": ((ETA / (rn * sq(rL)), LAM * rn, EPS / (rn * sq(rL))) if k1
                       else (ETA / rn, LAM * rn, EPS / (rn * rL))),
            "hidden_vector": (ETA / sq(rL), LAM, EPS / (rn * sq(rL))) if k1 else (ETA, LAM, EPS / (rn * rL)),
        }[role]
        if o == "lion":  # a sign update: no eps
            eps = None
        if opt in HYBRIDS:
            lr *= adamw_ratio
    else:  # Table D; k=1 row SGD; the final norm is input-like
        lr, wd = {
            "input": (ETA * rn, LAM / rn),
            "output": (ETA * rn, LAM / rn),
            "final_norm": (ETA * rn, LAM / rn),
            "hidden": (ETA, LAM / sq(rL)) if k1 else (ETA * rL, LAM / rL),
            "hidden_vector": (ETA * rn, LAM / (rn * sq(rL))) if k1 else (ETA * rL * rn, LAM / (rL * rn)),
        }[role]
    return std, mult, lr, wd, eps, o


def close(a, b):
    return a is None and b is None or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9))


@pytest.mark.parametrize("n,L", SHAPES)
@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("opt", FAMILIES)
def test_table_matches_spec(n, L, p, opt):
    cfg = cfg_at(n, L, p, opt)
    table = table_for(cfg)
    roles = {t.role for t in table}
    assert roles == {"input", "hidden", "hidden_vector", "final_norm"}  # tied head: input rules
    for t in table:
        std, mult, lr, wd, eps, o = expected(p, opt, t.role, n, L, cfg.optim.adamw_lr_ratio)
        got = (t.init_std, t.multiplier, t.lr, t.weight_decay, t.eps)
        want = (std, mult, lr, wd, eps)
        assert all(close(g, e) for g, e in zip(got, want)), (t.name, got, want)
        assert t.optimizer == o, t.name


@pytest.mark.parametrize("n,L", SHAPES)
@pytest.mark.parametrize("p", PARAMS)
def test_soap_paper_row_is_table_c(n, L, p):
    """scaling.paper_rows=true gives SOAP's hidden matrices Table C's row; nothing else changes."""
    cfg = cfg_at(n, L, p, "soap", **{"scaling.paper_rows": True})
    for t in table_for(cfg):
        want = expected(p, "soap", t.role, n, L, cfg.optim.adamw_lr_ratio, paper_rows=True)
        assert all(close(g, e) for g, e in zip((t.init_std, t.multiplier, t.lr, t.weight_decay, t.eps), want[:5]))
    measured = {t.name: t for t in table_for(cfg_at(n, L, p, "soap"))}
    differs = any(not close(measured[t.name].lr, t.lr) for t in table_for(cfg) if t.role == "hidden")
    assert differs == (p != "sp" and n != 256)  # the rows part in width only


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("opt", FAMILIES)
def test_untied_head_is_output(p, opt):
    n, L = 1024, 8
    cfg = cfg_at(n, L, p, opt, **{"model.tie_embeddings": False})
    (head,) = [t for t in table_for(cfg) if t.name == "head.weight"]
    std, mult, lr, wd, eps, o = expected(p, opt, "output", n, L, cfg.optim.adamw_lr_ratio)
    assert head.role == "output" and close(head.multiplier, mult) and close(head.lr, lr)
    assert close(head.init_std, std) and close(head.weight_decay, wd) and close(head.eps, eps)
    assert head.optimizer == o


@pytest.mark.parametrize("opt", FAMILIES)
def test_base_shape_identical_across_parameterizations(opt):
    tables = {p: table_for(cfg_at(256, 4, p, opt)) for p in PARAMS}
    ref = [t.to_json() for t in tables["sp"]]
    for p, table in tables.items():
        assert [t.to_json() for t in table] == ref, p


def test_multiplier_goes_to_branch():
    cfg = cfg_at(512, 16, "mup", **{"scaling.alpha_attn": 2.0, "scaling.alpha_mlp": 3.0, "scaling.alpha_out": 5.0,
                                    "model.tie_embeddings": False})
    by_name = {t.name: t for t in table_for(cfg)}
    assert by_name["blocks.3.attn.v.weight"].multiplier == pytest.approx(2.0 / 4)
    assert by_name["blocks.3.ln_1.weight"].multiplier == pytest.approx(2.0 / 4)
    assert by_name["blocks.3.mlp.fc.bias"].multiplier == pytest.approx(3.0 / 4)
    assert by_name["blocks.3.ln_2.bias"].multiplier == pytest.approx(3.0 / 4)
    assert by_name["head.weight"].multiplier == pytest.approx(5.0 / 2)
    assert by_name["ln_f.weight"].multiplier == 1.0


def test_paper_adamw_ratio_of_muon_adamw():
    """The paper's Muon-AdamW runs the AdamW half at eta / 10; Muon-Kimi at eta (optim.adamw_lr_ratio: null)."""
    assert cfg_at(512, 8, "mup", "muon").optim.adamw_lr_ratio == 0.1
    assert cfg_at(512, 8, "mup", "muon_kimi").optim.adamw_lr_ratio == 1.0


@pytest.mark.parametrize("opt", FAMILIES)
@pytest.mark.parametrize("n,L", SHAPES)
def test_depth_exponent_one_and_half_reproduce_mup_and_mup_k1(opt, n, L):
    """scaling.depth_exponent is the spec's general formula: alpha_d = 1 is mup and 1/2 is mup_k1, record for
    record, from either parameterization; sp and mup_width see r_L = 1 and ignore it."""
    def records(p, d=None):
        return [t.to_json() for t in table_for(cfg_at(n, L, p, opt, **{"scaling.depth_exponent": d}))]

    mup, k1 = records("mup"), records("mup_k1")
    assert records("mup", 1.0) == records("mup_k1", 1.0) == mup
    assert records("mup", 0.5) == records("mup_k1", 0.5) == k1
    assert records("sp", 0.5) == records("sp") and records("mup_width", 0.5) == records("mup_width")


def test_general_depth_exponent_follows_the_spec():
    """At alpha_d = 3/4 the spec's general forms: hidden multiplier r_L^-a, Muon-Kimi hidden lr r_n^-1/2 r_L^(a-1),
    AdamW hidden lr r_n^-1 r_L^(a-1), AdamW hidden eps r_n^-1 r_L^-a, hidden-bias lr r_L^(a-1), Shampoo eps
    r_L^-2a."""
    a, n, L = 0.75, 512, 16
    rn, rL = n / 256, L / 4
    kimi = {t.name: t for t in table_for(cfg_at(n, L, "mup", "muon_kimi", **{"scaling.depth_exponent": a}))}
    shampoo = {t.name: t for t in table_for(cfg_at(n, L, "mup", "shampoo", **{"scaling.depth_exponent": a}))}
    adamw = {t.name: t for t in table_for(cfg_at(n, L, "mup", "adamw", **{"scaling.depth_exponent": a}))}
    q, bias = "blocks.1.attn.q.weight", "blocks.1.mlp.fc.bias"
    assert close(kimi[q].multiplier, rL**-a)
    assert close(kimi[q].lr, ETA * rn**-0.5 * rL ** (a - 1))
    assert close(adamw[q].lr, ETA / rn * rL ** (a - 1)) and close(adamw[q].eps, EPS / rn * rL**-a)
    assert close(adamw[bias].lr, ETA * rL ** (a - 1))
    assert close(shampoo[q].eps, MATRIX_EPS * rL ** (-2 * a))


def test_depth_exponent_outside_half_to_one_is_rejected():
    for bad in (0.4, 1.5):
        with pytest.raises(ConfigError, match="scaling.depth_exponent: must be >= 0.5 and <= 1"):
            cfg_at(512, 8, "mup", **{"scaling.depth_exponent": bad})
    res = subprocess.run([sys.executable, "train.py", "scaling.depth_exponent=2"], capture_output=True, text=True)
    assert res.returncode == 1 and "must be >= 0.5 and <= 1" in res.stderr and "Traceback" not in res.stderr


def test_adamw_lr_ratio_scales_only_adamw():
    base = {t.name: t.lr for t in table_for(cfg_at(512, 8, "mup", "muon", **{"optim.adamw_lr_ratio": 1.0}))}
    tenth = table_for(cfg_at(512, 8, "mup", "muon", **{"optim.adamw_lr_ratio": 0.1}))
    for t in tenth:
        assert t.lr == pytest.approx(base[t.name] * (0.1 if t.optimizer == "adamw" else 1.0))


def test_cli_json_contract():
    out = subprocess.run([sys.executable, "-m", "mup.table", "model.n_embd=512", "model.n_layer=8", "--json"],
                         capture_output=True, text=True, check=True).stdout
    records = json.loads(out)
    assert {tuple(sorted(r)) for r in records} == {tuple(sorted(
        ["name", "role", "shape", "init_std", "multiplier", "lr", "weight_decay", "eps", "optimizer"]))}
    q = next(r for r in records if r["name"] == "blocks.0.attn.q.weight")
    assert q["shape"] == [512, 512] and q["optimizer"] == "muon_kimi" and q["eps"] is None
    ln = next(r for r in records if r["name"] == "blocks.0.ln_1.weight")
    assert ln["init_std"] is None and ln["role"] == "hidden_vector"
    for name, hidden_eps in [("shampoo", True), ("soap", True), ("sso", False), ("lion", False), ("sophia", True)]:
        out = subprocess.run([sys.executable, "-m", "mup.table", f"optim.name={name}", "--json"],
                             capture_output=True, text=True, check=True).stdout
        by_name = {r["name"]: r for r in json.loads(out)}
        q, ln = by_name["blocks.0.attn.q.weight"], by_name["blocks.0.ln_1.weight"]
        assert q["optimizer"] == name and (q["eps"] is not None) == hidden_eps, name
        assert ln["optimizer"] == ("adamw" if name in HYBRIDS else name)
        assert (ln["eps"] is None) == (name == "lion")


def test_cli_readable_table_and_errors():
    res = subprocess.run([sys.executable, "-m", "mup.table", "model.n_embd=100"], capture_output=True, text=True)
    assert res.returncode != 0 and "model.n_embd=100 is not divisible by model.head_dim" in res.stderr
    out = subprocess.run([sys.executable, "-m", "mup.table", "configs/default.yaml"], capture_output=True,
                         text=True, check=True).stdout
    assert "blocks.3.mlp.proj.weight" in out and "muon_kimi" in out
