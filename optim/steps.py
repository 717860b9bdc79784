"""What every optimizer step written here starts with: torch.optim's closure protocol, and the parameters of a
group that have a gradient this step."""

import torch


def closure_loss(closure):
    """The loss of `closure` re-evaluated with gradients enabled (torch.optim's protocol), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def with_grad(group: dict) -> list:
    return [p for p in group["params"] if p.grad is not None]
