"""What the small commands (``vla_ablate.data``, ``.sample``, ``.visualize``) share.

Arguments whose errors are one line, checkpoints read with ``torch.load(weights_only=True)``
only, the run a checkpoint came from, its validation trajectories, and what a token means.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import pickletools
import sys
import warnings
import zipfile
from pathlib import Path

import torch
import yaml

from vla_ablate.data import (
    NUM_MAGNITUDE_BINS,
    TOKEN_NOISE,
    VOCAB_SIZE,
    DataError,
    generate_dataset,
    load_dataset,
    split_indices,
)
from vla_ablate.train import check_checkpoint

# the course's defaults (dataset-spec.md), for a checkpoint found outside any run folder
DEFAULT_DATA = {"num_trajectories": 10000, "seq_length": 50, "seed": 42, "train_split": 0.9,
                "path": None}
MAX_DISTANCE = 3.0  # the magnitude bin is floor(clip(|e| / 3, 0, 1) * 31)


class CommandError(Exception):
    """Bad input to a command; the message is one line for the user."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...``, with exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def run_command(main_fn, argv=None) -> int:
    """Run ``main_fn(argv)``; a ``CommandError`` becomes ``error: ...`` on stderr and exit 2."""
    try:
        return main_fn(argv) or 0
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _number(cast, ok, expected: str, name: str):
    """An argparse ``type``: ``cast(text)`` if ``ok`` holds for it, else one clear line."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number", "positive_float")


# ------------------------------------------------------------------------------ checkpoints


def resolve_checkpoint(path) -> Path:
    """A checkpoint file from a path that names one, a run folder or a model folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CommandError(f"no such checkpoint: {path}")
    folders = [path, path / "checkpoints"]
    summary = _read_json(path / "summary.json")  # a sweep job: its model lives in models/<key>/
    if summary and summary.get("model_dir"):  # absolute, or relative to where the sweep ran
        folders.append(Path(summary["model_dir"]) / "checkpoints")
    if summary and summary.get("model_key"):  # beside the job, wherever the sweep was run from
        folders.append(path.parent / "models" / str(summary["model_key"]) / "checkpoints")
    for folder in folders:
        for name in ("last.pt", "best.pt"):
            if (folder / name).is_file():
                return folder / name
    raise CommandError(f"{path} is a folder without a checkpoint (no checkpoints/last.pt)")


def load_checkpoint_file(path, state_tokens: bool = False) -> dict:
    """A checkpoint's state, read with ``weights_only=True``: a crafted pickle never runs.

    When torch's safe loader refuses a file, the message names what the pickle would have called.
    ``state_tokens``: the command reads a ``tokens=state_action`` model too (others refuse it).

    Every failure is a ``CommandError`` with one line naming the file and why.
    """
    path = resolve_checkpoint(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror}") from None
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip (or a legacy pickle)
        raise CommandError(f"{path} is not a vla-ablate checkpoint (not a file torch.save "
                           "writes)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = pickle_globals(path)
        what = (f"it names {', '.join(repr(n) for n in names[:3])}" if names else
                "torch's safe loader rejects what it holds")
        raise CommandError(f"refusing to load {path}: {what}, which a checkpoint never holds "
                           "(read with torch.load(weights_only=True); nothing in it ran)") from None
    except Exception as err:  # noqa: BLE001 - any parser failure: not a torch file
        raise CommandError(f"{path} is not a vla-ablate checkpoint (torch cannot read it: "
                           f"{_first_line(err)})") from None
    try:
        check_checkpoint(state)
        if not isinstance(state.get("model_args"), dict) or "model" not in state:
            raise ValueError("not a vla-ablate checkpoint (no model_args or weights)")
    except ValueError as err:
        raise CommandError(f"{path}: {err}") from None
    vocab = state["model_args"].get("vocab_size", VOCAB_SIZE)
    if vocab != VOCAB_SIZE and not state_tokens:  # they prompt and score action tokens
        raise CommandError(f"{path} was trained on state and action tokens (tokens=state_action, "
                           f"vocabulary {vocab}); this command reads action-token models only "
                           "(its run folder's summary.json holds the evaluations)")
    return {**state, "path": path}


def pickle_globals(path: Path) -> list[str]:
    """The functions and classes a pickle (or a torch zip's data.pkl) names, read without running
    it: ``pickletools.genops`` only decodes opcodes. Torch's own rebuild helpers are left out."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(member) if member else b""
        else:
            data = Path(path).read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle: name nothing
        return []
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections."))]


def model_from_state(state):
    from vla_ablate.model import DecoderOnlyTransformer

    try:
        model = DecoderOnlyTransformer(**state["model_args"])
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CommandError(f"{state['path']}: the weights do not fit the model it describes "
                           f"({_first_line(err)})") from None
    return model.eval()


def train_dir_of(checkpoint: Path) -> Path:
    """The folder that trained the checkpoint: it holds ``checkpoints/`` and ``metrics.jsonl``."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def run_config(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The Hydra config of the run that trained ``checkpoint`` and that run's folder, if found.

    A single run keeps its checkpoints beside ``.hydra/``; a sweep keeps a shared model in
    ``<sweep>/models/<key>/``, and the jobs that used it name the key in their summary.
    """
    train_dir = train_dir_of(checkpoint)
    candidates = [train_dir]
    if train_dir.parent.name == "models":
        for summary_path in sorted(train_dir.parent.parent.glob("*/summary.json")):
            if (_read_json(summary_path) or {}).get("model_key") == train_dir.name:
                candidates.append(summary_path.parent)
    for folder in candidates:
        config = folder / ".hydra" / "config.yaml"
        if config.is_file():
            try:
                return yaml.safe_load(config.read_text()) or {}, folder
            except (OSError, yaml.YAMLError):
                continue
    return None, None


def validation_actions(checkpoint: Path, data_path=None):
    """(validation action tokens (N, T), a sentence saying where they came from)."""
    cfg, run_dir = run_config(checkpoint)
    data = {**DEFAULT_DATA, **((cfg or {}).get("data") or {})}
    if data_path is not None or data.get("path"):
        path = Path(data_path or data["path"])
        try:
            actions = load_dataset(path)["actions"]
        except DataError as err:
            raise CommandError(str(err)) from None
        source = f"the dataset file {path}"
    else:
        n, length, seed = int(data["num_trajectories"]), int(data["seq_length"]), int(data["seed"])
        actions = generate_dataset(n, length, seed, progress=False)["actions"]
        source = f"generated: {n} trajectories of {length} steps, seed {seed}"
    if data_path is None:
        source += (f"; the data of the run in {run_dir}" if run_dir else
                   "; no run folder found, so the course's defaults")
    try:
        _, val_idx = split_indices(len(actions), float(data.get("train_split", 0.9)))
    except ValueError as err:
        raise CommandError(str(err)) from None
    return actions[val_idx], source


def pick_trajectory(val_actions, index: int, max_seq_len: int) -> torch.Tensor:
    if index >= len(val_actions):
        raise CommandError(f"--trajectory {index} is out of range: there are "
                           f"{len(val_actions)} validation trajectories (0..{len(val_actions) - 1})")
    if val_actions.shape[1] > max_seq_len:
        raise CommandError(f"the trajectories have {val_actions.shape[1]} steps, more than the "
                           f"model's max_seq_len ({max_seq_len})")
    return val_actions[index]


# ------------------------------------------------------------------------------ tokens


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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
