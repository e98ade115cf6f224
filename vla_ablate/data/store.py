"""Dataset files: the on-disk cache, our ``.npz`` format, and safe loading of other formats.

Nothing is ever executed from a file: pickles are read by an unpickler that rebuilds arrays and
tensors only.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from vla_ablate.data.process import VOCAB_SIZE, generate_dataset
from vla_ablate.errors import DataError, first_line, safe_load_reason
from vla_ablate.fileio import atomic_write

FORMAT_VERSION = 1


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
    except MemoryError:  # a length field that claims more than the machine has
        raise DataError(f"cannot read dataset file {path}: it claims more memory than this "
                        "machine has (a damaged or crafted file)") from None
    except Exception as err:  # noqa: BLE001 - any parser failure means a corrupt file
        msg = safe_load_reason(err)  # never torch's advice to load it unsafely
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
    states, actions = _array(states, "states", path), _array(actions, "actions", path)
    if actions.ndim != 2 or states.ndim != 3 or states.shape[:2] != actions.shape:
        raise DataError(
            f"{path}: expected states (N,T,D) and actions (N,T), got "
            f"{tuple(states.shape)} and {tuple(actions.shape)}"
        )
    if len(actions) == 0:
        raise DataError(f"{path} holds no trajectories")
    if states.dtype.kind not in "iuf":
        raise DataError(f"{path}: states must be real numbers, got dtype {states.dtype}")
    # bool tokens would be read as 0/1 without a word; floats, complex or objects are no tokens
    if actions.dtype.kind not in "iu":
        raise DataError(f"{path}: actions must be integer tokens in [0, {VOCAB_SIZE}), got "
                        f"dtype {actions.dtype}")
    # compared as Python ints: in the array's own dtype 256 wraps (uint8, int8)
    if int(actions.min()) < 0 or int(actions.max()) >= VOCAB_SIZE:
        raise DataError(f"{path}: actions must be integer tokens in [0, {VOCAB_SIZE}), got "
                        f"{int(actions.min())}..{int(actions.max())}")
    return {"states": torch.as_tensor(states.astype(np.float32)),
            "actions": torch.as_tensor(actions.astype(np.int64))}


def _array(value, name: str, path) -> np.ndarray:
    """``value`` (an array, a tensor or nested lists) as a numpy array, or a ``DataError``."""
    if isinstance(value, torch.Tensor):
        value = (value.float() if value.dtype == torch.bfloat16 else value).detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged lists, objects numpy cannot stack
        raise DataError(f"{path}: {name} is not a rectangular array ({first_line(err)})") from None
