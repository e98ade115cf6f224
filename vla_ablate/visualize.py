"""``python -m vla_ablate.visualize CHECKPOINT --out DIR``: a checkpoint's attention and loss.

Writes ``attention_maps.png`` (every layer and head on one validation trajectory, rows: query
step, columns: key step, one colour scale) and the same weights as ``attention_maps.npz`` (the
run-folder format, ``vla_ablate/runfolder.py``); and ``loss_curve.png`` when the checkpoint sits
in a folder that logged ``metrics.jsonl`` (a run folder, or a sweep's ``models/<key>/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vla_ablate import plots
from vla_ablate.console import ArgumentParser, non_negative_int, run_command
from vla_ablate.errors import CommandError
from vla_ablate.runfolder import (
    ATTENTION_MAPS_PNG,
    LOSS_CURVE_PNG,
    MetricsFile,
    write_attention_maps,
)
from vla_ablate.trained import (
    load_checkpoint_file,
    load_model,
    pick_trajectory,
    train_dir_of,
    validation_actions,
)


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m vla_ablate.visualize",
                       description="Attention maps and loss curve of a checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint (.pt), or a run folder holding one")
    p.add_argument("--out", type=Path, required=True, help="folder for the figures")
    p.add_argument("--trajectory", type=non_negative_int, default=0,
                   help="which validation trajectory (default 0)")
    p.add_argument("--data", default=None,
                   help="a dataset file to take it from (default: the run's data)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    state = load_checkpoint_file(args.checkpoint)
    model = load_model(state)
    val, source = validation_actions(state["path"], args.data)
    tokens = pick_trajectory(val, args.trajectory, model.max_seq_len)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file, not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    margs = state["model_args"]
    title = (f"pos={margs.get('pos')} mask={'causal' if margs.get('causal', True) else 'none'}, "
             f"step {state.get('step', '?')}: validation trajectory {args.trajectory}")
    maps = [m[0] for m in model.attention_maps(tokens[None])]  # per layer (H, T, T)
    written = [args.out / ATTENTION_MAPS_PNG]
    plots.attention_maps(maps, written[0], title=title)
    written.append(write_attention_maps(args.out, maps, tokens))
    records = MetricsFile(train_dir_of(state["path"])).read()
    if records:
        written.append(args.out / LOSS_CURVE_PNG)
        plots.loss_curve(records, written[-1], title=title.split(":")[0])
    print(f"trajectory {args.trajectory} of {len(val)} validation trajectories ({source})")
    for path in written:
        print(f"wrote {path}")
    if not records:
        print(f"no loss curve: no metrics.jsonl beside {state['path'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
