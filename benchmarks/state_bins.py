"""How much of the action's information survives quantised state tokens (tokens=state_action).

    python benchmarks/state_bins.py [--trajectories 2000] [--bins 8 16 32 64 128 256]

A step's action token is 32 * octant + magnitude bin of the error target - end effector, plus
the +-2 noise. For each candidate state (the end effector's x, y, z, or the seven joint
angles, from which the end effector follows by forward kinematics) and number of bins, on
fresh trajectories of the course's process with their true targets: how often the noise-free
action computed from the bins' centres differs from the one computed from the exact state
(``mismatch``; 0 means the tokens keep all the state says about the action), the mean size of
that difference in token ids, how often a step's state tokens differ from the previous step's
(``moves``: the arm's motion as the model sees it), and the vocabulary and tokens per step.
The baseline is the exact state (mismatch 0 by definition).
"""

import argparse

import numpy as np

from vla_ablate.data import NUM_JOINTS, VOCAB_SIZE, forward_kinematics_7dof, generate_dataset
from vla_ablate.data.tokens import TokenLayout

CANDIDATES = {"ee_xyz": ("ee_x", "ee_y", "ee_z"),
              "joints": tuple(f"q{i}" for i in range(NUM_JOINTS))}


def clean_token(targets, ee):
    """The action token before noise (the process's steps 2-5 without u)."""
    err = targets[:, None, :] - ee
    octant = 4 * (err[..., 0] > 0) + 2 * (err[..., 1] > 0) + (err[..., 2] > 0)
    mag = np.floor(np.clip(np.linalg.norm(err, axis=-1) / 3.0, 0, 1) * 31)
    return 32 * octant + mag


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=2000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--bins", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    data = generate_dataset(args.trajectories, args.length, args.seed, progress=False)
    states = data["states"].double()
    # the targets are not stored: recover them from the generator's stream (same seed, same draws)
    rng = np.random.default_rng(args.seed)
    rng.uniform(-np.pi / 2, np.pi / 2, size=(args.trajectories, NUM_JOINTS))
    targets = rng.uniform(-1.5, 1.5, size=(args.trajectories, 3))
    exact = clean_token(targets, states[..., NUM_JOINTS:].numpy())
    print(f"{args.trajectories} trajectories of {args.length} steps (seed {args.seed}); "
          "baseline: the exact state, mismatch 0\n")
    print(f"{'state':<8}{'bins':>6}{'tokens/step':>13}{'vocab':>7}{'mismatch':>10}"
          f"{'mean |diff|':>13}{'moves':>8}")
    for name, values in CANDIDATES.items():
        for bins in args.bins:
            layout = TokenLayout(state=values, bins=bins)
            ids = layout.state_ids(states)
            centres = layout.state_values(ids).numpy()
            ee = centres if name == "ee_xyz" else forward_kinematics_7dof(centres)
            approx = clean_token(targets, ee)
            moves = (ids[:, 1:] != ids[:, :-1]).any(-1).float().mean().item()
            print(f"{name:<8}{bins:>6}{layout.per_step:>13}{layout.vocab_size:>7}"
                  f"{(approx != exact).mean():>10.1%}{np.abs(approx - exact).mean():>13.2f}"
                  f"{moves:>8.1%}")
    print(f"\n(action tokens alone: 1 token/step, vocab {VOCAB_SIZE})")


if __name__ == "__main__":
    main()
