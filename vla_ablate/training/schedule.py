"""What each training step sees: its batch and its learning rate, both pure functions of the step
(so a resumed run continues exactly as one that never stopped)."""

from __future__ import annotations

import math

import torch

from vla_ablate.data.process import derived_seed


class BatchSource:
    """Training batches as a pure function of the step: shuffled epochs, drop-last.

    Epoch e is a permutation seeded by (seed, e). With ``fresh`` (a callable epoch -> actions)
    every epoch draws new trajectories instead of repeating the same training split.
    """

    def __init__(self, actions: torch.Tensor, batch_size: int, seed: int, fresh=None):
        self.actions, self.batch_size, self.seed, self.fresh = actions, batch_size, seed, fresh
        n = len(actions)
        if n < batch_size:
            raise ValueError(f"train.batch_size ({batch_size}) exceeds the {n} training trajectories")
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm, self._epoch_actions = None, None, actions

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
            self._perm = torch.randperm(len(self.actions), generator=gen)
            self._epoch_actions = self.fresh(epoch) if self.fresh and epoch else self.actions
            self._epoch = epoch
        return self._epoch_actions[self._perm[i * self.batch_size : (i + 1) * self.batch_size]]


def lr_at(step: int, tcfg, steps: int | None = None) -> float:
    """The learning rate of step ``step``: linear warmup to ``lr`` over ``warmup_steps``, then

    - ``cosine``: cosine decay to ``min_lr``, reached at the horizon;
    - ``wsd`` (warmup-stable-decay, "trapezoidal"): ``lr`` held until the last ``decay_frac`` of
      the horizon, then a linear decay to ``min_lr``, reached at the horizon.

    The horizon is ``steps`` (default ``tcfg.steps``); a time budget sets a shorter one (see
    ``TimeBudget``), so either schedule decays within the budget.
    """
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    horizon = steps or tcfg.steps
    if getattr(tcfg, "schedule", "cosine") == "wsd":
        decay = max(1, round(tcfg.decay_frac * (horizon - tcfg.warmup_steps)))
        start = horizon - decay
        if step < start:
            return tcfg.lr
        progress = min(1.0, (step - start + 1) / decay)
        return tcfg.lr + (tcfg.min_lr - tcfg.lr) * progress
    span = max(1, horizon - tcfg.warmup_steps)
    progress = min(1.0, (step - tcfg.warmup_steps) / span)
    return tcfg.min_lr + 0.5 * (tcfg.lr - tcfg.min_lr) * (1 + math.cos(math.pi * progress))
