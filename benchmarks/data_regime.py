"""How the trajectory process changes along a long trajectory (why length extrapolation mixes
new positions with a new data regime).

    python benchmarks/data_regime.py [--trajectories 2000] [--length 200]

For windows of time steps, on fresh trajectories of the course's process: the share of steps
at which some joint sits at its limit (|q| = pi), how often the action token changes from the
previous step (the noise-free token, so the rate measures the arm, not the +-2 noise), the mean
distance to the target, and the share of steps within 0.3 of it.
"""

import argparse

import numpy as np

from vla_ablate.data import NUM_JOINTS, generate_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=2000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    data = generate_dataset(args.trajectories, args.length, args.seed, progress=False)
    states = data["states"].numpy().astype(np.float64)
    q, ee = states[..., :NUM_JOINTS], states[..., NUM_JOINTS:]
    # the targets are not stored: recover them from the generator's stream (same seed, same draws)
    rng = np.random.default_rng(args.seed)
    rng.uniform(-np.pi / 2, np.pi / 2, size=(args.trajectories, NUM_JOINTS))
    targets = rng.uniform(-1.5, 1.5, size=(args.trajectories, 3))
    dist = np.linalg.norm(targets[:, None, :] - ee, axis=-1)  # (N, T)
    pinned = (np.abs(q) >= np.pi - 1e-9).any(-1)  # (N, T)
    err = targets[:, None, :] - ee
    octant = 4 * (err[..., 0] > 0) + 2 * (err[..., 1] > 0) + (err[..., 2] > 0)
    mag = np.floor(np.clip(dist / 3.0, 0, 1) * 31)
    clean = 32 * octant + mag  # the token before noise
    changed = np.zeros_like(pinned)
    changed[:, 1:] = clean[:, 1:] != clean[:, :-1]
    edges = [0, 50, 100, 150, args.length]
    print(f"{args.trajectories} trajectories of {args.length} steps (seed {args.seed})\n")
    print(f"{'steps':<12}{'joint at limit':>16}{'token changes':>15}{'mean distance':>15}"
          f"{'within 0.3':>12}")
    for lo, hi in zip(edges, edges[1:]):
        w = slice(max(lo, 1), hi)
        print(f"{f'{lo}-{hi - 1}':<12}{pinned[:, lo:hi].mean():>16.1%}{changed[:, w].mean():>15.1%}"
              f"{dist[:, lo:hi].mean():>15.3f}{(dist[:, lo:hi] < 0.3).mean():>12.1%}")


if __name__ == "__main__":
    main()
