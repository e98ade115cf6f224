"""A new user's first steps: the console scripts, Hydra's tab completion, and the README's first
screen run as written (extracted from the README, at smoke size)."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from conftest import ROOT

# pyproject's [project.scripts] (read by hand: tomllib is Python 3.11+)
_SECTION = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', _SECTION, re.MULTILINE))


def _console_script(name, *args, env=None, cwd=None):
    """Run console script ``name`` as its installed wrapper would (its module:function, called
    with ``sys.argv[0] == name``), without installing the checkout."""
    module, _, function = SCRIPTS[name].partition(":")
    code = (f"import sys; sys.argv = [{name!r}, *sys.argv[1:]]; "
            f"from {module} import {function}; {function}()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **(env or {})})


def test_console_scripts_name_callables():
    assert {"vla-ablate", "vla-ablate-report"} <= set(SCRIPTS)
    for target in SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_shell_completion_completes_groups_and_options(tmp_path):
    install = _console_script("vla-ablate", "-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion vla-ablate" in install.stdout
    query = _console_script("vla-ablate", "-sc", "query=bash", cwd=tmp_path,
                            env={"COMP_LINE": "vla-ablate pos=", "COMP_POINT": "15"})
    assert query.returncode == 0, query.stderr
    assert {"pos=rope", "pos=sinusoidal", "pos=alibi"} <= set(query.stdout.split())


def test_report_script_is_the_analysis(tmp_path):
    proc = _console_script("vla-ablate-report", str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no such sweep folder")


def first_screen() -> list[str]:
    """The commands of the README's "From nothing to a report", in order (one fenced bash block
    per numbered step)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From nothing to a report")[1].split("\n## ")[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_first_screen_installs_and_tests_as_ci_does():
    """Steps 1, 2 and 6 are what .ci/run runs (its fresh venv proves them); the install comes
    before anything that needs it."""
    steps = first_screen()
    assert len(steps) == 6, steps
    ci = (ROOT / ".ci" / "run").read_text()
    torch_line = re.search(r"pip install --quiet (torch==\S+)\n", ci).group(1)
    assert steps[0] == f"pip install {torch_line}"
    assert steps[1] == 'pip install -e ".[dev]"' and 'pip install --quiet -e ".[dev]"' in ci
    assert steps[5] == "pytest -n auto" and "\npytest -n auto" in ci


def _argv(command: str) -> list[str]:
    args = shlex.split(command)
    assert args[0] == "python", command
    return [sys.executable, *args[1:]]


@pytest.mark.slow
def test_first_screen_reaches_a_report(tmp_path):
    """Steps 3 and 4 as written, in a fresh folder (a clone's root: nothing there yet), reach
    the report the README shows; step 5 composes. The time from step 3 to report.md is printed
    (pytest -s) and, run alone, stays under 5 minutes with room for a busy machine."""
    steps = first_screen()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    sweep = subprocess.run(_argv(steps[2]), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "job 4/4 finished" in sweep.stderr  # the progress line step 3 quotes
    report = subprocess.run(_argv(steps[3]), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    seconds = time.perf_counter() - t0
    print(f"README steps 3-4: {seconds:.0f} s from the first command to report.md")
    readme = (ROOT / "README.md").read_text()
    folder = re.search(r"Result: `(outputs/\S+/report/)`", readme).group(1)
    text = (tmp_path / folder / "report.md").read_text()
    block = readme.split("```text\n")[1].split("```")[0]
    bullets = [" ".join(b.split()) for b in re.split(r"^- ", block, flags=re.M) if b.strip()]
    assert len(bullets) == 3
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for quoted in bullets:  # every quoted piece in the report's line, numbers aside
        pieces = [_numbers_aside(p) for p in quoted.split("...") if p.strip(" ;,.")]
        assert any(all(p.strip() in _numbers_aside(line) for p in pieces) for line in lines), quoted
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # under -n the CPU is shared by design
        assert seconds < 300, seconds
    full = subprocess.run([*_argv(steps[4]), "--cfg", "job"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr


def _numbers_aside(text: str) -> str:
    """``text`` with every number (and an ``x`` speed-up) as ``#``: runs differ in the numbers."""
    return re.sub(r"[-+]?\d+(\.\d+)?x?", "#", text)
