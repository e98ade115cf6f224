"""Checkpoints: the folder a training run saves into, and the one reader of checkpoint files.

Every checkpoint is read with ``torch.load(weights_only=True)``: a crafted pickle never runs.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

from vla_ablate.errors import first_line, safe_load_reason
from vla_ablate.fileio import atomic_torch_save
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.runfolder import BEST, LAST, STEP_CHECKPOINT, step_checkpoint

CHECKPOINT_FORMAT = "vla-ablate-checkpoint"
# 2: linear layers store their matrices as (in, out) (vla_ablate/model/linear.py)
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: ``str()`` names the file and why, ``reason`` why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Checkpoints:
    """The checkpoint folder: step_N.pt every ``checkpoint_every``, last.pt, best.pt."""

    def __init__(self, folder: Path, keep: int, log=print):
        self.folder, self.keep, self.log = Path(folder), keep, log

    @property
    def last(self):
        return self.folder / LAST

    @property
    def best(self):
        return self.folder / BEST

    def save(self, state: dict, path: Path) -> None:
        atomic_torch_save(state, path)

    def save_step(self, state: dict, step: int) -> None:
        self.save(state, self.folder / step_checkpoint(step))
        steps = sorted(self._step_files(), reverse=True)
        for _, old in steps[self.keep :]:
            old.unlink(missing_ok=True)

    def _step_files(self):
        if not self.folder.is_dir():
            return []
        return [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := STEP_CHECKPOINT.search(p.name))]

    def latest_valid(self):
        """The loaded state of the newest checkpoint that reads back, or None.

        A corrupt or truncated newest file is reported and the previous one is used instead.
        """
        last = load_checkpoint(self.last, log=self.log) if self.last.exists() else None
        for step, path in sorted(self._step_files(), reverse=True):
            if last is not None and step <= last["step"]:
                break
            state = load_checkpoint(path, log=self.log)
            if state is not None:
                return state
        return last


def check_checkpoint(state) -> None:
    """Raise ValueError unless ``state`` is a checkpoint this version of vla-ablate can read."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a vla-ablate checkpoint")
    version = state.get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {version} is not {CHECKPOINT_VERSION} (written by "
                         "another vla-ablate version: retrain the model)")


def read_checkpoint(path) -> dict:
    """A checkpoint's state: weights, ``model_args`` and (for a resumable one) the training state.

    Raises ``CheckpointError`` with one line naming the file and why it cannot be used; when
    torch's safe loader refuses a file, the line names what the pickle would have called.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}", err.strerror) from None
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip (or a legacy pickle)
        reason = "not a file torch.save writes"
        raise CheckpointError(f"{path} is not a vla-ablate checkpoint ({reason})", reason)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = pickle_globals(path)
        if names:
            what = f"it names {', '.join(repr(n) for n in names[:3])}, which a checkpoint never holds"
        else:
            what = "torch's safe loader refused what it holds"
        raise CheckpointError(f"refusing to load {path}: {what} (read with "
                              "torch.load(weights_only=True); nothing in it ran)",
                              what if names else safe_load_reason(err)) from None
    except Exception as err:  # noqa: BLE001 - any parser failure: not a torch file
        raise CheckpointError(f"{path} is not a vla-ablate checkpoint (torch cannot read it: "
                              f"{first_line(err)})", first_line(err)) from None
    try:
        check_checkpoint(state)
        if not isinstance(state.get("model_args"), dict) or "model" not in state:
            raise ValueError("not a vla-ablate checkpoint (no model_args or weights)")
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}", str(err)) from None
    return state


def load_checkpoint(path, log=print):
    """``read_checkpoint``, or None (and a warning) for a file that cannot be used."""
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        log(f"warning: checkpoint {path} is unreadable ({err.reason}); skipping it")
        return None


def model_from_state(state: dict) -> DecoderOnlyTransformer:
    """The model a checkpoint's state describes, with its weights (a ``ValueError`` naming the
    first weight that does not fit; other errors as torch raises them)."""
    args = dict(state["model_args"])
    if args.get("pos") == "sinusoidal" and "pos_amplitude" not in args:
        args["pos_amplitude"] = 1.0  # written before the matched amplitude: the unit table
    check_weights_fit(args, state["model"])
    model = DecoderOnlyTransformer(**args)
    model.load_state_dict(state["model"])
    return model


# what a model may hold beyond its stored weights (tables and masks of max_seq_len positions)
_EXTRA_VALUES = 2**24


def check_weights_fit(args: dict, weights) -> None:
    """Raise ``ValueError`` unless ``weights`` are exactly the tensors ``args`` build, checked on
    torch's meta device (nothing allocated): a file's ``model_args`` cannot make us allocate
    more than its weights justify (``max_seq_len=1e9``), and a mismatch names its first key."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor)
                                                for t in weights.values()):
        raise ValueError("its weights are not a dict of tensors")
    shape_args = {**args, "pos_amplitude": 1.0} if args.get("pos") == "sinusoidal" else args
    try:
        with torch.device("meta"):
            shell = DecoderOnlyTransformer(**shape_args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ValueError(f"its model_args build no model ({first_line(err)})") from None
    expected = shell.state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise ValueError(f"no weights for {key}, which its model_args need")
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise ValueError(f"size mismatch for {key}: the file holds "
                             f"{tuple(weights[key].shape)}, its model_args make {tuple(tensor.shape)}")
    if extra := [k for k in weights if k not in expected]:
        raise ValueError(f"weights {extra[0]} that its model_args do not use")
    stored = sum(t.numel() for t in weights.values())
    total = sum(t.numel() for t in [*shell.parameters(), *shell.buffers()])
    if total > 2 * stored + _EXTRA_VALUES:
        raise ValueError(f"its model_args (max_seq_len={args.get('max_seq_len')}) would allocate "
                         f"{total:,} values for {stored:,} stored weights")


def load_model_from_checkpoint(path, **overrides) -> DecoderOnlyTransformer:
    """Rebuild a ``DecoderOnlyTransformer`` from a checkpoint file alone."""
    state = read_checkpoint(path)
    return model_from_state({**state, "model_args": {**state["model_args"], **overrides}})


def pickle_globals(path: Path) -> list[str]:
    """The functions and classes a pickle (or a torch zip's data.pkl) names, read without running
    it: ``pickletools.genops`` only decodes opcodes. Torch's own rebuild helpers are left out."""
    names, strings = [], []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(member) if member else b""
        else:
            data = Path(path).read_bytes()
        stream = io.BytesIO(data)
        while stream.tell() < len(data):  # torch's legacy format: several pickles in a row
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle (or raw tensor data after it): stop
        pass
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections."))]
