"""``python -m analysis SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--target-loss X]
[--format md|mdx] [--student NAME] [--wandb]``; ``python -m analysis --from-tables DIR`` (the report
made again from an earlier report's data files); or both, ``--from-tables`` repeated and with
sweep folders, ``--out`` given: a study run in parts, merged into one report."""

import argparse
import shutil
import sys
from pathlib import Path

from analysis.report import build_report


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line, ``error: ...``, exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def main(argv=None) -> int:
    parser = _OneLineParser(
        prog="python -m analysis",
        description="Tables, plots and report.md from one or more sweep folders.")
    parser.add_argument("sweep_dirs", nargs="*", type=Path, help="sweep (or single run) folders")
    parser.add_argument("--from-tables", type=Path, action="append", default=[],
                        metavar="DIR",
                        help="an earlier report's runs.csv, metrics.csv and speed.csv in DIR: "
                             "alone, the report made again without its sweep folders (default "
                             "--out: DIR/regenerated, so the report in DIR stays as it is); "
                             "repeated or with sweep folders, a study's parts merged into one "
                             "report (--out needed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: FIRST_SWEEP_DIR/report, or "
                             "DIR/regenerated with --from-tables DIR alone)")
    parser.add_argument("--target-loss", type=float, default=2.0,
                        help="validation loss for the steps-to-reach column (default 2.0)")
    parser.add_argument("--format", choices=("md", "mdx"), default="md",
                        help="md: report.md (default); mdx: also the course's Scratch-1 page, "
                             "STUDENT.mdx with its images in images/")
    parser.add_argument("--student", default=None,
                        help="name in the MDX page's front matter and file name (with --format mdx)")
    parser.add_argument("--date", default=None, help="date in the MDX page (default: today)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the tables, plots and report.md to one wandb run in the "
                             "sweep's group (offline unless the jobs logged online; "
                             "docs/wandb.md)")
    args = parser.parse_intermixed_args(argv)  # sweep folders before or after options
    if args.format != "mdx" and (args.student or args.date):
        parser.error("--student and --date belong to the MDX page: add --format mdx")
    if not args.sweep_dirs and not args.from_tables:
        parser.error("give sweep folders, --from-tables DIR, or both (a study's parts)")
    for folder in args.sweep_dirs:
        if not folder.is_dir():
            print(f"error: no such sweep folder: {folder}", file=sys.stderr)
            return 2
    for folder in args.from_tables:
        if not folder.is_dir():
            print(f"error: no such report folder: {folder}", file=sys.stderr)
            return 2
    merging = len(args.sweep_dirs) + len(args.from_tables) > 1 and bool(args.from_tables)
    if merging and args.out is None:
        parser.error("merging parts: say where the merged report goes (--out DIR)")
    out = args.out or (args.from_tables[0] / "regenerated" if args.from_tables
                       else args.sweep_dirs[0] / "report")
    if any(out.resolve() == folder.resolve() for folder in args.from_tables):
        parser.error(f"--out {out} is a report folder being read: write elsewhere")
    existed = out.exists()
    try:
        mdx = {"student": args.student, "date": args.date} if args.format == "mdx" else None
        build_report(args.sweep_dirs, out, args.target_loss, mdx=mdx,
                     from_tables=args.from_tables)
        if args.wandb:
            from analysis.wandb_run import log_report

            log_report(out, args.sweep_dirs or args.from_tables)
    except ValueError as err:
        if not existed:  # write nothing on failure
            shutil.rmtree(out, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """The console script ``vla-ablate-report`` (pyproject's ``[project.scripts]``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
