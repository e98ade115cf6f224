"""``python -m vla_ablate [overrides]`` and ``python -m vla_ablate -m ...`` (sweeps)."""

import sys

import hydra

from vla_ablate.cli import hydra_errors_on_one_line, job_started
from vla_ablate.config import register_configs
from vla_ablate.run import FAILED_JOBS, run_job

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    job_started()
    return run_job(cfg)


if __name__ == "__main__":
    with hydra_errors_on_one_line():
        main()
    if FAILED_JOBS:
        print(f"{len(FAILED_JOBS)} job(s) did not complete; see their summary.json",
              file=sys.stderr)
        sys.exit(1)
