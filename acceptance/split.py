"""The split check's worker, started by torchrun on every rank:

    torchrun --nproc_per_node=N -m acceptance.split CONFIG OVERRIDES_JSON      rank 0 prints RESULT {json}

For each optimizer whose hidden matrices have their own rule (Muon-Kimi, Muon, Shampoo, SOAP, SSO), the same
model trained 3 steps on the same gradients on every rank (as DDP's all-reduce leaves them) by the split
optimizer (optim/split.py: each matrix stepped by its owner, one all-gather) and by the unsplit one, every rank
stepping every matrix: the weights must agree on every rank. On CPU they are equal bit for bit
(tests/test_split.py); on GPUs an owner batches a smaller stack of each shape into Newton-Schulz, and cuBLAS may
pick another kernel for it, so what is reported is the largest difference over the largest update.
"""

import json
import sys

import torch
import torch.distributed as dist

from acceptance.memory import RandomBatches
from acceptance.optimizers import own
from config import load_config
from mup.scaling import build_model
from optim import registry
from optim.hybrid import build_optimizer
from trainer.runtime import Runtime


def trained(cfg, rt, split: bool) -> list[torch.Tensor]:
    """The weights after 3 steps (the same batches on every rank), from the same initial weights."""
    torch.manual_seed(cfg.train.seed)
    model, table = build_model(cfg, rt.device)
    opt = build_optimizer(cfg, model, table, split=split)
    batches = RandomBatches(cfg.model.vocab_size, cfg.model.block_size)
    for step in range(3):
        x, y = rt.to_device(batches.get(step, 0, cfg.train.micro_batch_size))
        with rt.autocast:
            loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    return [p.detach() for p in model.parameters()]


def compare(name: str, config: str, overrides: dict, rt: Runtime) -> dict:
    cfg = load_config(config, {**overrides, **own(name)})
    torch.manual_seed(cfg.train.seed)
    start = [p.detach().clone() for p in build_model(cfg, rt.device)[0].parameters()]
    split, every = trained(cfg, rt, True), trained(cfg, rt, False)
    stats = torch.tensor([sum(not torch.equal(a, b) for a, b in zip(split, every)),
                          max((a.float() - b.float()).abs().max().item() for a, b in zip(split, every)),
                          max((b.float() - s.float()).abs().max().item() for b, s in zip(every, start))],
                         dtype=torch.float64, device=rt.device)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)  # the worst rank
    unequal, diff, update = stats.tolist()
    return {"tensors": len(split), "unequal": int(unequal), "max_diff": diff, "max_update": update}


def split_worker(config: str, overrides: dict) -> dict | None:
    cfg = load_config(config, overrides)
    rt = Runtime(cfg)
    rt.start()
    names = [n for n, o in registry.OPTIMIZERS.items() if o.hidden != o.other]
    result = {"world": rt.world, "optimizers": {n: compare(n, config, overrides, rt) for n in names}}
    rt.stop(together=True)
    return result if rt.master else None


if __name__ == "__main__":
    found = split_worker(sys.argv[1], json.loads(sys.argv[2]))
    if found is not None:
        print("RESULT " + json.dumps(found), flush=True)
