"""LeRobot-format datasets: the numeric columns of a local dataset, read episode by episode.

Both layouts in use are read, found through ``meta/info.json``: v2.x (``codebase_version``
v2.0 or v2.1: one parquet file per episode, ``data/chunk-XXX/episode_XXXXXX.parquet``) and
v3.0 (``data/chunk-XXX/file-XXX.parquet``, each holding many episodes). Only the columns asked
for (``action``, ``observation.state`` or others) and the episode and frame indices are read;
images and videos are never opened. Every problem is a ``DataError`` with one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vla_ablate.errors import DataError
from vla_ablate.fileio import atomic_write

VERSIONS = ("v2.0", "v2.1", "v3.0")
INDEX_COLUMNS = ("episode_index", "frame_index")


@dataclass
class Episodes:
    """A dataset's episodes: ``actions[i]`` (T_i, D) and ``states[i]`` (T_i, K) or None."""

    actions: list[np.ndarray]
    states: list[np.ndarray] | None
    fps: float
    action_names: list[str]
    version: str
    state_names: list[str] | None = None

    @property
    def frames(self) -> int:
        return sum(len(a) for a in self.actions)


def read_info(root: Path) -> dict:
    """``meta/info.json``, checked for what the reader needs."""
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        raise DataError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(info, dict):
        raise DataError(f"{path} does not hold a JSON object")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise DataError(f"{path}: codebase_version {version!r} is not one this reader knows "
                        f"({', '.join(VERSIONS)})")
    if not isinstance(info.get("features"), dict) or not isinstance(info.get("data_path"), str):
        raise DataError(f"{path} has no features or data_path")
    return info


def feature(info: dict, name: str, root: Path) -> tuple[int, list[str]]:
    """(width, value names) of a numeric feature, or a DataError naming what is there."""
    features = info["features"]
    if name not in features:
        numeric = [k for k, f in features.items() if _is_numeric(f)]
        raise DataError(f"{root}: no column {name!r} (numeric columns: {', '.join(numeric)})")
    feature = features[name]
    if not _is_numeric(feature):
        raise DataError(f"{root}: column {name!r} holds {feature.get('dtype')!r}, not numbers")
    shape = feature.get("shape") or [1]
    width = int(np.prod(shape))
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]} in some datasets
        names = next(iter(names.values()), None)
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == width else [
        f"{name}[{i}]" for i in range(width)]
    return width, names


def _is_numeric(feature) -> bool:
    return isinstance(feature, dict) and str(feature.get("dtype", "")).startswith(
        ("float", "int", "uint", "bool"))


def data_files(root: Path, info: dict) -> list[Path]:
    """The parquet files the ``data_path`` template names, in order."""
    pattern = re.sub(r"\{[^}]*\}", "*", info["data_path"])
    files = sorted(Path(root).glob(pattern))
    if not files:
        raise DataError(f"{root}: no data files match {info['data_path']}")
    return files


def read_lerobot(root, action_key: str = "action", state_key: str | None = "observation.state"
                 ) -> Episodes:
    """Every episode's actions (and states, where ``state_key`` is given) as float32 arrays."""
    root = Path(root)
    info = read_info(root)
    width, names = feature(info, action_key, root)
    keys = [action_key] + ([state_key] if state_key else [])
    state_names = feature(info, state_key, root)[1] if state_key else None
    columns = {k: [] for k in (*keys, *INDEX_COLUMNS)}
    for path in data_files(root, info):
        try:
            table = pq.read_table(path, columns=list(columns))
        except Exception as err:  # noqa: BLE001 - a missing column, a damaged file
            raise DataError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
        for key in columns:
            columns[key].append(table.column(key))
    episode = np.concatenate([_scalars(c, "episode_index", root) for c in columns["episode_index"]])
    frame = np.concatenate([_scalars(c, "frame_index", root) for c in columns["frame_index"]])
    values = {k: _stacked([_vectors(c, k, root) for c in columns[k]], k, root) for k in keys}
    if values[action_key].shape[1] != width:
        raise DataError(f"{root}: {action_key} holds {values[action_key].shape[1]} values per "
                        f"frame, info.json says {width}")
    order = np.lexsort((frame, episode))  # by episode, then frame
    bounds = np.flatnonzero(np.diff(episode[order])) + 1
    split = {k: np.split(v[order], bounds) for k, v in values.items()}
    return Episodes(split[action_key], split[state_key] if state_key else None,
                    float(info.get("fps") or 0), names, info["codebase_version"], state_names)


def _stacked(parts: list[np.ndarray], name: str, root: Path) -> np.ndarray:
    """The files' (frames, width) arrays as one; files of different widths are a DataError."""
    widths = sorted({p.shape[1] for p in parts})
    if len(widths) > 1:
        raise DataError(f"{root}: {name} has {widths[0]} values per frame in some files and "
                        f"{widths[-1]} in others")
    return np.concatenate(parts)


def _scalars(column, name: str, root: Path) -> np.ndarray:
    array = column.to_numpy()
    if array.dtype.kind not in "iu":
        raise DataError(f"{root}: {name} is not an integer column")
    return array.astype(np.int64)


def _vectors(column, name: str, root: Path) -> np.ndarray:
    """A list (or fixed-size list) column of numbers as a (frames, width) float32 array."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != lengths.max()):
            raise DataError(f"{root}: {name} has frames of {lengths.min()} and {lengths.max()} "
                            "values")
        flat = pc.list_flatten(column)
        width = int(lengths[0]) if len(lengths) else 0
    else:
        flat, width = column, 1
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)
            or pa.types.is_boolean(flat.type)):
        raise DataError(f"{root}: {name} holds {flat.type}, not numbers")
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, max(width, 1))
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise DataError(f"{root}: {name} holds NaN or infinite values in {bad} frames")
    return values


def write_lerobot(root, actions: list[np.ndarray], states: list[np.ndarray] | None, fps: float,
                  version: str = "v3.0", action_names=None, state_names=None,
                  episodes_per_file: int = 1000, video_keys=()) -> Path:
    """Write episodes as a LeRobot dataset (``version`` v3.0 or v2.1), numeric columns only.

    What LeRobot writes, less the videos and statistics: ``meta/info.json``, the episodes'
    metadata (``meta/episodes.jsonl`` in v2.1, ``meta/episodes/chunk-000/file-000.parquet`` in
    v3.0), ``meta/tasks`` and the data files. ``video_keys``: camera features listed in
    info.json as LeRobot lists them (no video is written: readers must not open them).
    """
    root = Path(root)
    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version must be v2.1 or v3.0, got {version}")
    lengths = [len(a) for a in actions]
    info = {"codebase_version": version, "robot_type": "vla-ablate-arm", "fps": fps,
            "total_episodes": len(actions), "total_frames": int(sum(lengths)),
            "total_tasks": 1, "chunks_size": 1000,
            "features": _features(actions, states, fps, action_names, state_names, video_keys),
            "splits": {"train": f"0:{len(actions)}"}}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    episodes = _Episodes(actions, states, fps, fixed=version == "v3.0")
    if version == "v2.1":
        info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        info["video_path"] = ("videos/chunk-{episode_chunk:03d}/{video_key}/"
                              "episode_{episode_index:06d}.mp4" if video_keys else None)
        _write_v21(root, episodes, lengths)
    else:
        info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        info["video_path"] = ("videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
                              if video_keys else None)
        _write_v30(root, episodes, lengths, episodes_per_file)
    atomic_write(root / "meta" / "info.json", json.dumps(info, indent=2).encode())
    return root


def _features(actions, states, fps, action_names, state_names, video_keys) -> dict:
    d = actions[0].shape[1]
    features = {"action": {"dtype": "float32", "shape": [d],
                           "names": list(action_names or [f"a{i}" for i in range(d)])}}
    if states is not None:
        k = states[0].shape[1]
        features["observation.state"] = {"dtype": "float32", "shape": [k],
                                         "names": list(state_names or [f"s{i}" for i in range(k)])}
    for key in video_keys:
        features[key] = {"dtype": "video", "shape": [96, 96, 3],
                         "names": ["height", "width", "channels"],
                         "info": {"video.fps": fps, "video.codec": "av1"}}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


@dataclass
class _Episodes:
    """The episodes to write, as parquet tables (``fixed``: fixed-size list columns, as v3.0
    holds them; v2.1 files hold variable-length lists)."""

    actions: list[np.ndarray]
    states: list[np.ndarray] | None
    fps: float
    fixed: bool

    def table(self, episodes: range, start: int):
        """(the frames of ``episodes`` as a table, the global index after them)."""
        rows = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index",
                                "episode_index", "index", "task_index")}
        index = start
        for e in episodes:
            t = len(self.actions[e])
            rows["action"].append(self.actions[e].astype(np.float32))
            if self.states is not None:
                rows["observation.state"].append(self.states[e].astype(np.float32))
            rows["timestamp"].append(np.arange(t, dtype=np.float32) / self.fps)
            rows["frame_index"].append(np.arange(t))
            rows["episode_index"].append(np.full(t, e))
            rows["index"].append(np.arange(index, index + t))
            rows["task_index"].append(np.zeros(t, dtype=np.int64))
            index += t
        cols = {"action": _list_column(np.concatenate(rows["action"]), self.fixed)}
        if self.states is not None:
            cols["observation.state"] = _list_column(np.concatenate(rows["observation.state"]),
                                                     self.fixed)
        for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            cols[key] = pa.array(np.concatenate(rows[key]))
        return pa.table(cols), index


def _write_v21(root: Path, episodes: _Episodes, lengths: list[int]) -> None:
    """One parquet file per episode, the episodes' metadata as JSON lines."""
    start = 0
    for e in range(len(lengths)):
        path = root / "data" / f"chunk-{e // 1000:03d}" / f"episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        data, start = episodes.table(range(e, e + 1), start)
        pq.write_table(data, path)
    lines = [json.dumps({"episode_index": e, "tasks": ["reach the target"], "length": n})
             for e, n in enumerate(lengths)]
    atomic_write(root / "meta" / "episodes.jsonl", ("\n".join(lines) + "\n").encode())
    atomic_write(root / "meta" / "tasks.jsonl",
                 b'{"task_index": 0, "task": "reach the target"}\n')


def _write_v30(root: Path, episodes: _Episodes, lengths: list[int], per_file: int) -> None:
    """``per_file`` episodes per parquet file, the episodes' metadata (where each one lies) as
    a parquet file of its own."""
    start, meta = 0, {k: [] for k in ("episode_index", "length", "data/chunk_index",
                                      "data/file_index", "dataset_from_index",
                                      "dataset_to_index")}
    for f, first in enumerate(range(0, len(lengths), per_file)):
        group = range(first, min(first + per_file, len(lengths)))
        path = root / "data" / f"chunk-{f // 1000:03d}" / f"file-{f % 1000:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        data, _ = episodes.table(group, start)
        pq.write_table(data, path)
        for e in group:
            for key, value in (("episode_index", e), ("length", lengths[e]),
                               ("data/chunk_index", f // 1000), ("data/file_index", f % 1000),
                               ("dataset_from_index", start),
                               ("dataset_to_index", start + lengths[e])):
                meta[key].append(value)
            start += lengths[e]
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta), path)
    pq.write_table(pa.table({"task_index": [0], "task": ["reach the target"]}),
                   root / "meta" / "tasks.parquet")


def _list_column(values: np.ndarray, fixed: bool):
    """(frames, width) float32 as a list column (fixed-size where ``fixed``)."""
    width = values.shape[1]
    flat = pa.array(values.reshape(-1))
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, width)
    offsets = pa.array(np.arange(0, values.size + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)
