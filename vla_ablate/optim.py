"""Optimisers: AdamW, and Muon for the blocks' weight matrices (``train.optimizer``).

Muon (Jordan et al., 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") keeps a Nesterov
momentum of each matrix's gradient and replaces the update by its nearest semi-orthogonal
matrix, approximated with five Newton-Schulz iterations. Every direction of the update then
moves by the same amount, instead of the few that dominate the raw gradient. The update is
scaled by 0.2 * sqrt(max(rows, cols)) (Liu et al., 2025, "Muon is scalable for LLM training"),
which gives it the root-mean-square size of an AdamW update, so one learning rate and one weight
decay serve both. Muon applies to matrices only: embeddings, the output head and the norms' gains
stay with AdamW, as in both papers.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "muon")

# The quintic's coefficients from Jordan et al.: they push every singular value of the
# normalised matrix into roughly [0.7, 1.2] in five steps (exact orthogonality is not needed).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``grad``.

    ``grad`` is (rows, cols) or a stack (k, rows, cols) of same-shaped matrices, done at once.
    """
    a, b, c = _NS_COEFFS
    x = grad.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)  # all singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(grad.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation for 2-D parameters, decoupled weight decay."""

    def __init__(self, params, lr=3e-3, momentum=0.95, weight_decay=0.0, ns_steps=5):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes matrices only, got a {p.dim()}-D parameter")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                by_shape.setdefault(tuple(p.shape), []).append((p, p.grad.add(buf, alpha=mu)))
            for shape, items in by_shape.items():  # one batched orthogonalisation per shape
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                scale = lr * 0.2 * max(shape) ** 0.5
                for (p, _), update in zip(items, updates):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-scale)
        return loss


class CombinedOptimizer:
    """Several optimisers stepped as one (state dicts, learning rates and zero_grad together).

    ``param_groups`` lists every group of every optimiser, so the training loop's learning-rate
    schedule sets them all.
    """

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self):
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state):
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError("the checkpoint's optimizer state is for a different optimizer")
        for opt, s in zip(self.optimizers, saved):
            opt.load_state_dict(s)


def make_optimizer(model, tcfg):
    """The optimiser ``train.optimizer`` names; weight decay on matrices only, never on gains.

    ``adamw``: AdamW (0.9, 0.95) for every parameter. ``muon``: Muon for the weight matrices
    inside the Transformer blocks, AdamW for the token embedding, the output head, the norms and
    any positional table.
    """
    name = tcfg.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got '{name}'")
    hidden = []
    if name == "muon":
        hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    taken = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in taken]
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    if not hidden:
        return adamw
    muon = Muon(hidden, lr=tcfg.lr, momentum=0.95, weight_decay=tcfg.weight_decay)
    return CombinedOptimizer([muon, adamw])
