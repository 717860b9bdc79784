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
from bench.common import gloo
from tests.conftest import TINY_RUN, assert_same_state, losses, overrides, tiny, tokens

MATRIX = [name for name, o in registry.OPTIMIZERS.items() if o.hidden != o.other]  # split across ranks


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
    for shape in ({"model.n_embd": 4096, "model.n_layer": 4}, {"model.n_embd": 256, "model.n_layer": 256},
                  {"model.n_embd": 128, "model.n_layer": 4}):
        cfg = load_config(None, shape)
        matrices = hidden_matrices(cfg)
        owner = assign(matrices, 8)
        shares = [[sum(s[0] * s[1] for n, s, _ in matrices if owner[n] == r)] for r in range(8)]
        assert padding(shares) < 0.1, shape


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


@pytest.mark.parametrize("name", MATRIX)
def test_split_step_state_and_checkpoint_are_the_unsplit_ones_bitwise(tmp_path, name):
    """2 gloo processes: the split optimizer's weights after 3 steps, its checkpoint (gathered on rank 0) and 2
    more steps after loading that checkpoint equal the unsplit optimizer's bit for bit; each rank keeps the
    state of its own matrices only, and the two shares are disjoint and cover every matrix."""
    gloo(split_matches_unsplit, 2, name, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    owned = [set(r["owned"]) for r in ranks]
    assert not owned[0] & owned[1]
    assert owned[0] | owned[1] == set(ranks[0]["state"][registry.rules_of(name)[0]]["state"])
    # the memory estimate counts the state of the most loaded rank, by the same ownership
    assert max(r["bytes"] for r in ranks) == cost.optimizer_bytes(split_config(name), world=2, device="cpu")[0]


def gathers_agree(rank, world, out):
    """Each rank holds only its own matrices' new values; both ways of sending them (gloo's broadcasts, NCCL's
    all-gather of padded shares) leave every rank with all of them, bit for bit."""
    cfg = split_config("muon_kimi")
    _, opt = fresh(cfg, split=True)
    inner = opt.optimizers[registry.rules_of("muon_kimi")[0]]
    new = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(inner.params)]
    assert inner.broadcasts  # gloo's way by default
    for broadcasts in (True, False):
        inner.broadcasts = broadcasts
        with torch.no_grad():
            for p, v, r in zip(inner.params, new, inner.owners):
                p.copy_(v if r == rank else torch.zeros_like(v))
        inner.gather()
        assert all(torch.equal(p, v) for p, v in zip(inner.params, new)), broadcasts


def test_both_gathers_hand_every_rank_every_matrix(tmp_path):
    gloo(gathers_agree, 2, tmp_path)


def train_py(out, world, run, env, **extra):
    """train.py on `world` processes (torchrun, gloo) with `run` and `extra` set."""
    import subprocess
    import sys

    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
                                 if world > 1 else [])
    done = subprocess.run([*launch, "train.py", *overrides({**run, **extra, "train.out_dir": out})], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_checkpoint_of_two_split_ranks_resumes_on_two_bitwise_and_on_one(tmp_path, tiny_corpus):
    """SOAP (eigenbases refreshed every 2 steps, its state lists of tensors) trained by 2 processes and stopped
    after step 2: its checkpoint holds one process's optimizer state (every matrix, the same indices and shapes);
    resumed on 2 processes or on 1 it ends bit for bit as the straight 2-process run. One process is exact here
    because its two micro-batches' halved gradients add up to DDP's halved sum of two ranks' (halving is exact);
    with more ranks the all-reduce's order of summation makes them differ by float rounding."""
    import os
    import shutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = {**TINY_RUN, "data.dataset": tiny_corpus, "train.batch_size": 8, "train.micro_batch_size": 4,
           "train.max_iters": 4, "train.ckpt_interval": 2, "optim.name": "soap", "optim.precondition_interval": 2}
    train_py(tmp_path / "straight", 2, run, env)
    train_py(tmp_path / "one", 1, run, env, **{"train.stop_after": 2})
    train_py(tmp_path / "two", 2, run, env, **{"train.stop_after": 2})
    one, two = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["optim"] for d in ("one", "two"))
    for rule in one:
        assert one[rule]["state"].keys() == two[rule]["state"].keys(), rule
        for i, s in one[rule]["state"].items():
            shapes = {k: [t.shape for t in v] if isinstance(v, list) else getattr(v, "shape", v) for k, v in s.items()}
            assert shapes == {k: [t.shape for t in v] if isinstance(v, list) else getattr(v, "shape", v)
                              for k, v in two[rule]["state"][i].items()}, (rule, i)
    shutil.copytree(tmp_path / "two", tmp_path / "two_on_one")
    train_py(tmp_path / "two", 2, run, env, **{"train.resume": "auto"})
    train_py(tmp_path / "two_on_one", 1, run, env, **{"train.resume": "auto"})
    straight, resumed, on_one = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"]
                                 for d in ("straight", "two", "two_on_one"))
    assert losses(tmp_path / "two") == losses(tmp_path / "straight")
    assert losses(tmp_path / "two_on_one") == losses(tmp_path / "straight")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]) and torch.equal(on_one[k], straight[k]), k
