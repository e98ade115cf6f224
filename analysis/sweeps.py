"""Which sweep a person means: a path given relative to where they started (or to the
repository), or the newest real sweep; wherever the code runs (a notebook's kernel runs in the
notebook's folder, ``analysis/``, under ``jupyter execute`` and JupyterLab).

Smoke runs (``debug=smoke``) write under ``outputs/debug/`` and are never "the newest sweep".
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (an editable install's checkout)
SWEEPS = Path("outputs") / "multirun"  # real sweeps (conf/config.yaml: hydra.sweep.dir)


def start_dirs() -> list[Path]:
    """Where a relative path is looked up, in order: the folder the user started in (that of
    the process that started this one, e.g. ``jupyter execute``, ``papermill`` or the Jupyter
    server; else the shell's ``$PWD``), then the repository root. Never the kernel's own working
    directory, unless it is one of these."""
    found = []
    try:
        found.append(Path(os.readlink(f"/proc/{os.getppid()}/cwd")))
    except OSError:  # not Linux
        pass
    if os.environ.get("PWD"):
        found.append(Path(os.environ["PWD"]))
    found.append(ROOT)
    return list(dict.fromkeys(found))


def resolve_sweep(path: str | os.PathLike | None = None) -> Path:
    """The sweep folder ``path`` names (a relative path from ``start_dirs()``); with None,
    ``$SWEEP_DIR`` if set, else the newest real sweep under ``outputs/multirun``
    (``FileNotFoundError`` naming where it looked)."""
    path = path or os.environ.get("SWEEP_DIR") or None
    if path is not None:
        path = Path(path).expanduser()
        candidates = [path] if path.is_absolute() else [d / path for d in start_dirs()]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        raise FileNotFoundError(f"no sweep folder {path} (looked in: "
                                f"{', '.join(str(c) for c in candidates)})")
    for base in start_dirs():
        if newest := newest_sweep(base / SWEEPS):
            return newest
    raise FileNotFoundError(
        f"no sweep under {SWEEPS} in {', '.join(str(d) for d in start_dirs())}: run one "
        "(python -m vla_ablate -m ...) or give its folder (sweep_dir)")


def newest_sweep(root: Path) -> Path | None:
    """The newest sweep folder (``<date>/<time>``) under ``root`` that holds jobs and is not a
    smoke sweep (a ``debug=`` override in its jobs' ``.hydra/overrides.yaml``)."""
    for sweep in sorted(root.glob("*/*"), reverse=True):
        overrides = list(sweep.glob("*/.hydra/overrides.yaml"))
        if overrides and not any("- debug=" in p.read_text() for p in overrides):
            return sweep
    return None
