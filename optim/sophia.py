"""SophiaG: Liu et al. (2023), "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", Algorithm 3 with the Gauss-Newton-Bartlett (GNB) estimator of Algorithm 2.

Written here because no package has it: pytorch_optimizer ships SophiaH (the Hutchinson estimator, which needs
a double backward), and the authors' SophiaG is a file in their training repository, not a package. This one
keeps their update step for step (decoupled weight decay, EMA momentum, per-coordinate clipped ratio) and
differs in two places, both taken from the paper rather than the script:
- the denominator is max(rho h, eps) with the scaling table's eps (the script adds a fixed 1e-15);
- the estimate stores B g*g with B the tokens of the estimation batch (Algorithm 2), where the script stores
  g*g and multiplies by the training batch's tokens at each step: a constant factor absorbed in rho.
"""

import torch

from optim.steps import closure_loss, with_grad


class SophiaG(torch.optim.Optimizer):
    """theta <- theta (1 - lr wd) - lr clip(m / max(rho h, eps), clip); m = EMA(g, beta1), h = EMA of the GNB
    estimate B g_hat * g_hat (beta2), refreshed by `update_hessian` after every `hessian_interval`-th step."""

    def __init__(self, params, *, lr: float = 1e-4, betas=(0.965, 0.99), rho: float = 0.04, clip: float = 1.0,
                 eps: float = 1e-15, weight_decay: float = 0.0, hessian_interval: int = 10):
        checks = {"lr": lr >= 0, "betas": len(betas) == 2 and all(0 <= b < 1 for b in betas), "rho": rho > 0,
                  "clip": clip > 0, "eps": eps >= 0, "weight_decay": weight_decay >= 0,
                  "hessian_interval": isinstance(hessian_interval, int) and hessian_interval >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SophiaG: invalid {name}: {locals()[name]!r}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, clip=clip, eps=eps, weight_decay=weight_decay,
                        hessian_interval=hessian_interval)
        super().__init__(params, defaults)

    def hessian_due(self, step: int) -> bool:
        """After 0-based step `step`: steps k-1, 2k-1, ..., as the authors' loop; the first k steps see h = 0,
        i.e. clipped sign-momentum updates. One estimate serves every group: k is the optimizer's."""
        return (step + 1) % self.defaults["hessian_interval"] == 0

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self, batch_tokens: int) -> None:
        """h <- beta2 h + (1 - beta2) B g*g, g = the current gradients of a sampled-label loss averaged over
        B = batch_tokens tokens (`sampled_label_backward`, summed over micro-batches and ranks)."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=(1 - beta2) * batch_tokens)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, beta1, rho, clip = group["lr"], group["betas"][0], group["rho"], group["clip"]
            for p in with_grad(group):
                state = self._state(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * group["weight_decay"])
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                # eps = 0 would divide 0 by 0 where h is still 0: the smallest normal float stands in for it
                floor = max(group["eps"], torch.finfo(p.dtype).tiny)
                ratio = (m / (rho * state["hessian"]).clamp(min=floor)).clamp_(-clip, clip)
                p.add_(ratio, alpha=-lr)
        return loss


def sampled_label_backward(model: torch.nn.Module, x: torch.Tensor, autocast, label_seeds: list[int],
                           dropout_seed: int, weight: float) -> None:
    """Backward of `weight` x the mean cross-entropy of the model's logits on x against labels drawn from its own
    softmax (Algorithm 2): a share of the gradient g_hat of the GNB estimate. Sequence i's labels are drawn by a
    generator seeded with label_seeds[i], so they do not depend on how the estimation batch is split into ranks
    and micro-batches; dropout masks come from `dropout_seed`; the global RNG is left as it was.

    No (tokens, vocab) logits exist: `model` (the bare GPT) gives its final features, one sequence's logits at a
    time are made, sampled from and freed under no_grad, and the loss is the chunked linear cross-entropy
    (model.Head.loss). Whole logits and their float32 softmax were ~6 GiB at n=4096, micro-batch 15."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(dropout_seed)
        with autocast:
            features = model.features(x)
        labels = []
        with torch.no_grad(), autocast:
            for h, seed in zip(features, label_seeds):
                probs = torch.softmax(model.head(h), -1, dtype=torch.float32)
                generator = torch.Generator(device=x.device).manual_seed(seed)
                labels.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
                del probs
        with autocast:
            loss = model.head.loss(features, torch.stack(labels))
        (loss * weight).backward()
