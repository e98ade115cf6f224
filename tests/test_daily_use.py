"""Small pieces of daily use, in-process: file modes, the lock fallback, wandb's flattening,
one-line errors, the folder binding, job discovery, and docs that must agree with the code."""

import errno
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, compose_cfg
from vla_ablate import host, locks
from vla_ablate.console import one_line
from vla_ablate.errors import ConfigError
from vla_ablate.fileio import write_json
from vla_ablate.loggers import _flatten, _row_tables
from vla_ablate.runfolder import BINDING, bind_folder, restore_hydra_files


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == mode


def test_lock_falls_back_to_a_lock_folder_where_flock_is_refused(tmp_path, monkeypatch):
    def no_flock(fh, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    messages, inside, overlaps = [], [], []
    monkeypatch.setattr(locks, "log", messages.append)

    def job():
        with locks.model_lock(tmp_path):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            end = time.time() + 60  # held until the other job is seen waiting, however busy the CPU
            while not any("waiting for another job" in m for m in messages) and time.time() < end:
                time.sleep(0.01)
            inside.pop()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    assert any("file locks are not supported" in m for m in messages)
    assert any("waiting for another job" in m for m in messages)
    assert not (tmp_path / ".lock.d").exists()


def test_the_thread_count_is_the_jobs_share_of_the_cores_at_most_omp_num_threads(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    messages = []
    monkeypatch.setattr(host, "log", messages.append)
    cfg = compose_cfg(["debug=smoke", "train.concurrent_jobs=1"], hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored
    HydraConfig.instance().set_config(cfg)  # as in a job: thread_count reads the launcher
    monkeypatch.setattr(host.os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert host.thread_count(cfg) == 8
    cfg.train.concurrent_jobs = 3
    assert host.thread_count(cfg) == 2  # 8 cores among 3 jobs at once
    for value, threads in (("1", 1), (" 4 ", 2), ("1,1", 1), ("64", 2)):  # fewer, never more
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert host.thread_count(cfg) == threads, value
    cfg.train.num_threads = 5  # asked for: taken as it is
    assert host.thread_count(cfg) == 5
    cfg.train.num_threads = 0
    assert not messages
    for bad in ("two", "0", "-1", "\u00b2"):  # ignored with a warning, as OpenMP does
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert host.thread_count(cfg) == 2
        assert f"OMP_NUM_THREADS={bad!r} is not a positive number" in messages[-1]
    # submitit: the allocation's cpus_per_task, whatever the shell's OMP_NUM_THREADS
    cfg = compose_cfg(["debug=smoke", "hydra/launcher=submitit_local",
                       "hydra.launcher.cpus_per_task=3"], hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert host.thread_count(cfg) == 3


def test_a_lock_folder_left_by_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(locks.fcntl, "flock",
                        lambda fh, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no locks")))
    monkeypatch.setattr(locks, "log", lambda m: None)
    stale = tmp_path / ".lock.d"
    stale.mkdir()
    (stale / "owner").write_text(f"{os.uname().nodename} {2**22 + 12345}")
    with locks.model_lock(tmp_path):
        pass  # would wait forever if the stale folder were honoured


def test_flatten_turns_rows_into_one_metric_per_cell():
    summary = {"val_loss": 1.5, "kv_cache": {"speed": [
        {"batch_size": 1, "new_tokens": 50, "repeats": 3, "tokens_per_s": 100.0},
        {"batch_size": 8, "new_tokens": 50, "repeats": 3, "tokens_per_s": 700.0},
    ]}}
    flat = _flatten(summary)
    assert flat["val_loss"] == 1.5
    assert flat["kv_cache/speed/batch_size=1/tokens_per_s"] == 100.0
    assert flat["kv_cache/speed/batch_size=8/tokens_per_s"] == 700.0
    assert flat["kv_cache/speed/batch_size=8/new_tokens"] == 50  # constant: a value, not a label
    columns, data = _row_tables(summary)["kv_cache/speed"]
    assert columns == ["batch_size", "new_tokens", "repeats", "tokens_per_s"]
    assert data[1] == [8, 50, 3, 700.0]
    pairs = [{"order": "on-off", "speedup": 2.0}, {"order": "off-on", "speedup": 3.0}]
    summary["kv_cache"]["speed"][0]["pairs"] = pairs  # a cell's timed pairs: summary.json only
    assert not any("/pairs" in key for key in _flatten(summary))
    columns, data = _row_tables(summary)["kv_cache/speed"]
    assert json.loads(data[0][columns.index("pairs")]) == pairs  # a table cell holds JSON text


def test_traceback_and_boolean_group_override_become_one_line():
    report = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"
              "ValueError: Config group override must be a string or a list. Got bool\n")
    line = one_line(report, argv=["debug=smoke", "cache=true"])
    assert line == ("error: cache=true: the cache group takes an option name, not a boolean "
                    "(available: off, on)")


def test_folder_binding_refuses_other_training_settings(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("train:\n  steps: 30\n")
    bind_folder(tmp_path, {"train": {"steps": 30, "lr": 0.003}, "seed": 1})
    bind_folder(tmp_path, {"train": {"steps": 30, "lr": 0.003}, "seed": 1})  # same: accepted
    (tmp_path / ".hydra" / "config.yaml").write_text("train:\n  steps: 60\n")  # Hydra rewrote it
    with pytest.raises(ConfigError) as info:
        bind_folder(tmp_path, {"train": {"steps": 60, "lr": 0.003}, "seed": 2})
    assert "train.steps: 30 -> 60" in str(info.value) and "seed: 1 -> 2" in str(info.value)
    assert "lr" not in str(info.value) and "\n" not in str(info.value)
    assert "repeat its settings to resume" in str(info.value)
    assert "follows the device" not in str(info.value)  # only for keys the device decides
    assert json.loads((tmp_path / BINDING).read_text())["training"]["train"]["steps"] == 30
    assert restore_hydra_files(tmp_path)
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "train:\n  steps: 30\n"


def test_job_discovery_at_any_depth(tmp_path):
    from analysis.collect import job_folders, job_name

    for rel in ["2024-01-01/10-00-00/pos=rope,seed=1", "2024-01-01/10-00-00/pos=rope,seed=2",
                "2024-01-02/09-00-00/10", "2024-01-02/09-00-00/9"]:
        (tmp_path / rel / ".hydra").mkdir(parents=True)
    (tmp_path / "2024-01-01/10-00-00/models/k/.hydra").mkdir(parents=True)  # not a job
    found = [job_name(tmp_path, p) for p in job_folders(tmp_path)]
    assert found == ["2024-01-01/10-00-00/pos=rope,seed=1", "2024-01-01/10-00-00/pos=rope,seed=2",
                     "2024-01-02/09-00-00/9", "2024-01-02/09-00-00/10"]


def test_analysis_of_a_folder_without_jobs_writes_nothing(tmp_path):
    from analysis.__main__ import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []


# ------------------------------------------------------------------------------ docs vs code


def test_ci_installs_torch_as_the_docs_say():
    """The README's first step and docs/development.md name the torch .ci/run installs, and the
    CPU index for machines whose pip would pull the CUDA build (the README's steps themselves:
    tests/test_first_steps.py)."""
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"pip install --quiet (torch==\S+)\n", ci)
    assert pinned, ".ci/run installs no pinned torch"
    for page in ("README.md", "docs/development.md"):
        text = (ROOT / page).read_text().replace("\n", " ")
        assert re.search(r"`pip install torch==\S+ --index-url \S+/cpu`", text), page
        assert f"pip install {pinned.group(1)}" in text, page


def test_slurm_example_that_asks_for_a_gpu_partition_asks_for_a_gpu():
    readme = (ROOT / "docs" / "running.md").read_text().replace("\\\n", " ")
    for line in readme.splitlines():
        if "submitit_slurm" in line and "partition=gpu" in line:
            assert "gpus_per_node=" in line or "gpus_per_task=" in line, line


@pytest.mark.slow
def test_readme_slurm_example_composes(tmp_path):
    """Every key of docs/running.md's SLURM command exists (run with --cfg: nothing is
    submitted)."""
    from conftest import run_cli

    readme = (ROOT / "docs" / "running.md").read_text().replace("\\\n", " ")
    line = next(x for x in readme.splitlines() if "submitit_slurm" in x)
    args = [a for a in line.split() if "=" in a and a not in ("experiment=ablation", "+experiment=ablation")]
    proc = run_cli([*args, "--cfg", "hydra"], cwd=tmp_path)
    assert "gpus_per_node: 1" in proc.stdout and "partition: gpu" in proc.stdout


def test_docs_and_configs_name_nothing_outside_the_repository():
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "conf").rglob("*.yaml"),
             *(ROOT / "vla_ablate").rglob("*.py")]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\bissue \d+", text, re.IGNORECASE), path
        assert "../shared" not in text, path


def test_rope_doc_quotes_no_measurement_benchmarks_md_contradicts():
    """Every loss rope.md quotes is in benchmarks.md or in the result tables it links."""
    rope, bench = (ROOT / "docs" / "rope.md").read_text(), (ROOT / "docs" / "benchmarks.md").read_text()
    for hours in re.findall(r"about (\d+(?:\.\d+)?) hours", rope):
        assert f"{hours} h" in bench or f"{hours} hours" in bench, hours
    measured = []
    for table in (ROOT / "docs" / "results").rglob("*.csv"):
        for cell in re.split(r"[,\n]", table.read_text()):
            try:
                measured.append(float(cell))
            except ValueError:
                pass
    for number in re.findall(r"\b[12]\.\d{3,4}\b", rope):
        digits = len(number.split(".")[1])
        assert number in bench or any(f"{v:.{digits}f}" == number for v in measured), number


def test_paths_in_this_file_exist():
    assert Path(ROOT / ".ci" / "run").exists()


def _docs_commands():
    """(file, code, printed) of each `python -c` in the docs that reads a table under docs/results/,
    as a reader copies it: a fenced block's indentation (a list item's) removed, the quoting undone
    as the shell would; `printed` is what a transcript (`$ command`, then its output up to a blank
    line) shows it printed, else None."""
    found = []
    for path in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.txt")]:
        lines, text, indent = path.read_text().splitlines(), [], None
        for line in lines:  # drop each fenced block's own indentation from its lines
            fence = re.match(r"(\s*)```", line)
            if fence:
                indent = None if indent is not None else len(fence.group(1))
            text.append(line[min(indent, len(line) - len(line.lstrip())):] if indent else line)
        text = "\n".join(text)
        for m in re.finditer(r"python3? -c (\"(?:[^\"\\]|\\.)*\"|'[^']*')", text):
            code = shlex.split(m.group(1))[0]
            if "docs/results/" not in code:
                continue
            transcript = re.match(r"\$ ", text[text.rfind("\n", 0, m.start()) + 1:m.start()])
            printed = text[m.end():].lstrip("\n").split("\n\n")[0].rstrip() if transcript else None
            found.append((path, code, printed))
    return found


@pytest.mark.slow
def test_the_docs_commands_that_read_committed_tables_run():
    """Each `python -c` in the docs that reads a table under docs/results/ (the commands beside
    numbers derived by hand) still runs against the committed files and prints something, and
    what a transcript says it printed: a renamed column or a moved file would leave a number with
    a command that fails."""
    commands = _docs_commands()
    # tokens.md, the study README (two, one inside a list item) and its machine.txt (a transcript)
    assert len(commands) >= 4 and any(printed for _, _, printed in commands)
    for path, code, printed in commands:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), (path, code, proc.stderr[-2000:])
        if printed is not None:
            assert proc.stdout.rstrip() == printed, (path, code)
