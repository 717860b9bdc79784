"""The matrix optimizers' work split across ranks (optim/split.py): who owns what, and that a split step, its
state and its checkpoint are bit for bit those of every rank stepping every matrix."""

import collections
import copy

import pytest
import torch

from config import load_config
from experiments import cost
from mup.scaling import build_model, table_for
from optim import registry
from optim.hybrid import build_optimizer
from optim.split import Split, assign, padding
from tests.conftest import gloo, tiny, tokens

MATRIX = ["muon_kimi", "muon", "shampoo", "soap", "sso"]


def hidden_matrices(cfg):
    cost = registry.RULES[registry.rules_of(cfg.optim.name)[0]].step_flops
    return [(r.name, tuple(r.shape), cost(r.shape, cfg.optim)) for r in table_for(cfg) if r.role == "hidden"]


@pytest.mark.parametrize("world", [2, 3, 8])
def test_owners_balance_the_cost_and_take_each_shape_in_turn(world):
    cfg = load_config(None, {"model.n_layer": 8, "model.n_embd": 256})
    matrices = hidden_matrices(cfg)
    owner = assign(matrices, world)
    assert owner == assign(list(reversed(matrices)), world)  # a function of the matrices, not of their order
    load = collections.Counter()
    per_shape = collections.defaultdict(collections.Counter)
    for name, shape, flops in matrices:
        load[owner[name]] += flops
        per_shape[shape][owner[name]] += 1
    assert max(load.values()) - min(load.values()) <= max(c for _, _, c in matrices)  # greedy's bound
    for shape, counts in per_shape.items():  # every rank batches a stack of every shape
        assert len(counts) == world, shape


def test_paper_shapes_gather_with_little_padding():
    """One all-gather a step, over shares padded to the largest: what the padding costs at the sweeps' extremes."""
    for overrides in ({"model.n_embd": 4096, "model.n_layer": 4}, {"model.n_embd": 256, "model.n_layer": 256},
                      {"model.n_embd": 128, "model.n_layer": 4}):
        cfg = load_config(None, overrides)
        matrices = hidden_matrices(cfg)
        owner = assign(matrices, 8)
        shares = [[sum(s[0] * s[1] for n, s, _ in matrices if owner[n] == r)] for r in range(8)]
        assert padding(shares) < 0.1, overrides


def steps(model, opt, cfg, start, count):
    for s in range(start, start + count):
        x = tokens(cfg, seed=s)
        model(x, x.roll(-1, 1))[1].backward()  # the same gradients on every rank, as DDP's all-reduce leaves them
        opt.step()
        opt.zero_grad()


def fresh(cfg, split):
    torch.manual_seed(0)
    model, table = build_model(cfg)
    return model, build_optimizer(cfg, model, table, split=split)


def split_config(name):
    intervals = {f"optim.{k}": 2 for k in ("precondition_interval",) if registry.reads(name, k)}
    return tiny(**{"optim.name": name, "optim.weight_decay": 0.1, "optim.ns_batched": True, **intervals})


def state_bytes(opt) -> int:
    """Bytes of the tensors in every state of a Hybrid (lists of tensors included)."""
    def walk(x):
        if torch.is_tensor(x):
            return x.numel() * x.element_size() if x.dim() > 0 else 0
        if isinstance(x, (list, tuple)):
            return sum(map(walk, x))
        return sum(map(walk, x.values())) if isinstance(x, dict) else 0

    return sum(walk(dict(o.state)) for o in opt.optimizers.values())


def split_matches_unsplit(rank, world, name, out):
    cfg = split_config(name)
    hidden = registry.rules_of(name)[0]
    model, opt = fresh(cfg, split=False)
    steps(model, opt, cfg, 0, 3)
    ref = opt.state_dict()
    split_model, split_opt = fresh(cfg, split=True)
    steps(split_model, split_opt, cfg, 0, 3)
    inner = split_opt.optimizers[hidden]
    assert isinstance(inner, Split) and not isinstance(opt.optimizers[hidden], Split)
    for (n, a), b in zip(model.named_parameters(), split_model.parameters()):
        assert torch.equal(a, b), n
    owned = [i for i, r in enumerate(inner.owners) if r == rank]
    assert 0 < len(owned) < len(inner.params)
    assert set(inner.state) == {inner.params[i] for i in owned}  # state only where this rank steps
    saved = split_opt.state_dict()
    if rank == 0:  # one process's checkpoint: every owner's state, the same indices, bit for bit
        assert_same_state(saved, ref)
    torch.save({"owned": owned, "state": saved, "bytes": state_bytes(split_opt)}, out / f"rank{rank}.pt")

    # the full state loaded on every rank: each keeps its own share and continues as the unsplit optimizer
    resumed_model, resumed = fresh(cfg, split=True)
    resumed_model.load_state_dict(split_model.state_dict())
    resumed.load_state_dict(copy.deepcopy(ref))  # a checkpoint's copy: torch's load keeps tensors it can
    reloaded = resumed.optimizers[hidden]
    assert set(reloaded.state) == {reloaded.params[i] for i in owned}
    steps(model, opt, cfg, 3, 2)
    steps(resumed_model, resumed, cfg, 3, 2)
    for (n, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), n


def same(a, b) -> bool:
    """Equal bit for bit, through the lists and dicts of an optimizer's state."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for rule in a:
        assert a[rule]["param_groups"] == b[rule]["param_groups"], rule
        assert a[rule]["state"].keys() == b[rule]["state"].keys(), rule
        for i, s in a[rule]["state"].items():
            assert same(s, b[rule]["state"][i]), (rule, i)


@pytest.mark.parametrize("name", MATRIX)
def test_split_step_state_and_checkpoint_are_the_unsplit_ones_bitwise(tmp_path, name):
    """2 gloo processes: the split optimizer's weights after 3 steps, its checkpoint (gathered on rank 0) and 2
    more steps after loading that checkpoint equal the unsplit optimizer's bit for bit; each rank keeps the
    state of its own matrices only, and the two shares are disjoint and cover every matrix."""
    gloo(tmp_path, split_matches_unsplit, 2, name, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    owned = [set(r["owned"]) for r in ranks]
    assert not owned[0] & owned[1]
    assert owned[0] | owned[1] == set(ranks[0]["state"][registry.rules_of(name)[0]]["state"])
    # the memory estimate counts the state of the most loaded rank, by the same ownership
    assert max(r["bytes"] for r in ranks) == cost.optimizer_bytes(split_config(name), world=2, device="cpu")[0]
