"""optim/registry.py declares each optimizer once; everything that names optimizers or their defaults reads it:
config.py's choices and null keys, mup/rules.py's rows, optim/hybrid.py's builders, experiments/cost.py's state
count. These tests hold them to each other, so a name or default added in one place and not the others fails."""

import dataclasses
import subprocess
import sys

import pytest
import torch

import config
from config import ConfigError, load_config, with_defaults
from experiments import cost
from mup import rules
from mup.scaling import build_model
from optim import registry
from optim.hybrid import build_optimizer, builders
from tests.conftest import tiny, tokens

NAMES = list(registry.OPTIMIZERS)


def test_every_optimizer_has_a_row_a_builder_and_a_cost_for_each_of_its_rules():
    used = {rule for spec in registry.OPTIMIZERS.values() for rule in (spec.hidden, spec.other)}
    assert used == set(registry.RULES)  # no rule without an optimizer, none missing its cost
    assert used == set(builders(load_config(None).optim, torch.device("cpu")))
    rows = used | {spec.paper_row for spec in registry.OPTIMIZERS.values() if spec.paper_row}
    assert rows <= set(rules.UPDATES)


def test_config_choices_are_the_registry_names_and_an_unknown_name_lists_them():
    assert list(config.choices("optim.name")) == NAMES
    with pytest.raises(ConfigError, match="optim.name: 'adam' is not one of muon_kimi, muon, shampoo"):
        load_config(None, {"optim.name": "adam"})
    with pytest.raises(KeyError, match="optim.name is one of muon_kimi, muon"):
        registry.get("adam")


@pytest.mark.parametrize("name", NAMES)
def test_a_null_key_takes_the_optimizers_own_value_and_an_unread_key_stays_null(name):
    o = load_config(None, {"optim.name": name}).optim
    spec = registry.OPTIMIZERS[name]
    for key in registry.OWN_KEYS:
        assert getattr(o, key) == spec.defaults.get(key), key
    for key, value in spec.defaults.items():  # every default is a declared key whose type and bound it passes
        assert key in registry.OWN_KEYS
        assert getattr(load_config(None, {"optim.name": name, f"optim.{key}": value}).optim, key) == value


def test_a_value_set_in_a_config_wins_and_one_the_optimizer_does_not_read_is_refused():
    assert load_config(None, {"optim.name": "lion"}).optim.betas == [0.9, 0.99]
    assert load_config(None, {"optim.name": "lion", "optim.betas": [0.8, 0.9]}).optim.betas == [0.8, 0.9]
    assert load_config(None, {"optim.name": "muon", "optim.adamw_lr_ratio": 0.5}).optim.adamw_lr_ratio == 0.5
    with pytest.raises(ConfigError, match=r"optim.sophia_rho=0.1 is not read by optim.name=muon_kimi \(only by sophia\)"):
        load_config(None, {"optim.sophia_rho": 0.1})
    with pytest.raises(ConfigError, match="optim.adamw_lr_ratio=0.5 is not read by optim.name=adamw"):
        load_config(None, {"optim.name": "adamw", "optim.adamw_lr_ratio": 0.5})


def test_paper_rows_only_where_an_optimizer_has_a_row_of_its_own():
    with pytest.raises(ConfigError, match="scaling.paper_rows: optim.name=muon_kimi has no row of its own"):
        load_config(None, {"scaling.paper_rows": True})
    assert load_config(None, {"scaling.paper_rows": True, "optim.name": "soap"}).scaling.paper_rows


def test_an_older_config_reads_with_its_optimizers_unread_keys_null():
    """Before the registry every key had a value; a muon_kimi run saved then compares equal to one made today."""
    today = config.flat_dict(load_config(None))
    old = {**today, "optim.hessian_interval": 10, "optim.sophia_rho": 0.04, "optim.sso_radius": 1.0}
    del old["optim.max_precondition_dim"]  # added since
    assert with_defaults(old) == today


def test_help_lists_each_optimizer_and_its_own_defaults():
    out = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True, check=True).stdout
    for name, spec in registry.OPTIMIZERS.items():
        assert f"  {name} " in out
        for key, value in spec.defaults.items():
            assert f"{key}={value}" in out


@pytest.mark.parametrize("name", NAMES)
def test_the_built_optimizers_run_with_the_registry_defaults(name):
    cfg = tiny(**{"optim.name": name})
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    spec = registry.OPTIMIZERS[name]
    assert set(opt.optimizers) == {spec.hidden, spec.other}
    # the config key -> its name in the param groups (SOAP's interval is pytorch_optimizer's precondition_frequency)
    settings = {"betas": "betas", "sophia_rho": "rho", "sophia_clip": "clip", "sso_radius": "radius",
                "hessian_interval": "hessian_interval", "max_precondition_dim": "max_precondition_dim",
                "precondition_interval": "precondition_frequency" if name == "soap" else "precondition_interval"}
    for key, value in spec.defaults.items():
        if key not in settings:
            continue
        found = [tuple(g[settings[key]]) if key == "betas" else g[settings[key]]
                 for o in opt.optimizers.values() for g in o.param_groups if settings[key] in g]
        want = tuple(value) if key == "betas" else value
        assert found and set(found) == {want}, (key, found)


@pytest.mark.parametrize("name", NAMES)
def test_the_cost_model_counts_the_state_each_optimizer_keeps(name):
    """experiments.cost's state count (the registry's RULES over the scaling table) equals the bytes of the tensors
    in the optimizer's state after two steps, for every optimizer."""
    extra = {"optim.precondition_interval": 2} if name in ("shampoo", "soap") else {}
    cfg = tiny(**{"optim.name": name, **extra})
    torch.manual_seed(0)
    model, table = build_model(cfg)
    opt = build_optimizer(cfg, model, table)
    for _ in range(2):
        model(tokens(cfg), tokens(cfg, seed=1))[1].backward()
        opt.step()
        opt.zero_grad()
    kept = sum(t.numel() * t.element_size() for o in opt.optimizers.values() for state in o.state.values()
               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    kept += sum(t.numel() * t.element_size() for o in opt.optimizers.values() for state in o.state.values()
                for v in state.values() if isinstance(v, list) for t in v if torch.is_tensor(t))
    assert cost.optimizer_bytes(dataclasses.replace(cfg))[0] == kept
