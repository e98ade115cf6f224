"""Reading a LeRobot v3.0 dataset's numeric columns: ``read_lerobot`` against pandas.

    python benchmarks/lerobot_read.py [--frames 100000] [--episodes 1000] [--repeats 3]

Writes a dataset of that many frames (7 action and 10 state values per frame, several episodes
per file, as v3.0 packs them) to a temporary folder, then times reading it back into episodes:
``read_lerobot`` (pyarrow, the columns it needs) and, as the baseline, ``pandas.read_parquet``
of every data file followed by the same grouping into per-episode arrays. Prints both times
(median of the repeats) and the ratio. Goal: 100,000 frames in under 5 s on a 2-core machine.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vla_ablate.data.lerobot import data_files, read_info, read_lerobot, write_lerobot


def pandas_episodes(root: Path) -> list[np.ndarray]:
    frames = pd.concat([pd.read_parquet(p) for p in data_files(root, read_info(root))])
    frames = frames.sort_values(["episode_index", "frame_index"])
    return [np.stack(group["action"].to_numpy()) for _, group in frames.groupby("episode_index")]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    per = args.frames // args.episodes
    actions = [rng.normal(size=(per, 7)).astype(np.float32) for _ in range(args.episodes)]
    states = [rng.normal(size=(per, 10)).astype(np.float32) for _ in range(args.episodes)]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_lerobot(Path(tmp) / "ds", actions, states, fps=30, episodes_per_file=200)
        ours, got = timed(lambda: read_lerobot(root), args.repeats)
        base, ref = timed(lambda: pandas_episodes(root), args.repeats)
    assert all(np.array_equal(a, b) for a, b in zip(got.actions, ref))
    print(f"| reader | frames | episodes | seconds (median of {args.repeats}) |")
    print("|---|---|---|---|")
    print(f"| read_lerobot (pyarrow, needed columns) | {got.frames:,} | {len(got.actions)} | "
          f"{ours:.3f} |")
    print(f"| pandas.read_parquet + groupby (baseline) | {got.frames:,} | {len(ref)} | "
          f"{base:.3f} |")
    print(f"ratio read_lerobot / baseline: {ours / base:.2f}x; goal: under 5 s "
          f"({'met' if ours < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
