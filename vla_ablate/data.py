"""The synthetic 7-DOF trajectory process, its on-disk cache, safe loading and the loaders.

The process is the course's (see docs in ``README.md``): a 7-joint planar-ish arm moves towards a
hidden target, and each step emits one action token that encodes the direction octant and the
distance bin of the remaining error, plus uniform token noise in {-2, ..., 2}. The generator is
vectorised across trajectories: it loops over time steps only.

Nothing here knows about the model; training and evaluation only see tensors.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from vla_ablate.fileio import atomic_write

LINK_LENGTHS = np.array([0.3, 0.3, 0.25, 0.25, 0.2, 0.15, 0.1])
NUM_JOINTS = 7
STATE_DIM = 10
VOCAB_SIZE = 256
NUM_MAGNITUDE_BINS = 32
TOKEN_NOISE = 2  # u ~ uniform on {-2, ..., 2}
FORMAT_VERSION = 1
_PROGRESS_MIN_STEPS = 2_000_000  # trajectories x steps above which generation shows a progress bar


class DataError(Exception):
    """A dataset file that cannot be used; the message is one line meant for the user."""


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


def _simulate(start_joints, targets, seq_length, noise_std, rng, progress=False):
    """Run the process for N trajectories at once. Returns states (N,T,10) f32, actions (N,T) i64."""
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
        q = np.clip(q + np.clip(delta, -0.15, 0.15), -np.pi, np.pi)
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
    if num_trajectories < 1 or seq_length < 1:
        raise ValueError("num_trajectories and seq_length must be positive")
    rng = np.random.default_rng(seed)
    start = rng.uniform(-np.pi / 2, np.pi / 2, size=(num_trajectories, NUM_JOINTS))
    targets = rng.uniform(-1.5, 1.5, size=(num_trajectories, 3))
    if progress is None:
        progress = num_trajectories * seq_length >= _PROGRESS_MIN_STEPS
    states, actions = _simulate(start, targets, seq_length, 0.02, rng, progress=progress)
    return {"states": torch.from_numpy(states), "actions": torch.from_numpy(actions)}


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


# --------------------------------------------------------------------------- files


def cache_path(cache_dir, num_trajectories, seq_length, seed) -> Path:
    name = f"trajectories-v{FORMAT_VERSION}-n{num_trajectories}-t{seq_length}-s{seed}.npz"
    return Path(cache_dir) / name


def save_dataset(dataset, path) -> None:
    """Write our own format (an ``.npz`` of plain arrays, no pickles), atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        states=np.asarray(dataset["states"], dtype=np.float32),
        actions=np.asarray(dataset["actions"], dtype=np.int64),
        format_version=np.array(FORMAT_VERSION),
    )
    atomic_write(path, buf.getvalue())


def load_or_generate(cache_dir, num_trajectories, seq_length, seed, log=print):
    """The dataset for these parameters from the cache, generating (and caching) it if needed.

    A cached file that is unreadable is reported, regenerated and replaced.
    """
    path = cache_path(cache_dir, num_trajectories, seq_length, seed)
    if path.exists():
        try:
            data = load_dataset(path)
            if data["actions"].shape == (num_trajectories, seq_length):
                return data
            log(f"cached dataset {path} has the wrong shape; regenerating it")
        except DataError as err:
            log(f"cached dataset is unusable ({err}); regenerating it")
    data = generate_dataset(num_trajectories, seq_length, seed)
    save_dataset(data, path)
    return data


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than arrays and tensors."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and torch tensors and nothing else.

    ``find_class`` is the only way a pickle reaches code, so refusing every other global means a
    crafted file cannot run anything. Tensor storages are rebuilt through ``torch.load`` with
    ``weights_only=True`` instead of torch's own unrestricted helper.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch", "Size"),
    }

    def find_class(self, module, name):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_weights_only
        if (module, name) in self._ALLOWED or (
            module.startswith("numpy") and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise _Refused(f"it names '{module}.{name}', which is not an array or a tensor")


def _load_storage_weights_only(data):
    return torch.load(io.BytesIO(data), weights_only=True)


def load_dataset(path):
    """Load a dataset file: our ``.npz`` format, a ``torch.save`` file or the course's pickle.

    Accepts the keys ``states``/``actions`` or the assignment's ``trajectories``/``tokenized``.
    Never executes code from the file; every failure is a ``DataError`` with a one-line message.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise DataError(f"cannot read dataset file {path}: {err.strerror}") from None
    try:
        if head.startswith(b"PK"):  # zip container: our npz or a torch.save file
            if _is_torch_zip(path):
                raw = torch.load(path, map_location="cpu", weights_only=True)
            else:
                with np.load(path, allow_pickle=False) as npz:
                    raw = {k: npz[k] for k in npz.files}
        else:
            with open(path, "rb") as fh:
                raw = _ArraysOnlyUnpickler(fh).load()
    except _Refused as err:
        raise DataError(f"refusing to load {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any parser failure means a corrupt file
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read dataset file {path}: {msg}") from None
    return _normalise(raw, path)


def _is_torch_zip(path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except zipfile.BadZipFile as err:
        raise DataError(f"cannot read dataset file {path}: {err}") from None


def _normalise(raw, path):
    if not isinstance(raw, dict):
        raise DataError(f"{path} does not hold a dict of arrays")
    states = raw.get("states", raw.get("trajectories"))
    actions = raw.get("actions", raw.get("tokenized"))
    if states is None or actions is None:
        raise DataError(
            f"{path} has keys {sorted(map(str, raw))}; expected states/actions "
            "or trajectories/tokenized"
        )
    states = torch.as_tensor(np.asarray(states), dtype=torch.float32)
    actions = torch.as_tensor(np.asarray(actions))
    if actions.ndim != 2 or states.ndim != 3 or states.shape[:2] != actions.shape:
        raise DataError(
            f"{path}: expected states (N,T,D) and actions (N,T), got "
            f"{tuple(states.shape)} and {tuple(actions.shape)}"
        )
    if actions.is_floating_point() or actions.min() < 0 or actions.max() >= VOCAB_SIZE:
        raise DataError(f"{path}: actions must be integer tokens in [0, {VOCAB_SIZE})")
    return {"states": states, "actions": actions.long()}


if __name__ == "__main__":  # python -m vla_ablate.data: the course's generate_data.py
    import sys

    from vla_ablate.commands import run_command
    from vla_ablate.data_cli import main

    sys.exit(run_command(main))
