"""The run-folder format, written here and nowhere else (docs: docs/run-folder.md).

A job folder holds:

- ``.hydra/`` (Hydra's config.yaml, overrides.yaml, hydra.yaml);
- ``summary.json``: status (running | completed | failed | diverged | interrupted), the
  ablation axes, losses, timings and the evaluation results;
- ``metrics.jsonl``: one JSON record per logged step, ``{"step", "split": train|val, "loss",
  "perplexity", ...}``;
- ``loss_curve.png``, ``attention_maps.png``; ``checkpoints/`` when the job trained its model
  itself (shared models live in ``<sweep>/models/<key>/``);
- ``attention_maps.npz``: the attention weights drawn in ``attention_maps.png`` as data, one
  float32 array ``layer_<i>`` of (H, T, T) per layer (rows: query step, columns: key step) and
  ``tokens`` (T,), the validation trajectory they were computed on. The analysis draws its
  causal-vs-no-mask figure from these.
- ``training_config.json``: the training config the folder is bound to (see ``bind_folder``);
- ``train_done.json`` and ``trained_by.json`` beside ``checkpoints/`` where the model was
  trained, and for ``data=lerobot`` ``tokenizer.json`` (the fitted bins); ``error.log``: the traceback of a job that failed unexpectedly;
- ``last_attempt.json``: a later attempt in a completed run's folder that did not complete
  (``summary.json`` keeps the completed results); ``.job.lock``: held by the running job.

A sweep folder holds ``sweep_jobs.json``: every job folder its launches ran.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from vla_ablate._version import __version__
from vla_ablate.errors import ConfigError
from vla_ablate.fileio import atomic_write, json_default, json_line, write_json

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"  # the csv logger's copy of the records
ATTENTION_MAPS = "attention_maps.npz"
LOSS_CURVE_PNG = "loss_curve.png"
ATTENTION_MAPS_PNG = "attention_maps.png"
BINDING = "training_config.json"
ERROR_LOG = "error.log"
ATTEMPT = "last_attempt.json"  # a later attempt that did not complete, beside a completed run
JOB_LOCK = ".job.lock"  # held by the process running the folder's job
HYDRA = ".hydra"
JOB_CONFIG = f"{HYDRA}/config.yaml"  # the composed config a job ran with
WANDB = "wandb"  # the wandb logger's offline run and caches
WANDB_RUN = "run.json"  # in wandb/: the job's wandb run (id, group, project, mode, name)
_HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# where a model is trained: the job folder, or <sweep>/models/<key>/ for a shared one
MODELS = "models"
SWEEP_JOBS = "sweep_jobs.json"  # in a sweep folder: {"jobs": [every job folder, relative]}
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # the resumable state at the newest save
BEST = "best.pt"  # the weights at the best validation loss
STEP_CHECKPOINT = re.compile(r"step_(\d+)\.pt$")  # step_0001000.pt, every checkpoint_every
TRAIN_DONE = "train_done.json"  # the training result: the model is trained
TRAINED_BY = "trained_by.json"  # the job that trained it last
# data=lerobot: the tokenizers the model was trained with (data/tokenizer.py, Tokenizers),
# beside checkpoints/; every evaluation and `python -m vla_ablate.sample` read them
TOKENIZER = "tokenizer.json"
LOCK = ".lock"  # held while a job trains the model (a folder .lock.d where flock is refused)
LOCK_DIR = ".lock.d"


def step_checkpoint(step: int) -> str:
    return f"step_{step:07d}.pt"


class MetricsFile:
    def __init__(self, folder):
        self.path = Path(folder) / METRICS

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: drop it
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate(self, step: int) -> list[dict]:
        """Keep the records up to ``step`` (where a resumed run restarts); return them."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "".join(json_line(r) for r in kept).encode())
        return kept

    def append(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json_line(record))
            fh.flush()


def read_json(path: Path):
    """A JSON file's value, or None where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_summary(folder, summary: dict) -> None:
    write_json(Path(folder) / SUMMARY, summary)


def json_text(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=json_default) + "\n").encode()


def record_file(path: Path, data: bytes) -> str | None:
    """Write a job's record: atomically, else (a full disk has no room for the temporary copy)
    over the file in place. Returns None, or why neither worked."""
    try:
        atomic_write(path, data)
        return None
    except OSError:
        pass
    try:
        with open(path, "wb") as fh:
            fh.write(data)
        return None
    except OSError as err:
        return err.strerror or str(err)


def unbind_folder(folder) -> None:
    """Undo ``bind_folder`` (a failed attempt that trained nothing)."""
    (Path(folder) / BINDING).unlink(missing_ok=True)


def running_summary(axes: dict) -> dict:
    """The summary a job writes when it starts: lets the analysis tell running from crashed."""
    return {"status": "running", **axes, "axes": axes, "pid": os.getpid(),
            "host": socket.gethostname(), "started_at": time.time()}


def write_attention_maps(folder, maps, tokens) -> Path:
    """``maps``: one (H, T, T) tensor per layer for the trajectory ``tokens`` (T,)."""
    arrays = {f"layer_{i}": m.detach().float().cpu().numpy() for i, m in enumerate(maps)}
    buf = io.BytesIO()
    # compressed: a causal map is zero above its diagonal
    np.savez_compressed(buf, tokens=np.asarray(tokens.cpu(), dtype=np.int64), **arrays)
    path = Path(folder) / ATTENTION_MAPS
    atomic_write(path, buf.getvalue())
    return path
def bind_folder(folder, training: dict) -> None:
    """Bind ``folder`` to the training config that made it, or refuse another one.

    The first job in a folder records ``training`` (and a copy of Hydra's ``.hydra/`` files);
    a later job whose training config differs raises ``ConfigError`` naming the keys, so a
    finished model is never relabelled with settings it was not trained with.
    """
    folder = Path(folder)
    bind_check(folder, training)
    hydra_files = {}
    for name in _HYDRA_FILES:
        file = folder / HYDRA / name
        if file.exists():
            hydra_files[name] = file.read_text()
    write_json(folder / BINDING, {"training": training, "hydra_files": hydra_files})


# training-config keys that the device decides (vla_ablate/config/identity.py training_config)
HOST_KEYS = ("train.muon_newton_schulz",)


def bind_check(folder, training: dict) -> None:
    """Raise ``ConfigError`` if ``folder`` is bound to another training config."""
    path = Path(folder) / BINDING
    if path.exists():
        bound = json.loads(path.read_text())
        diff = differences(bound["training"], training)
        if diff:
            shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
            host = [k for k in HOST_KEYS if any(d.startswith(f"{k}:") for d in diff)]
            advice = [] if len(host) == len(diff) else [
                "repeat its settings to resume or re-evaluate it"]
            if host:
                advice.append(f"{', '.join(host)} follows the device, not a setting (float32 "
                              "where it has no native bf16): resume or re-evaluate it on a host "
                              "of the kind it was trained on")
            advice = "; ".join(advice)
            raise ConfigError(
                f"{folder} holds a run trained with other settings ({shown}); {advice}, or "
                "give a new folder (hydra.run.dir=... or hydra.sweep.dir=...)"
            )


def restore_hydra_files(folder) -> bool:
    """Put back the ``.hydra/`` files of the run a folder is bound to (Hydra rewrote them)."""
    path = Path(folder) / BINDING
    if not path.exists():
        return False
    for name, text in json.loads(path.read_text()).get("hydra_files", {}).items():
        atomic_write(Path(folder) / HYDRA / name, text.encode())
    return True


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version and, in a git checkout, the commit (and whether it has edits)."""
    out = {"vla_ablate_version": __version__, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            git = ["git", "-C", str(root)]
            out["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True,
                                               text=True, timeout=10, check=True).stdout.strip()
            status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True)
            out["git_dirty"] = bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return out
