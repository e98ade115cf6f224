"""Optimisers: AdamW, and Muon for the blocks' weight matrices (``train.optimizer``).

Muon (Jordan et al., 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") keeps a Nesterov
momentum of each matrix's gradient and replaces the update by its nearest semi-orthogonal
matrix, approximated with five Newton-Schulz iterations. Every direction of the update then
moves by the same amount, instead of the few that dominate the raw gradient. The update is
scaled by 0.2 * sqrt(max(rows, cols)) (Liu et al., 2025, "Muon is scalable for LLM training"),
which gives it the root-mean-square size of an AdamW update, so one learning rate and one weight
decay serve both. Muon applies to matrices only: embeddings, the output head and the norms' gains
stay with AdamW, as in both papers.

The Muon used is ``torch.optim.Muon`` (``adjust_lr_fn="match_rms_adamw"``). The project had its
own, which batched the Newton-Schulz iterations of same-shaped matrices in float32; torch's runs
them per matrix in bf16, and on the default model's 20 matrices its step took 0.43x the time of
ours in the same run (43 vs 100 ms; ``python benchmarks/optimizer_step.py``, docs/benchmarks.md),
the updates differing by at most 4.6% (bf16 rounding). The faster one stays; the batched
version lives on in the benchmark as its baseline.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "muon")


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
    muon = torch.optim.Muon(hidden, lr=tcfg.lr, momentum=0.95, weight_decay=tcfg.weight_decay,
                            nesterov=True, adjust_lr_fn="match_rms_adamw")
    return CombinedOptimizer([muon, adamw])
