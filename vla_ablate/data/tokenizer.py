"""Continuous values -> tokens: per-dimension bins fitted on the training episodes only.

``uniform``: ``bins`` equal bins between each dimension's 1st and 99th percentile (values
beyond fall in the end bins), as RT-2 and OpenVLA bin actions. ``quantile``: equal-mass bins
(edges at the training values' quantiles). A token decodes to its bin's midpoint, so inside the
fitted range a round trip is off by at most half a bin. A value repeated in a large share of the
frames (a gripper's 0 and 1) gives ``quantile`` equal edges: the bins between them have no
width, and that value is encoded into one of them, so it decodes to itself exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_ablate.errors import DataError
from vla_ablate.fileio import atomic_write

KINDS = ("uniform", "quantile")


@dataclass
class BinTokenizer:
    """``edges``: (D, bins + 1) per dimension, increasing."""

    kind: str
    edges: np.ndarray

    @property
    def bins(self) -> int:
        return self.edges.shape[1] - 1

    @property
    def dims(self) -> int:
        return self.edges.shape[0]

    @classmethod
    def fit(cls, values: np.ndarray, kind: str = "uniform", bins: int = 256) -> BinTokenizer:
        """Fit on ``values`` (frames, D): the training episodes' frames, never validation's."""
        if kind not in KINDS:
            raise ValueError(f"tokenizer must be {' or '.join(KINDS)}, got '{kind}'")
        values = np.asarray(values, dtype=np.float64)
        if kind == "uniform":
            lo, hi = np.percentile(values, [1, 99], axis=0)
            hi = np.where(hi > lo, hi, lo + 1e-6)  # a constant dimension: one narrow range
            edges = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, bins + 1)[None]
        else:
            edges = np.quantile(values, np.linspace(0, 1, bins + 1), axis=0).T
            # repeated values give equal edges, kept equal (encode puts such a value in a bin of
            # no width); the running maximum only guards against rounding in the interpolation
            edges = np.maximum.accumulate(edges, axis=1)
        return cls(kind, edges)

    @property
    def centers(self) -> np.ndarray:
        """(D, bins): what each token decodes to, its bin's midpoint."""
        return (self.edges[:, :-1] + self.edges[:, 1:]) / 2

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(..., D) values -> (..., D) int64 tokens in [0, bins): bin j holds
        [edges[j], edges[j + 1]) (the end bins reach beyond), except that a value equal to two
        or more edges goes in the bin of no width between them."""
        values = np.asarray(values, dtype=np.float64)
        tokens = np.empty(values.shape, dtype=np.int64)
        for d in range(self.dims):
            edges, x = self.edges[d], values[..., d]
            t = np.searchsorted(edges[1:-1], x, side="right")  # bins - 1 inner edges
            # x == edges[t] == edges[t - 1]: bin t - 1 is [x, x], a repeated value's own bin
            below = np.maximum(t - 1, 0)
            own = (t > 0) & (edges[t] == x) & (edges[below] == x)
            tokens[..., d] = np.where(own, below, t)
        return tokens

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(..., D) tokens -> (..., D) bin midpoints (``centers``)."""
        tokens = np.clip(np.asarray(tokens, dtype=np.int64), 0, self.bins - 1)
        return self.centers[np.arange(self.dims), tokens]

    def round_trip_error(self, values: np.ndarray) -> np.ndarray:
        """Mean absolute error per dimension that binning alone imposes on ``values``."""
        values = np.asarray(values, dtype=np.float64)
        return np.abs(self.decode(self.encode(values)) - values).reshape(-1, self.dims).mean(0)

    def save(self, path) -> None:
        text = json.dumps({"kind": self.kind, "edges": self.edges.tolist()})
        atomic_write(Path(path), text.encode())

    @classmethod
    def load(cls, path) -> BinTokenizer:
        raw = json.loads(Path(path).read_text())
        return cls(raw["kind"], np.asarray(raw["edges"], dtype=np.float64))


def split_episodes(n: int, train_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) episode indices: a seeded shuffle of whole episodes, so no
    episode is on both sides."""
    if n < 2:
        raise ValueError(f"{n} episode(s): need 2 or more to split into training and validation")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(n * train_split), 1), n - 1)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def windows(lengths: list[int], window: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's windows, (W, 2) rows of (episode, first frame): each episode at least
    ``window`` long gives ``len // window`` windows at fresh random offsets; shorter ones none."""
    rows = []
    for e, n in enumerate(lengths):
        count = n // window
        if count:
            starts = rng.integers(0, n - window + 1, size=count)
            rows += [(e, int(s)) for s in starts]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def fit_tokenizers(actions: list[np.ndarray], states: list[np.ndarray] | None,
                   train: np.ndarray, kind: str, bins: int = 256):
    """(action tokenizer, state tokenizer or None) fitted on the episodes ``train`` alone."""
    action = BinTokenizer.fit(np.concatenate([actions[i] for i in train]), kind, bins)
    state = None if states is None else BinTokenizer.fit(
        np.concatenate([states[i] for i in train]), kind, bins)
    return action, state


@dataclass
class Tokenizers:
    """A dataset's fitted tokenizers, as a run folder keeps them (``runfolder.TOKENIZER``): the
    actions', the states' (None where the layout has no state tokens) and the values' names.
    ``dataset``: where the data came from, ``{"root": absolute folder, "repo_id": or None}``,
    as the job resolved it (a fetched copy, a relative root made absolute), so the commands
    that read a trained model find the same episodes; None in files from before it."""

    action: BinTokenizer
    state: BinTokenizer | None
    action_names: list[str]
    state_names: list[str]
    dataset: dict | None = None

    @property
    def kind(self) -> str:
        return self.action.kind

    def same_as(self, other: Tokenizers) -> bool:
        """The same bins (and names) for every value."""
        def edges(t):
            return None if t is None else t.edges

        return (self.kind == other.kind and self.action_names == other.action_names
                and self.state_names == other.state_names
                and _equal(edges(self.action), edges(other.action))
                and _equal(edges(self.state), edges(other.state)))

    def save(self, path) -> None:
        def part(tok, names):
            return None if tok is None else {"names": list(names), "edges": tok.edges.tolist()}

        text = json.dumps({"kind": self.kind, "bins": self.action.bins,
                           "action": part(self.action, self.action_names),
                           "state": part(self.state, self.state_names),
                           **({} if self.dataset is None else {"dataset": self.dataset})})
        atomic_write(Path(path), text.encode())

    @classmethod
    def load(cls, path) -> Tokenizers:
        """The file ``save`` wrote; anything else is a ``DataError`` with one line."""
        try:
            raw = json.loads(Path(path).read_text())
            kind = raw["kind"]
            action = BinTokenizer(kind, np.asarray(raw["action"]["edges"], dtype=np.float64))
            state = (None if raw["state"] is None else
                     BinTokenizer(kind, np.asarray(raw["state"]["edges"], dtype=np.float64)))
            names = [list(raw["action"]["names"]), [] if state is None else list(raw["state"]["names"])]
            dataset = raw.get("dataset")
            if dataset is not None and not (isinstance(dataset, dict)
                                            and isinstance(dataset.get("root"), str)):
                raise ValueError("its dataset has no root folder")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read the tokenizer {path} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if action.edges.ndim != 2 or (state is not None and state.edges.ndim != 2):
            raise DataError(f"cannot read the tokenizer {path} (its edges are not (D, bins + 1))")
        return cls(action, state, *names, dataset=dataset)


def _equal(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and a.shape == b.shape and bool(np.array_equal(a, b)))
