"""A matrix optimizer's work split across ranks: each rank steps its share of the hidden matrices, then every
rank receives every updated matrix.

Under DDP every rank holds the same all-reduced gradients, so running Muon's Newton-Schulz, Shampoo's roots,
SOAP's eigenbases or SSO's bisection on every rank repeats the same work N times (Shampoo at n=4096: ~53 TFLOP
of float64 a step on each rank). As distributed Muon implementations do (modded-nanogpt's, microsoft/dion's),
`Split` gives each matrix one owner: only the owner steps it (the others' gradients are hidden for that call,
so the inner optimizer creates no state for them) and keeps its state, and one all-gather hands the updated
matrices to every rank.

Ownership is a pure function of the matrices' names, shapes and costs (optim/registry.py's step FLOPs), so
every rank computes the same one: greedy longest-processing-time, the costliest first, each to the least
loaded rank. Ties are taken by shape then name, so a shape's matrices go round the ranks in turn and each rank
still batches its own stack of every shape (Muon's batched Newton-Schulz).

Communication: on NCCL one all_gather_single a step, each rank contributing its share flattened into a buffer
padded to the largest share. One broadcast per owner would send no padding but cost N collectives, each a
synchronization; shares balanced by cost hold nearly equal bytes: the padding (`padding`) is 0% at every
depth of the shipped sweeps (L = 4 to 256, on 2, 4 or 8 ranks), and up to a third only for a few matrices a rank
(L = 2, 3 on 8 ranks). On gloo (CPU) each owner broadcasts its share instead: gloo's allgather is the slow
collective there (2 processes, 12.6 MB a rank: all_gather 21.4 ms, a broadcast from each rank 7.9 ms in all, an
all_reduce of both shares 15.7 ms). Either way values are copied, so a split step is bit for bit the unsplit
one on every rank (tests/test_split.py).

Checkpoints keep one process's format: state_dict() gathers every owner's state onto rank 0 (a collective:
every rank calls it, as train.py's Run.save does; the other ranks get their own share), and
load_state_dict() of the full state keeps only the owned matrices' state, on any number of ranks.
"""

import torch
import torch.distributed as dist


def assign(matrices: list[tuple[str, tuple, float]], world: int) -> dict[str, int]:
    """{name: owner rank} of `matrices` (name, shape, cost): longest processing time first, ties by shape then
    name, each to the least loaded rank (the lowest on a tie)."""
    load = [0.0] * world
    owner = {}
    for name, _, cost in sorted(matrices, key=lambda m: (-m[2], tuple(m[1]), m[0])):
        rank = min(range(world), key=lambda r: load[r])
        owner[name] = rank
        load[rank] += cost
    return owner


def padding(shares: list[list[int]]) -> float:
    """The gather's padded elements over the matrices' elements, for each rank's list of matrix sizes."""
    totals = [sum(s) for s in shares]
    return (len(shares) * max(totals) - sum(totals)) / sum(totals)


class Split:
    """`inner` (a torch optimizer over hidden matrices, param groups carrying "names") stepped by each matrix's
    owner only, with `cost(shape)` the FLOPs of one matrix's step; the rest of torch.optim's interface is
    inner's."""

    def __init__(self, inner: torch.optim.Optimizer, cost):
        self.inner = inner
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        named = [(n, p) for g in inner.param_groups for n, p in zip(g["names"], g["params"])]
        self.params = [p for _, p in named]
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("Split gathers the matrices in one buffer: they must share one dtype and device")
        owner = assign([(n, tuple(p.shape), cost(tuple(p.shape))) for n, p in named], self.world)
        self.owners = [owner[n] for n, _ in named]
        with torch.no_grad():  # flat aliases of the matrices, made once: the gather's copies need no views a step
            flat = [p.detach().view(-1) for p in self.params]
        self.shares = [[f for f, r in zip(flat, self.owners) if r == rank] for rank in range(self.world)]
        self.size = max(sum(f.numel() for f in share) for share in self.shares)
        gloo = dist.get_backend() == "gloo"
        self.broadcasts = gloo  # how gather() sends the shares (the module's docstring says why)
        # objects (the checkpoint's state) travel over gloo: NCCL would stage them on a GPU
        self.objects = None if gloo else dist.new_group(backend="gloo")

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @torch.no_grad()
    def step(self) -> None:
        others = [(p, p.grad) for p, r in zip(self.params, self.owners) if r != self.rank]
        for p, _ in others:
            p.grad = None
        try:
            self.inner.step()
        finally:
            for p, g in others:
                p.grad = g
        self.gather()

    def gather(self) -> None:
        """Every rank's updated share into every rank's matrices: one all_gather_single over padded shares, or on
        gloo one broadcast per owner."""
        if self.broadcasts:
            for rank, share in enumerate(self.shares):
                if not share:
                    continue
                sizes = [f.numel() for f in share]
                buffer = torch.cat(share) if rank == self.rank else share[0].new_empty(sum(sizes))
                dist.broadcast(buffer, src=rank)
                if rank != self.rank:
                    torch._foreach_copy_(share, buffer.split(sizes))
            return
        mine = self.shares[self.rank]
        filled = sum(f.numel() for f in mine)
        first = self.params[0]
        send = torch.cat([*mine, first.new_zeros(self.size - filled)])
        received = first.new_empty(self.world * self.size)
        dist.all_gather_single(received, send)
        targets, pieces = [], []
        for rank, share in enumerate(self.shares):
            if rank != self.rank and share:
                part = received[rank * self.size: rank * self.size + sum(f.numel() for f in share)]
                targets += share
                pieces += part.split([f.numel() for f in share])
        torch._foreach_copy_(targets, pieces)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """One process's state dict on rank 0 (every owner's state, on the CPU); on the other ranks, their own
        share. Every rank must call it."""
        ours = self.inner.state_dict()
        share = {i: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()} for i, s in ours["state"].items()}
        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(share, parts, dst=0, group=self.objects)
        if self.rank != 0:
            return ours
        state = {i: s for part in parts for i, s in part.items()}
        return {"state": dict(sorted(state.items())), "param_groups": ours["param_groups"]}

    def load_state_dict(self, state_dict: dict) -> None:
        """A full (one-process) state dict; only the owned matrices' state is kept."""
        owned = {i: s for i, s in state_dict["state"].items() if self.owners[i] == self.rank}
        self.inner.load_state_dict({**state_dict, "state": owned})
