"""The vectorised trajectory generator against a per-step loop of the same process.

    python benchmarks/data_generation.py [--trajectories 10000] [--steps 50] [--repeats 3]

Prints both times (median of the repeats for the generator, one run of the loop) and the ratio.
Goal: 10,000 x 50 in under 1 s and at least 50x faster than the loop.
"""

import argparse
import statistics
import time

import numpy as np

from vla_ablate.data import LINK_LENGTHS, generate_dataset


def loop_dataset(num_trajectories, seq_length, seed):
    """The course's way: one trajectory at a time, one step at a time, in Python."""
    rng = np.random.default_rng(seed)
    actions = np.zeros((num_trajectories, seq_length), dtype=np.int64)
    states = np.zeros((num_trajectories, seq_length, 10), dtype=np.float32)
    for n in range(num_trajectories):
        q = rng.uniform(-np.pi / 2, np.pi / 2, 7)
        target = rng.uniform(-1.5, 1.5, 3)
        for t in range(seq_length):
            ee = np.array([np.sum(LINK_LENGTHS * np.cos(q)), np.sum(LINK_LENGTHS * np.sin(q)),
                           np.sum(LINK_LENGTHS[:3] * np.sin(q[:3]))])
            states[n, t, :7], states[n, t, 7:] = q, ee
            err = target - ee
            mag = np.linalg.norm(err)
            octant = 4 * (err[0] > 0) + 2 * (err[1] > 0) + (err[2] > 0) if mag > 1e-6 else 0
            mag_bin = int(np.floor(np.clip(mag / 3, 0, 1) * 31))
            actions[n, t] = np.clip(32 * octant + mag_bin + rng.integers(-2, 3), 0, 255)
            delta = np.zeros(7)
            if mag > 1e-6:
                delta[:3] = 0.05 * err
                delta[3:] = 0.02 * np.max(np.abs(err))
            delta = np.clip(delta + 0.02 * rng.standard_normal(7), -0.15, 0.15)
            q = np.clip(q + delta, -np.pi, np.pi)
    return states, actions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, t = args.trajectories, args.steps

    generate_dataset(100, t, seed=0, progress=False)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        generate_dataset(n, t, seed=42, progress=False)
        times.append(time.perf_counter() - start)
    vec = statistics.median(times)

    print(f"per-step loop over {n} x {t} ... (one run)", flush=True)
    start = time.perf_counter()
    loop_dataset(n, t, seed=42)
    loop = time.perf_counter() - start

    print(f"\n{'method':<28}{'seconds':>10}{'spread':>10}{'traj/s':>12}")
    print(f"{'vectorised (median of ' + str(args.repeats) + ')':<28}{vec:>10.3f}"
          f"{max(times) - min(times):>10.3f}{n / vec:>12,.0f}")
    print(f"{'per-step loop':<28}{loop:>10.3f}{'-':>10}{n / loop:>12,.0f}")
    print(f"\nspeed-up: {loop / vec:.0f}x  (goal: >= 50x, and under 1 s: "
          f"{'yes' if vec < 1 else 'no'})")


if __name__ == "__main__":
    main()
