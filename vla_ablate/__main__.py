"""``vla-ablate [overrides]`` (or ``python -m vla_ablate``), and ``-m ...`` for sweeps."""

import json
import os
import runpy
import sys

import hydra

from vla_ablate.config import register_configs
from vla_ablate.console import hydra_errors_on_one_line, job_started
from vla_ablate.job import ARGV_ENV, objective, run_job
from vla_ablate.sweep import FAILED

register_configs()
PROG_ENV = "VLA_ABLATE_PROG"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    job_started()
    return objective(cfg, run_job(cfg))


def cli() -> None:
    """The console script ``vla-ablate`` (pyproject's ``[project.scripts]``) and ``python -m
    vla_ablate``: Hydra's app, its errors on one line, the exit status counting failed jobs.
    Hydra's tab completion needs a command of its own: ``eval "$(vla-ablate -sc install=bash)"``.

    The console script imports this module; it is then run again as ``__main__``, as ``python -m
    vla_ablate`` runs it, because Hydra finds ``conf/`` beside the file of a ``__main__`` task
    and looks for an importable package ``conf`` otherwise.
    """
    if __name__ != "__main__":
        os.environ[PROG_ENV] = sys.argv[0]  # runpy puts the file's path there meanwhile
        runpy.run_path(__file__, run_name="__main__")
        return
    if PROG_ENV in os.environ:  # the command's name, for Hydra's messages and completion
        sys.argv[0] = os.environ.pop(PROG_ENV)
    os.environ[ARGV_ENV] = json.dumps(sys.argv[1:])  # for the resume hint, also in workers
    with hydra_errors_on_one_line():
        main()
    if FAILED:  # a sweep's jobs, whichever launcher ran them
        print(f"{len(FAILED)} job(s) did not complete; see their summary.json:", file=sys.stderr)
        for folder in FAILED:
            print(f"  {folder}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
