"""The synthetic 7-DOF trajectory process: the arm, its constants, generation, splits, loaders.

The process is the course's (see docs/course.md): a 7-joint planar-ish arm moves towards a
hidden target, and each step emits one action token that encodes the direction octant and the
distance bin of the remaining error, plus uniform token noise in {-2, ..., 2}. The generator is
vectorised across trajectories: it loops over time steps only.

Nothing here knows about the model; training and evaluation only see tensors.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

LINK_LENGTHS = np.array([0.3, 0.3, 0.25, 0.25, 0.2, 0.15, 0.1])
NUM_JOINTS = 7
STATE_DIM = 10
VOCAB_SIZE = 256
NUM_MAGNITUDE_BINS = 32
TOKEN_NOISE = 2  # u ~ uniform on {-2, ..., 2}
_PROGRESS_MIN_STEPS = 2_000_000  # trajectories x steps above which generation shows a progress bar


def forward_kinematics_7dof(joint_angles):
    """End-effector position of the course's simplified 7-DOF arm.

    ``joint_angles``: (..., 7). Returns (..., 3): x = sum L cos q, y = sum L sin q,
    z = sum over the first three joints of L sin q.
    """
    q = np.asarray(joint_angles, dtype=np.float64)
    sin_q = np.sin(q)
    x = (LINK_LENGTHS * np.cos(q)).sum(-1)
    y = (LINK_LENGTHS * sin_q).sum(-1)
    z = (LINK_LENGTHS[:3] * sin_q[..., :3]).sum(-1)
    return np.stack([x, y, z], axis=-1)


def _simulate(start_joints, targets, seq_length, noise_std, rng, progress=False, deltas=None):
    """Run the process for N trajectories at once. Returns states (N,T,10) f32, actions (N,T) i64.

    ``deltas`` (N, T, 7): filled with each step's joint change, the continuous action."""
    q = np.array(start_joints, dtype=np.float64)  # (N, 7)
    targets = np.asarray(targets, dtype=np.float64)  # (N, 3)
    n = q.shape[0]
    states = np.empty((n, seq_length, STATE_DIM), dtype=np.float32)
    actions = np.empty((n, seq_length), dtype=np.int64)
    steps = range(seq_length)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"generating {n} trajectories", unit="step", leave=False)
    for t in steps:
        ee = forward_kinematics_7dof(q)  # (N, 3)
        states[:, t, :NUM_JOINTS] = q
        states[:, t, NUM_JOINTS:] = ee
        err = targets - ee  # (N, 3)
        mag = np.linalg.norm(err, axis=-1)  # (N,)
        moving = mag > 1e-6
        positive = (err > 0) & moving[:, None]
        octant = 4 * positive[:, 0] + 2 * positive[:, 1] + positive[:, 2]
        mag_bin = np.floor(np.clip(mag / 3.0, 0.0, 1.0) * (NUM_MAGNITUDE_BINS - 1)).astype(np.int64)
        noise = rng.integers(-TOKEN_NOISE, TOKEN_NOISE + 1, size=n)
        actions[:, t] = np.clip(NUM_MAGNITUDE_BINS * octant + mag_bin + noise, 0, VOCAB_SIZE - 1)

        delta = np.empty_like(q)
        delta[:, :3] = 0.05 * err
        delta[:, 3:] = 0.02 * np.abs(err).max(axis=-1, keepdims=True)
        delta[~moving] = 0.0
        delta += noise_std * rng.standard_normal((n, NUM_JOINTS))
        moved = np.clip(q + np.clip(delta, -0.15, 0.15), -np.pi, np.pi)
        if deltas is not None:
            deltas[:, t] = moved - q
        q = moved
    return states, actions


def generate_trajectory(start_joints, target_pos, seq_length=50, noise_std=0.02, rng=None):
    """One trajectory from ``start_joints`` (7,) towards ``target_pos`` (3,).

    Returns ``(states, actions)``: float32 (T, 10) and int64 (T,). ``rng`` is a
    ``numpy.random.Generator`` (a fresh unseeded one by default).
    """
    rng = np.random.default_rng() if rng is None else rng
    states, actions = _simulate(
        np.asarray(start_joints)[None], np.asarray(target_pos)[None], seq_length, noise_std, rng
    )
    return states[0], actions[0]


def generate_dataset(num_trajectories=10000, seq_length=50, seed=42, progress=None):
    """The course's dataset: ``{"states": float32 (N,T,10), "actions": int64 (N,T)}`` as tensors.

    The same seed gives the same data on any machine (numpy's PCG64 stream, float64 arithmetic).
    """
    return _generate(num_trajectories, seq_length, seed, progress, continuous=False)


def generate_continuous(num_trajectories=10000, seq_length=50, seed=42, progress=None):
    """The course's process with its continuous actions: ``generate_dataset``'s states and
    tokens (the same for the same seed) and ``deltas`` float32 (N, T, 7), each step's joint
    change (the action before it is quantised into a token)."""
    return _generate(num_trajectories, seq_length, seed, progress, continuous=True)


def _generate(num_trajectories, seq_length, seed, progress, continuous: bool) -> dict:
    if num_trajectories < 1 or seq_length < 1:
        raise ValueError("num_trajectories and seq_length must be positive")
    rng = np.random.default_rng(seed)
    start = rng.uniform(-np.pi / 2, np.pi / 2, size=(num_trajectories, NUM_JOINTS))
    targets = rng.uniform(-1.5, 1.5, size=(num_trajectories, 3))
    if progress is None:
        progress = num_trajectories * seq_length >= _PROGRESS_MIN_STEPS
    # the deltas only where asked: training draws fresh trajectories every epoch
    deltas = (np.empty((num_trajectories, seq_length, NUM_JOINTS), dtype=np.float32)
              if continuous else None)
    states, actions = _simulate(start, targets, seq_length, 0.02, rng, progress=progress,
                                deltas=deltas)
    data = {"states": torch.from_numpy(states), "actions": torch.from_numpy(actions)}
    return {**data, "deltas": torch.from_numpy(deltas)} if continuous else data


def split_indices(num_trajectories, train_split=0.9):
    """Contiguous split by trajectory: the first ``floor(N * split)`` train, the rest validate.

    Trajectories are independent draws, so a contiguous split is unbiased, and it makes leakage
    impossible by construction: the two index ranges cannot overlap.
    """
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"train_split must lie in (0, 1), got {train_split}")
    n_train = int(num_trajectories * train_split)
    if n_train < 1 or n_train >= num_trajectories:
        raise ValueError(
            f"{num_trajectories} trajectories with train_split={train_split} leave an empty "
            "train or validation split"
        )
    return torch.arange(n_train), torch.arange(n_train, num_trajectories)


def create_dataloaders(dataset, batch_size=32, train_split=0.9, seed=0):
    """(train_loader, val_loader) over a dataset dict; batches are ``(states, actions)``."""
    train_idx, val_idx = split_indices(len(dataset["actions"]), train_split)
    states, actions = dataset["states"], dataset["actions"]
    train = TensorDataset(states[train_idx], actions[train_idx])
    val = TensorDataset(states[val_idx], actions[val_idx])
    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(val, batch_size=batch_size, shuffle=False),
    )


def derived_seed(*parts) -> int:
    """A 63-bit seed derived from ``parts``, stable across machines and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# what a token means

MAX_DISTANCE = 3.0  # the magnitude bin is floor(clip(|e| / 3, 0, 1) * 31)

TOKEN_NOTE = (f"a token is 32 x octant + distance bin plus noise in {{-{TOKEN_NOISE}..{TOKEN_NOISE}}}, "
              "so this decoding is approximate: noise can move a token into the neighbouring "
              "distance bin, or across into the neighbouring octant")


def decode_token(token: int) -> tuple[int, int]:
    """(direction octant 0..7, distance bin 0..31), ignoring the token noise."""
    return int(token) // NUM_MAGNITUDE_BINS, int(token) % NUM_MAGNITUDE_BINS


def direction(octant: int) -> str:
    """The signs of the remaining error: octant = 4*(dx>0) + 2*(dy>0) + (dz>0)."""
    return "".join(("+" if octant & bit else "-") + axis for bit, axis in ((4, "x"), (2, "y"),
                                                                            (1, "z")))


def distance_range(bin_: int) -> str:
    """The distance to the target that bin b stands for: [3b/31, 3(b+1)/31), or >= 3."""
    step = MAX_DISTANCE / (NUM_MAGNITUDE_BINS - 1)
    if bin_ >= NUM_MAGNITUDE_BINS - 1:
        return f">={MAX_DISTANCE:.2f}"
    return f"{bin_ * step:.2f}-{(bin_ + 1) * step:.2f}"


def describe_token(token: int) -> str:
    """``'165 o5 +x-y+z b5  0.48-0.58'``: the token, its octant with the signs of the error it
    stands for, its distance bin with the distance range."""
    octant, bin_ = decode_token(token)
    return f"{int(token):3d} o{octant} {direction(octant)} b{bin_:<2d} {distance_range(bin_):>9}"
