import fcntl
import json
import os
import shutil
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
# pytest -n: the workers share the cores, so the runs and scripts a test starts get their share
# (outside submitit a job takes at most OMP_NUM_THREADS threads) rather than every core
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))


def compose_cfg(overrides=(), hydra_config=False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="test"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def run_cli(args, cwd, timeout=600, env=None, check=True):
    """Run ``python -m vla_ablate ARGS`` in a subprocess (``env`` adds to the environment, a
    value of None removes the variable); returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset it
    proc = subprocess.run([sys.executable, "-m", "vla_ablate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


SMOKE = ["debug=smoke"]


def built_once(tmp_path_factory, name, build):
    """A folder made by ``build(folder)`` once per test session, however many pytest-xdist
    workers ask for it: the first to take the lock builds it, the others wait and read it (or
    fail at once if its build failed). Without xdist, a fresh folder of this session. Its users
    only read it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
    folder, failed = shared / name, shared / f"{name}.failed"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():  # one failed build is reported by every test that needs it
            pytest.fail(f"{name} could not be built (by another worker):\n{failed.read_text()}",
                        pytrace=False)
        if not (shared / f"{name}.built").exists():
            try:
                shutil.rmtree(folder, ignore_errors=True)  # left by a worker that died building
                folder.mkdir()
                build(folder)
            except BaseException as err:
                failed.write_text(f"{type(err).__name__}: {err}")
                raise
            (shared / f"{name}.built").touch()
    return folder


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One real debug=smoke multirun over pos x mask x cache (8 jobs), shared by the tests:
    its folder and the finished command (returncode, stdout, stderr)."""
    def build(root):
        proc = run_cli(
            ["-m", *SMOKE, "pos=rope,sinusoidal", "mask=causal,none", "cache=on,off",
             f"hydra.sweep.dir={root / 'sweep'}", f"data.cache_dir={root / 'datasets'}"],
            cwd=root,
        )
        (root / "command.json").write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))

    root = built_once(tmp_path_factory, "smoke_sweep", build)
    code, out, err = json.loads((root / "command.json").read_text())
    return root / "sweep", subprocess.CompletedProcess(["python", "-m", "vla_ablate"], code, out, err)
