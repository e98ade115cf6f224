"""The run-folder format, written here and nowhere else (docs: README, "What a run writes").

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
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from vla_ablate.fileio import atomic_write, json_line, write_json

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
ATTENTION_MAPS = "attention_maps.npz"


class MetricsFile:
    def __init__(self, folder):
        self.path = Path(folder) / METRICS

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: drop it
                continue
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


def write_summary(folder, summary: dict) -> None:
    write_json(Path(folder) / SUMMARY, summary)


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
