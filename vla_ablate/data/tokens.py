"""Token layouts: what each step of a trajectory puts into the model's one causal sequence.

``tokens=action`` (the default) is the course's sequence: one action token per step, ids
0..255. ``tokens=state_action`` is the Unified Sequence Hypothesis: each step contributes its
state, quantised into ``bins`` bins per chosen state value, and then its action token::

    s_0[0] .. s_0[k-1]  a_0  s_1[0] .. s_1[k-1]  a_1  ...

State value j of the layout has its own vocabulary range, ``256 + j * bins`` up to
``256 + (j + 1) * bins - 1``, beside the 256 action tokens, so no two ranges overlap. A step's
state is recorded before its action is drawn (vla_ablate/data/process.py), so a state token carries
nothing of its own step's action noise, and it precedes that action in the sequence.

Losses that compare the two modes are taken over the action tokens a_1 .. a_{T-1} alone: the
tokens that both sequences predict (a_0 has nothing before it in ``action`` mode).

Continuous actions (``data=lerobot``, ``continuous=True``) make each step D action tokens, one
per action dimension, each dimension its own range of ``action_bins`` ids (dimension i:
``i * action_bins`` up to ``(i + 1) * action_bins - 1``), and with ``state_action`` its S state
tokens before them, state value j in ``D * action_bins + j * bins`` onwards::

    s_0[0] .. s_0[S-1]  a_0[0] .. a_0[D-1]  s_1[0] ..

The bins come from a fitted tokenizer (vla_ablate/data/tokenizer.py), not from fixed ranges;
``step_sequences`` lays its tokens out. With D = 1 and the course's 256 ids this is the course's
layout, id for id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vla_ablate.data.process import LINK_LENGTHS, NUM_JOINTS, VOCAB_SIZE

MODES = ("action", "state_action")
LOSSES = ("all", "action")
# the state's 10 values, in the order of the dataset's states array
STATE_NAMES = tuple(f"q{i}" for i in range(NUM_JOINTS)) + ("ee_x", "ee_y", "ee_z")
# where each can lie under the process: joints are clipped to [-pi, pi]; the end effector stays
# within the arm's reach (x, y: all seven links; z: the first three)
_REACH_XY, _REACH_Z = float(LINK_LENGTHS.sum()), float(LINK_LENGTHS[:3].sum())
STATE_RANGES = {**{f"q{i}": (-math.pi, math.pi) for i in range(NUM_JOINTS)},
                "ee_x": (-_REACH_XY, _REACH_XY), "ee_y": (-_REACH_XY, _REACH_XY),
                "ee_z": (-_REACH_Z, _REACH_Z)}


@dataclass(frozen=True)
class TokenLayout:
    """A sequence layout. ``state``: the state values each step contributes (none: ``action``
    mode); ``bins``: quantisation bins per value; ``loss``: the training objective, over
    ``all`` tokens or the ``action`` tokens only."""

    state: tuple[str, ...] = ()
    bins: int = 128
    loss: str = "all"
    actions: int = 1  # action tokens per step (one per action dimension)
    action_bins: int = VOCAB_SIZE  # ids per action dimension
    continuous: bool = False  # tokens of a fitted tokenizer (data=lerobot), any state names

    def __post_init__(self):
        if not self.continuous:
            unknown = [s for s in self.state if s not in STATE_NAMES]
            if unknown:
                raise ValueError(f"tokens.state: unknown state value(s) {unknown} "
                                 f"(known: {', '.join(STATE_NAMES)})")
            if len(set(self.state)) != len(self.state):
                raise ValueError(f"tokens.state names a value twice: {list(self.state)}")
        if self.actions < 1 or self.action_bins < 2:
            raise ValueError(f"a step needs at least one action token of 2 or more ids, got "
                             f"{self.actions} of {self.action_bins}")
        if self.state and self.bins < 2:
            raise ValueError(f"tokens.bins must be >= 2, got {self.bins}")
        if self.loss not in LOSSES:
            raise ValueError(f"tokens.loss must be all or action, got '{self.loss}'")

    @property
    def name(self) -> str:
        return "state_action" if self.state else "action"

    @property
    def per_step(self) -> int:
        """Tokens per step: the state tokens and the action token(s)."""
        return len(self.state) + self.actions

    @property
    def action_vocab(self) -> int:
        """The ids of the action tokens: 0 .. action_vocab - 1, the state tokens after them."""
        return self.actions * self.action_bins

    @property
    def vocab_size(self) -> int:
        return self.action_vocab + len(self.state) * self.bins

    def state_range(self, j: int) -> range:
        """The token ids of state value j."""
        start = self.action_vocab + j * self.bins
        return range(start, start + self.bins)

    def action_range(self, i: int) -> range:
        """The token ids of action dimension i."""
        return range(i * self.action_bins, (i + 1) * self.action_bins)

    def action_ranges(self) -> list[tuple[int, int]]:
        """(first id, end id) of every action dimension's ids, in order: a step's ranges for
        decoding one dimension at a time (``evaluate.kv_cache_consistency`` step_ranges)."""
        return [(r.start, r.stop) for r in map(self.action_range, range(self.actions))]

    def step_sequences(self, state_bins, action_bins) -> torch.Tensor:
        """Sequences (N, T * per_step) from each step's bins: ``action_bins`` (N, T, D) and
        ``state_bins`` (N, T, S) in [0, bins) (None without state tokens); each value moves to
        its own id range."""
        parts = [torch.as_tensor(action_bins).long()
                 + torch.arange(self.actions) * self.action_bins]
        if self.state:
            states = torch.as_tensor(state_bins).long()
            parts.insert(0, states + self.action_vocab + torch.arange(len(self.state)) * self.bins)
        steps = torch.cat(parts, dim=-1)  # (N, T, per_step)
        return steps.reshape(steps.shape[0], -1)

    # --------------------------------------------------------------- quantisation

    def _bounds(self, dtype=torch.float64):
        lo = torch.tensor([STATE_RANGES[s][0] for s in self.state], dtype=dtype)
        hi = torch.tensor([STATE_RANGES[s][1] for s in self.state], dtype=dtype)
        return lo, hi

    def state_ids(self, states: torch.Tensor) -> torch.Tensor:
        """(..., 10) state arrays -> (..., k) token ids: equal-width bins over each value's range
        (values outside it fall into the end bins)."""
        idx = [STATE_NAMES.index(s) for s in self.state]
        values = torch.as_tensor(states)[..., idx].double()
        lo, hi = self._bounds()
        bins = torch.floor((values - lo) / (hi - lo) * self.bins).clamp(0, self.bins - 1).long()
        return bins + VOCAB_SIZE + torch.arange(len(self.state)) * self.bins

    def state_values(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., k) state token ids -> the centres of their bins, (..., k) float64."""
        lo, hi = self._bounds()
        bins = ids - VOCAB_SIZE - torch.arange(len(self.state)) * self.bins
        return lo + (bins.double() + 0.5) * (hi - lo) / self.bins

    # --------------------------------------------------------------- sequences

    def sequences(self, states: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """The model's token sequences (N, T * per_step) for N trajectories of T steps.

        In ``action`` mode this is ``actions`` itself (the same tensor)."""
        if not self.state:
            return actions
        if states is None:
            raise ValueError("tokens=state_action needs the trajectories' states")
        steps = torch.cat([self.state_ids(states), actions.long().unsqueeze(-1)], dim=-1)
        return steps.reshape(actions.shape[0], -1)

    def given(self, states: torch.Tensor) -> torch.Tensor | None:
        """The state tokens a rollout is given for each generated step: (N, T, k), or None in
        ``action`` mode (nothing is given, every new token is generated)."""
        return self.state_ids(states) if self.state else None

    @property
    def all_action_targets(self) -> bool:
        """Whether every next-token target is an action token of step 1 on (the course's
        ``action`` layout: one action token a step), so the objective is the action loss. With
        D > 1 action tokens a step, a_0's dimensions 1..D-1 are targets too: not comparable."""
        return not self.state and self.actions == 1

    def action_targets(self, length: int, from_step: int = 1) -> torch.Tensor | None:
        """Which of the ``length - 1`` next-token targets of a ``length``-token sequence are the
        action tokens a_from_step .. a_{T-1}; None: all of them (``action`` mode, from step 1).

        From step 1 these are the comparable figure: the actions both layouts predict."""
        if self.all_action_targets and from_step <= 1:
            return None
        pos = torch.arange(1, length)  # the position each target sits at
        return self._is_action(pos) & (pos >= self.positions(from_step))

    def _is_action(self, pos: torch.Tensor) -> torch.Tensor:
        """Which sequence positions hold action tokens (the last ``actions`` of each step)."""
        if self.actions == 1:  # the course's layouts, as they always computed it
            return pos % self.per_step == self.per_step - 1
        return pos % self.per_step >= len(self.state)

    def objective_targets(self, length: int) -> torch.Tensor | None:
        """The targets the training loss covers (None: all): with ``loss=action``, every action
        token, a_0 included (its state precedes it)."""
        if not self.state or self.loss == "all":
            return None
        return self._is_action(torch.arange(1, length))

    def train_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token targets of a batch (B, L): ``x[:, 1:]``, with -1 (ignored) outside the
        objective."""
        targets = x[:, 1:]
        keep = self.objective_targets(x.shape[1])
        return targets if keep is None else targets.masked_fill(~keep.to(x.device), -1)

    def positions(self, steps: int) -> int:
        """Sequence positions that ``steps`` steps take."""
        return steps * self.per_step

    def last_input_step(self, steps: int) -> int:
        """The last step whose tokens a teacher-forced pass over ``steps`` steps feeds the model
        (the final token is only a target): ``steps - 2`` for action tokens alone, ``steps - 1``
        with state tokens (the last step's states are inputs). Positions fit the model when
        this step is below ``model.max_seq_len``."""
        return (self.positions(steps) - 2) // self.per_step

    def actions_of(self, seqs: torch.Tensor) -> torch.Tensor:
        """The action tokens of sequences (..., T * per_step) -> (..., T), or (..., T, D) with
        D action tokens per step."""
        if self.actions == 1:
            return seqs[..., self.per_step - 1 :: self.per_step]
        steps = seqs.unflatten(-1, (seqs.shape[-1] // self.per_step, self.per_step))
        return steps[..., len(self.state) :]

    def step_attention(self, maps: torch.Tensor) -> torch.Tensor:
        """(H, L, L) attention over tokens -> (H, T, T) over steps: row t is the query that
        predicts action a_t (step t's last state token), each column sums the weights on one
        step's tokens. Action tokens alone: the maps as they are; D action tokens a step and no
        state: row t is step t's last token (it predicts a_{t+1}'s first)."""
        if not self.state and self.actions == 1:
            return maps
        H, L, _ = maps.shape
        first = len(self.state) - 1 if self.state else self.per_step - 1
        rows = maps[:, first :: self.per_step]  # (H, T, L)
        return rows.unflatten(-1, (L // self.per_step, self.per_step)).sum(-1)

    def as_dict(self) -> dict:
        return {"name": self.name, "state": list(self.state), "bins": self.bins,
                "loss": self.loss}


ACTION = TokenLayout()


def layout_from_config(cfg) -> TokenLayout:
    """The layout of a composed config (``tokens`` group); configs without one are ``action``.

    Raises ``ValueError`` with one line for a group that cannot be used."""
    t = cfg.get("tokens") if hasattr(cfg, "get") else None
    if t is None or t.name == "action":
        if t is not None and list(t.state):
            raise ValueError("tokens.state applies to tokens=state_action, not tokens=action")
        return ACTION
    if t.name not in MODES:
        raise ValueError(f"tokens must be {' or '.join(MODES)}, got '{t.name}'")
    if not list(t.state):
        raise ValueError("tokens=state_action needs at least one state value in tokens.state")
    return TokenLayout(state=tuple(t.state), bins=int(t.bins), loss=str(t.loss))
