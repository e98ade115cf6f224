"""Teacher-forced losses: per token, their means, and a validation pass's two losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla_ablate.data.tokens import ACTION, TokenLayout
from vla_ablate.precision import autocast


@torch.no_grad()
def token_losses(model, actions: torch.Tensor, device, batch_size: int = 256,
                 precision: str = "fp32") -> torch.Tensor:
    """Teacher-forced cross-entropy (nats) of every predicted token: (N, T - 1), on the CPU.

    ``precision`` is the run's compute precision, so validation scores the model as it trains.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(actions), batch_size):
            x = actions[i : i + batch_size].to(device)
            with autocast(precision, device):
                logits, _ = model(x[:, :-1])
            out.append(F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:],
                                       reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def mean_loss(model, actions: torch.Tensor, device, batch_size: int = 256,
              precision: str = "fp32", select: torch.Tensor | None = None) -> float:
    """Teacher-forced mean cross-entropy (nats per token) over all sequences in ``actions``;
    ``select`` (T - 1,) bool: only those targets (e.g. ``TokenLayout.action_targets``)."""
    return masked_mean(token_losses(model, actions, device, batch_size, precision), select)


def masked_mean(losses: torch.Tensor, select: torch.Tensor | None) -> float:
    """The mean of per-target losses (N, T - 1), over the targets ``select`` (None: all)."""
    return (losses if select is None else losses[:, select]).mean().item()


def validation_losses(model, seqs: torch.Tensor, device, layout: TokenLayout = ACTION,
                      precision: str = "fp32") -> tuple[float, float]:
    """(the training objective's loss, the action tokens' loss) on ``seqs``, from one pass.

    With the course's ``tokens=action`` both are the same number: every target is an action
    token (``TokenLayout.all_action_targets``)."""
    losses = token_losses(model, seqs, device, precision=precision)
    objective = masked_mean(losses, layout.objective_targets(seqs.shape[1]))
    if layout.all_action_targets:
        return objective, objective
    return objective, masked_mean(losses, layout.action_targets(seqs.shape[1]))
