"""A LeRobot dataset as the model's token sequences (``data=lerobot``).

Episodes are split into training and validation by episode (seeded by ``data.seed``), never by
window. The tokenizers are fitted on the training episodes alone. A training sequence is
``window`` consecutive steps of one episode: each epoch draws ``len // window`` windows of every
training episode at fresh offsets (``tokenizer.windows``); episodes shorter than the window
give none and are counted in the log (never padded). Validation is fixed: the consecutive,
non-overlapping windows of the validation episodes from their first step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vla_ablate.data.lerobot import Episodes
from vla_ablate.data.process import derived_seed
from vla_ablate.data.tokenizer import Tokenizers, fit_tokenizers, split_episodes, windows
from vla_ablate.data.tokens import TokenLayout
from vla_ablate.errors import DataError


def robot_layout(action_dims: int, state_names, bins: int, loss: str = "all") -> TokenLayout:
    """The layout of a continuous-action dataset: D action tokens a step (one per dimension),
    after the step's state tokens where ``state_names`` are given (``tokens=state_action``)."""
    return TokenLayout(state=tuple(state_names or ()), bins=bins, loss=loss, actions=action_dims,
                       action_bins=bins, continuous=True)


@dataclass
class RobotData:
    """The dataset's episodes, their split, tokenizers and token sequences."""

    episodes: Episodes
    layout: TokenLayout
    tokenizers: Tokenizers
    train: np.ndarray  # episode indices
    val: np.ndarray
    window: int
    seed: int  # the run's seed: training windows depend on it
    data_seed: int
    sequences: list[torch.Tensor] = field(default_factory=list)  # per episode, (T_e * per_step,)

    @classmethod
    def build(cls, episodes: Episodes, layout: TokenLayout, window: int, train_split: float,
              data_seed: int, seed: int, kind: str, tokenizers: Tokenizers | None = None,
              split: tuple[np.ndarray, np.ndarray] | None = None,
              dataset: dict | None = None) -> RobotData:
        """Split (unless ``split`` is given), fit (unless ``tokenizers`` are given: a trained
        model's; fitted ones record ``dataset``, ``Tokenizers.dataset``), tokenize. A dataset that cannot give a training and a validation window is a
        ``DataError``."""
        lengths = [len(a) for a in episodes.actions]
        if max(lengths, default=0) < window:
            raise DataError(f"every episode is shorter than data.window={window} steps (the "
                            f"longest has {max(lengths, default=0)}); lower data.window")
        try:
            train, val = split or split_episodes(len(lengths), train_split, data_seed)
        except ValueError as err:
            raise DataError(f"{err} (the dataset holds {len(lengths)})") from None
        for side, idx in (("training", train), ("validation", val)):
            if not any(lengths[i] >= window for i in idx):
                raise DataError(f"no {side} episode has data.window={window} steps (the split of "
                                f"{len(lengths)} episodes by data.train_split and data.seed); "
                                "lower data.window")
        states = episodes.states if layout.state else None
        if tokenizers is None:
            action, state = fit_tokenizers(episodes.actions, states, train, kind,
                                           layout.action_bins)
            tokenizers = Tokenizers(action, state, list(episodes.action_names),
                                    list(episodes.state_names or []) if state else [],
                                    dataset=dataset)
        data = cls(episodes, layout, tokenizers, train, val, window, seed, data_seed)
        data.sequences = [data.tokenize(e) for e in range(len(lengths))]
        return data

    def tokenize(self, e: int) -> torch.Tensor:
        """Episode ``e`` as one token sequence (T_e * per_step,)."""
        action = self.tokenizers.action.encode(self.episodes.actions[e])[None]
        state = (self.tokenizers.state.encode(self.episodes.states[e])[None]
                 if self.layout.state else None)
        return self.layout.step_sequences(state, action)[0]

    def lengths(self, idx) -> list[int]:
        return [len(self.episodes.actions[i]) for i in idx]

    def skipped(self) -> tuple[int, int]:
        """(training, validation) episodes shorter than the window: they give no sequence."""
        return tuple(sum(n < self.window for n in self.lengths(idx))
                     for idx in (self.train, self.val))

    def _cut(self, rows, length: int) -> torch.Tensor:
        p = self.layout.per_step
        seqs = [self.sequences[e][s * p : (s + length) * p] for e, s in rows]
        return torch.stack(seqs) if seqs else torch.empty(0, length * p, dtype=torch.long)

    def train_windows(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s training sequences (W, window * per_step): the same number every
        epoch, at offsets drawn from (data.seed, seed, epoch)."""
        rng = np.random.default_rng(derived_seed(self.data_seed, "windows", self.seed, epoch))
        rows = windows(self.lengths(self.train), self.window, rng)
        return self._cut([(int(self.train[i]), int(s)) for i, s in rows], self.window)

    def val_rows(self, length: int, limit: int | None = None) -> list[tuple[int, int]]:
        """(episode, first step) of the fixed validation windows of ``length`` steps: each
        validation episode's consecutive windows from its first step (at most ``limit``)."""
        rows = [(int(e), s) for e in self.val
                for s in range(0, len(self.episodes.actions[e]) - length + 1, length)]
        return rows if limit is None else rows[:limit]

    def val_windows(self, length: int | None = None, limit: int | None = None) -> torch.Tensor:
        """The validation sequences (N, length * per_step) of ``val_rows``."""
        length = self.window if length is None else length
        return self._cut(self.val_rows(length, limit), length)

    def val_actions(self, length: int | None = None, limit: int | None = None) -> np.ndarray:
        """The continuous actions (N, length, D) of the validation windows, as recorded."""
        length = self.window if length is None else length
        rows = self.val_rows(length, limit)
        return np.stack([self.episodes.actions[e][s : s + length] for e, s in rows])

    def rollouts(self, prompt_steps: int, new_steps: int, count: int = 8):
        """(prompts (count, prompt_steps * per_step), given (count, new_steps, S)) from the
        starts of the validation episodes long enough for ``prompt_steps + new_steps`` steps
        (repeated where fewer than ``count``); given: the state tokens of each generated step,
        (count, new_steps, 0) without state tokens. ``DataError`` where none is long enough."""
        need = prompt_steps + new_steps
        long = [int(e) for e in self.val if len(self.episodes.actions[e]) >= need]
        if not long:
            raise DataError(f"the KV-cache evaluations need a validation episode of {need} steps "
                            "(eval.gen_prompt_len + eval.gen_new_tokens); the longest has "
                            f"{max(self.lengths(self.val))}")
        p, k = self.layout.per_step, len(self.layout.state)
        picks = [long[i % len(long)] for i in range(count)]
        seqs = torch.stack([self.sequences[e][: need * p] for e in picks]).unflatten(1, (need, p))
        prompts = seqs[:, :prompt_steps].flatten(1)
        return prompts, seqs[:, prompt_steps:, :k]
