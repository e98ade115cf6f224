"""``python -m vla_ablate.data``: the dataset in the course's format (its ``generate_data.py``).

Writes a pickle of ``{"states": float32 (N, T, 10), "actions": int64 (N, T)}`` torch tensors, as
the course's generator does; ``data.path=`` (and ``vla_ablate.data.load_dataset``) reads it back.
An ``--output`` ending in ``.npz`` writes this project's own array format instead;
``--format lerobot`` writes a LeRobot v3.0 dataset folder with the continuous actions (each
step's joint change, before it is quantised into a token) and the states.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from vla_ablate.console import ArgumentParser, positive_int, run_command
from vla_ablate.data.lerobot import write_lerobot
from vla_ablate.data.process import NUM_JOINTS, generate_continuous, generate_dataset
from vla_ablate.data.store import save_dataset
from vla_ablate.errors import CommandError
from vla_ablate.fileio import atomic_write


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m vla_ablate.data",
                       description="Generate the course's synthetic trajectory dataset.")
    # the course's spellings (--num_trajectories) and the usual dashed ones both work
    p.add_argument("--num_trajectories", "--num-trajectories", type=positive_int, default=10000,
                   help="number of trajectories (default 10000)")
    p.add_argument("--seq_length", "--seq-length", type=positive_int, default=50,
                   help="steps per trajectory (default 50)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--output", type=Path, default=None,
                   help="file to write (default data/trajectories.pkl; .npz: our array format), "
                        "or with --format lerobot a folder (default data/lerobot-arm)")
    p.add_argument("--format", choices=("course", "lerobot"), default="course",
                   help="course: the course's pickle of tokens (default); lerobot: a LeRobot "
                        "v3.0 dataset with continuous actions")
    p.add_argument("--fps", type=positive_int, default=10,
                   help="frames per second recorded in a LeRobot dataset (default 10)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.format == "lerobot":
        return export_lerobot(args)
    args.output = args.output or Path("data/trajectories.pkl")
    if args.output.is_dir():
        raise CommandError(f"--output {args.output} is a folder; name a file")
    data = generate_dataset(args.num_trajectories, args.seq_length, args.seed, progress=True)
    try:
        if args.output.suffix == ".npz":
            save_dataset(data, args.output)
        else:
            atomic_write(args.output, pickle.dumps(data))
    except OSError as err:
        raise CommandError(f"cannot write {args.output}: {err.strerror or err}") from None
    s, a = data["states"], data["actions"]
    print(f"wrote {args.output}: states float32 {tuple(s.shape)}, actions int64 "
          f"{tuple(a.shape)} (tokens {int(a.min())}..{int(a.max())}), seed {args.seed}")
    return 0


def export_lerobot(args) -> int:
    out = args.output or Path("data/lerobot-arm")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"--output {out} exists and is not an empty folder")
    data = generate_continuous(args.num_trajectories, args.seq_length, args.seed, progress=True)
    states, deltas = data["states"].numpy(), data["deltas"].numpy()
    try:
        write_lerobot(out, list(deltas), list(states), args.fps,
                      action_names=[f"dq{i}" for i in range(NUM_JOINTS)],
                      state_names=[*(f"q{i}" for i in range(NUM_JOINTS)), "ee_x", "ee_y", "ee_z"])
    except OSError as err:
        raise CommandError(f"cannot write {out}: {err.strerror or err}") from None
    print(f"wrote {out}: a LeRobot v3.0 dataset of {args.num_trajectories} episodes of "
          f"{args.seq_length} frames, action (joint changes) {deltas.shape[-1]} values, "
          f"observation.state {states.shape[-1]} values, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
