"""Optimisers: AdamW, and Muon for the blocks' weight matrices (``train.optimizer``).

Muon (Jordan et al., 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") keeps a Nesterov
momentum of each matrix's gradient and replaces the update by its nearest semi-orthogonal
matrix, approximated with five Newton-Schulz iterations. Every direction of the update then
moves by the same amount, instead of the few that dominate the raw gradient. The update is
scaled by 0.2 * sqrt(max(rows, cols)) (Liu et al., 2025, "Muon is scalable for LLM training"),
which gives it the root-mean-square size of an AdamW update, so one learning rate and one weight
decay serve both. Muon applies to matrices only: embeddings, the output head and the norms' gains
stay with AdamW, as in both papers.

The Muon used is ``torch.optim.Muon`` (``adjust_lr_fn="match_rms_adamw"``) where the device
computes bf16 in hardware (a CPU with AVX512-BF16 or AMX, a CUDA device with bf16): torch runs
the Newton-Schulz iterations per matrix in bf16, faster there than the project's batched float32
version, the updates differing by bf16 rounding. Elsewhere bf16 is emulated and torch's step is
slow beyond use, so ``Float32Muon`` does the same update with the iterations in float32, batched
over same-shaped matrices (``python benchmarks/optimizer_step.py``; the figures per host:
docs/benchmarks.md, "Muon: torch's or ours"). Which one a run used is part of its training configuration
(``train.muon_newton_schulz``, recorded only where it is float32, so that models trained before
keep their keys).
"""

from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr

from vla_ablate.precision import bf16_native

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")  # the learning-rate schedules (training/schedule.py)


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
            # a group saved by another implementation lacks this one's settings
            for group, old in zip(opt.param_groups, s["param_groups"]):
                missing = set(group) - set(old) - {"params"}
                if missing:
                    raise ValueError(f"the checkpoint's optimizer state is for a different "
                                     f"optimizer (no {', '.join(sorted(missing))})")
            opt.load_state_dict(s)


# The quintic's coefficients (Jordan et al.): five iterations push every singular value of the
# normalised matrix into roughly [0.7, 1.2]; exact orthogonality is not needed. torch's default.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coefficients=NS_COEFFICIENTS) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``grad``, computed
    in float32: ``grad`` is (rows, cols) or a stack (k, rows, cols) of same-shaped matrices,
    done at once. The iteration of ``torch.optim.Muon`` (normalise by the Frobenius norm, then
    X <- aX + (bG + cG^2)X with G = XX^T on the wide orientation), in float32 instead of bf16."""
    a, b, c = coefficients
    x = grad.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)  # singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(grad.dtype)


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon``'s update (its momentum, Nesterov, weight decay and learning-rate
    adjustment, its settings and state dict) with the Newton-Schulz iterations in float32,
    batched over matrices of the same shape: for devices without native bf16."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            by_shape: dict[tuple, list] = {}
            for p, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, items in by_shape.items():  # one batched orthogonalisation per shape
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"],
                                        group["eps"], group["ns_coefficients"])
                adjusted = _adjust_lr(lr, group["adjust_lr_fn"], shape)  # torch's own
                for (p, _), update in zip(items, updates):
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-adjusted)
        return loss


def newton_schulz_precision(device: torch.device) -> str:
    """``bf16`` (torch.optim.Muon) where ``device`` computes bf16 in hardware, else ``fp32``
    (``Float32Muon``)."""
    return "bf16" if bf16_native(device) else "fp32"


def own_rate(rate: float | None, lr: float) -> float | None:
    """``train.embed_lr`` or ``train.head_lr`` as it trains: None where it is null or equal to
    ``lr`` (the same groups, so the same model; ``config.identity`` keys models by it too)."""
    return None if rate is None or rate == lr else rate


def _adamw_groups(rest, tcfg) -> tuple[list[dict], list[float]]:
    """The AdamW parameter groups and each one's learning rate as a multiple of ``train.lr``.

    Without ``train.embed_lr`` and ``train.head_lr`` (null, or equal to ``train.lr``) two groups,
    matrices (decayed) and gains (not), both at ``train.lr``: the groups every model before these
    keys was trained with. With either, four: the token embedding and any positional table at
    ``embed_lr``; the output head at ``head_lr``; every norm's gain (each block's two and the
    final one) at ``head_lr`` too, one rate for the small AdamW-only parameters at the output
    side of each block; any other matrix at ``lr``. Each follows the schedule scaled by its rate
    over ``lr``.
    """
    embed_lr = own_rate(getattr(tcfg, "embed_lr", None), tcfg.lr)
    head_lr = own_rate(getattr(tcfg, "head_lr", None), tcfg.lr)
    decay = [p for _, p in rest if p.dim() >= 2]
    no_decay = [p for _, p in rest if p.dim() < 2]
    if embed_lr is None and head_lr is None:
        return ([{"params": decay, "weight_decay": tcfg.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], [1.0, 1.0])
    embed_lr = tcfg.lr if embed_lr is None else embed_lr
    head_lr = tcfg.lr if head_lr is None else head_lr
    head = [p for n, p in rest if n.startswith("lm_head.")]
    embed = [p for n, p in rest
             if p.dim() >= 2 and not n.startswith("lm_head.") and not n.startswith("blocks.")]
    taken = {id(p) for p in head + embed + no_decay}
    other = [p for p in decay if id(p) not in taken]
    groups = [({"params": embed, "weight_decay": tcfg.weight_decay}, embed_lr),
              ({"params": head, "weight_decay": tcfg.weight_decay}, head_lr),
              ({"params": no_decay, "weight_decay": 0.0}, head_lr),
              ({"params": other, "weight_decay": tcfg.weight_decay}, tcfg.lr)]
    groups = [(g, lr) for g, lr in groups if g["params"]]
    return [g for g, _ in groups], [lr / tcfg.lr for _, lr in groups]


def make_optimizer(model, tcfg):
    """The optimiser ``train.optimizer`` names; weight decay on matrices only, never on gains.

    ``adamw``: AdamW (0.9, 0.95) for every parameter. ``muon``: Muon (momentum
    ``train.muon_momentum``) for the weight matrices inside the Transformer blocks, AdamW for the
    token embedding, the output head, the norms and any positional table (their rates:
    ``_adamw_groups``). The optimiser's ``lr_scales`` lists, for each of its ``param_groups``,
    its learning rate as a multiple of the schedule's (``train.lr``'s).
    """
    name = tcfg.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got '{name}'")
    hidden = []
    if name == "muon":
        hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    taken = {id(p) for p in hidden}
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in taken]
    groups, scales = _adamw_groups(rest, tcfg)
    adamw = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), eps=1e-8)
    if not hidden:
        adamw.lr_scales = scales
        return adamw
    device = hidden[0].device
    kind = torch.optim.Muon if newton_schulz_precision(device) == "bf16" else Float32Muon
    muon = kind(hidden, lr=tcfg.lr, momentum=getattr(tcfg, "muon_momentum", 0.95),
                weight_decay=tcfg.weight_decay, nesterov=True, adjust_lr_fn="match_rms_adamw")
    combined = CombinedOptimizer([muon, adamw])
    combined.lr_scales = [1.0] + scales
    return combined
