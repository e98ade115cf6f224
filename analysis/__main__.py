"""``python -m analysis SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--target-loss X]``."""

import argparse
import shutil
import sys
from pathlib import Path

from analysis.report import build_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Tables, plots and report.md from one or more sweep folders.")
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep (or single run) folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: FIRST_SWEEP_DIR/report)")
    parser.add_argument("--target-loss", type=float, default=2.0,
                        help="validation loss for the steps-to-reach column (default 2.0)")
    args = parser.parse_args(argv)
    for folder in args.sweep_dirs:
        if not folder.is_dir():
            print(f"error: no such sweep folder: {folder}", file=sys.stderr)
            return 2
    out = args.out or args.sweep_dirs[0] / "report"
    existed = out.exists()
    try:
        build_report(args.sweep_dirs, out, args.target_loss)
    except ValueError as err:
        if not existed:  # write nothing on failure
            shutil.rmtree(out, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
