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

    def __post_init__(self):
        unknown = [s for s in self.state if s not in STATE_NAMES]
        if unknown:
            raise ValueError(f"tokens.state: unknown state value(s) {unknown} "
                             f"(known: {', '.join(STATE_NAMES)})")
        if len(set(self.state)) != len(self.state):
            raise ValueError(f"tokens.state names a value twice: {list(self.state)}")
        if self.state and self.bins < 2:
            raise ValueError(f"tokens.bins must be >= 2, got {self.bins}")
        if self.loss not in LOSSES:
            raise ValueError(f"tokens.loss must be all or action, got '{self.loss}'")

    @property
    def name(self) -> str:
        return "state_action" if self.state else "action"

    @property
    def per_step(self) -> int:
        """Tokens per step: the state tokens and the action token."""
        return len(self.state) + 1

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE + len(self.state) * self.bins

    def state_range(self, j: int) -> range:
        """The token ids of state value j."""
        start = VOCAB_SIZE + j * self.bins
        return range(start, start + self.bins)

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

    def action_targets(self, length: int, from_step: int = 1) -> torch.Tensor | None:
        """Which of the ``length - 1`` next-token targets of a ``length``-token sequence are the
        action tokens a_from_step .. a_{T-1}; None: all of them (``action`` mode, from step 1).

        From step 1 these are the comparable figure: the actions both layouts predict."""
        if not self.state and from_step <= 1:
            return None
        pos = torch.arange(1, length)  # the position each target sits at
        return (pos % self.per_step == self.per_step - 1) & (pos >= self.positions(from_step))

    def objective_targets(self, length: int) -> torch.Tensor | None:
        """The targets the training loss covers (None: all): with ``loss=action``, every action
        token, a_0 included (its state precedes it)."""
        if not self.state or self.loss == "all":
            return None
        return torch.arange(1, length) % self.per_step == self.per_step - 1

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
        """The action tokens of sequences (..., T * per_step) -> (..., T)."""
        return seqs[..., self.per_step - 1 :: self.per_step]

    def step_attention(self, maps: torch.Tensor) -> torch.Tensor:
        """(H, L, L) attention over tokens -> (H, T, T) over steps: row t is the query that
        predicts action a_t (step t's last state token), each column sums the weights on one
        step's tokens. Action tokens alone: the maps as they are."""
        if not self.state:
            return maps
        H, L, _ = maps.shape
        rows = maps[:, self.per_step - 2 :: self.per_step]  # (H, T, L)
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
