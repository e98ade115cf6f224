import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vla_ablate.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# wandb must never reach the network from the test suite
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def compose_cfg(overrides=(), hydra_config=False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="test"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def run_cli(args, cwd, timeout=600, env=None, check=True):
    """Run ``python -m vla_ablate ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "vla_ablate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


SMOKE = ["debug=smoke"]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One real debug=smoke multirun over pos x mask x cache (8 jobs), shared by the tests."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "sweep"
    proc = run_cli(
        ["-m", *SMOKE, "pos=rope,sinusoidal", "mask=causal,none", "cache=on,off",
         f"hydra.sweep.dir={sweep}", f"data.cache_dir={root / 'datasets'}"],
        cwd=root,
    )
    return sweep, proc
