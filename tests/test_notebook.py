"""analysis/report.ipynb runs wherever a person runs it, as docs/analysis.md says: nbclient,
``jupyter execute`` and ``papermill -p sweep_dir ...``, from the repository root and from
``analysis/``, a relative sweep path read from where the user started or the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from analysis.sweeps import newest_sweep, resolve_sweep
from conftest import ROOT

NOTEBOOK = ROOT / "analysis" / "report.ipynb"


def _check_outputs(nb) -> None:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(o.get("output_type") == "display_data" for o in outputs) >= 3  # the plots
    text = json.dumps([o.get("data", {}) for o in outputs])
    assert "val_loss_mean" in text and "cheating_gap" in text and "speedup_median" in text


def test_notebook_executes_headless(smoke_sweep, tmp_path):
    from nbclient import NotebookClient

    sweep, _ = smoke_sweep
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert "parameters" in params.metadata.get("tags", [])
    assert params.source.startswith("sweep_dir = None")  # the name papermill's -p sets
    params.source = f"sweep_dir = {str(sweep)!r}\ntarget_loss = 2.0"
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    _check_outputs(nb)


@pytest.fixture
def sweep_in_repository(smoke_sweep):
    """The smoke sweep, reachable as a path relative to the repository root (a link under the
    ignored outputs/), removed afterwards."""
    link = Path("outputs") / f"test-notebook-{uuid.uuid4().hex[:8]}"
    (ROOT / "outputs").mkdir(exist_ok=True)
    (ROOT / link).symlink_to(smoke_sweep[0], target_is_directory=True)
    yield link
    (ROOT / link).unlink()


@pytest.mark.slow
@pytest.mark.parametrize("start", [".", "analysis"])
@pytest.mark.parametrize("tool", ["jupyter", "papermill"])
def test_notebook_runs_from_where_the_user_starts(sweep_in_repository, tmp_path, tool, start):
    """The commands of docs/analysis.md, from the root and from analysis/ (where the kernel
    of `jupyter execute` runs whatever the start): a relative path never depends on it."""
    cwd = ROOT / start
    notebook = os.path.relpath(NOTEBOOK, cwd)
    env = {**os.environ, "PWD": str(cwd)}  # what a shell in that folder would set
    if tool == "jupyter":
        args = [str(Path(sys.executable).parent / "jupyter"), "execute", notebook]
        env["SWEEP_DIR"] = str(sweep_in_repository)
    else:
        pytest.importorskip("papermill")
        out = tmp_path / "out.ipynb"
        args = [sys.executable, "-m", "papermill", notebook, str(out),
                "-p", "sweep_dir", str(sweep_in_repository)]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if tool == "papermill":
        _check_outputs(nbformat.read(out, as_version=4))


def test_newest_sweep_is_never_a_smoke_sweep(tmp_path, monkeypatch):
    def job(sweep, overrides):
        (tmp_path / sweep / "job" / ".hydra").mkdir(parents=True)
        (tmp_path / sweep / "job" / ".hydra" / "overrides.yaml").write_text(overrides)

    job("outputs/multirun/2026-01-01/10-00-00", "- pos=rope\n")
    job("outputs/multirun/2026-01-02/10-00-00", "- debug=smoke\n- pos=rope\n")  # newer, smoke
    (tmp_path / "outputs/multirun/2026-01-03/10-00-00").mkdir(parents=True)  # no jobs yet
    assert newest_sweep(tmp_path / "outputs/multirun") == \
        tmp_path / "outputs/multirun/2026-01-01/10-00-00"
    monkeypatch.delenv("SWEEP_DIR", raising=False)
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.chdir(tmp_path / "outputs")  # a kernel's own folder is never where it looks
    monkeypatch.setattr("analysis.sweeps.start_dirs", lambda: [tmp_path])
    assert resolve_sweep() == tmp_path / "outputs/multirun/2026-01-01/10-00-00"
    assert resolve_sweep("outputs/multirun/2026-01-02/10-00-00").name == "10-00-00"
    with pytest.raises(FileNotFoundError, match="no sweep folder"):
        resolve_sweep("no/such/sweep")
