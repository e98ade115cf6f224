"""What a sweep (``python -m vla_ablate -m ...``) does before its first job and after its last.

A Hydra callback (``hydra.callbacks.sweep_checks`` in ``conf/config.yaml``), run in the process
that launches the jobs, whatever the launcher:

- before any job starts, every job's config is composed and checked (``config.validate``, the
  job folder's binding to a training config, two jobs sharing a folder); each problem is one
  line on stderr, and nothing runs (exit 2);
- ``cache`` becomes the outermost axis, so the jobs that reuse a model (its ``cache`` twins) are
  launched after every model's first job instead of beside it: parallel slots train models
  first (a twin that gets a slot before its model's training ends still waits on its lock);
- while the jobs run, a line per job started and finished, read from the jobs' ``summary.json``
  (so under joblib and submitit too, whose jobs print elsewhere or nowhere);
- afterwards, the jobs of this launch that did not complete are counted from their
  ``summary.json`` (the jobs may have run in other processes or on other machines), so the
  exit status reflects them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections import defaultdict
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vla_ablate.config import resolve_data_path, training_config, validate
from vla_ablate.console import USAGE, one_line, report
from vla_ablate.errors import ConfigError
from vla_ablate.fileio import write_json
from vla_ablate.job import LAUNCH_ENV, fetch_dataset
from vla_ablate.runfolder import ATTEMPT, SUMMARY, SWEEP_JOBS, bind_check, read_json

FAILED: list[str] = []  # job folders of this launch that did not complete (set at the end)
_WATCH: list[JobWatch] = []  # not on the callback: launchers pickle it with every job


class SweepChecks(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ[LAUNCH_ENV] = uuid.uuid4().hex  # inherited by the launchers' workers
        cache_outermost(config)
        storage_folder(config)
        problems, folders = checked_jobs(config)
        if problems:
            report(problems)
            sys.exit(USAGE)
        list_jobs(Path(config.hydra.sweep.dir), folders)
        _WATCH[:] = [JobWatch(Path(config.hydra.sweep.dir), os.environ[LAUNCH_ENV], folders)]
        _WATCH[0].start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        for watch in _WATCH:
            watch.close()
        _WATCH.clear()
        FAILED[:] = failed_jobs(Path(config.hydra.sweep.dir), os.environ.get(LAUNCH_ENV))


class JobWatch(threading.Thread):
    """A line on stderr per job of this launch started and finished, whichever launcher runs
    it, read every ``every`` seconds from the jobs' ``summary.json`` (a job whose whole run
    falls between two reads gets both lines at once). ``folders``: the jobs in launch order,
    numbered ``i/N``; empty (a sweeper that picks jobs as it goes), every job folder found."""

    def __init__(self, sweep_dir: Path, launch_id: str, folders: list[Path], every=1.0):
        super().__init__(daemon=True, name="vla_ablate-job-watch")
        self.sweep_dir, self.launch_id, self.folders = sweep_dir, launch_id, folders
        self.every, self.stop = every, threading.Event()
        self.started: set[Path] = set()
        self.finished: set[Path] = set()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.poll()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.poll()  # the last jobs' lines

    def poll(self) -> None:
        folders = self.folders or sorted(p.parent for p in self.sweep_dir.glob(f"*/{SUMMARY}"))
        for num, folder in enumerate(folders, 1):
            if folder in self.finished:
                continue
            try:
                summary = json.loads((folder / SUMMARY).read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not started, or being written
            if not isinstance(summary, dict) or summary.get("launch_id") != self.launch_id:
                continue
            which = f"job {num}/{len(folders)}" if self.folders else "job"
            if folder not in self.started:
                self.started.add(folder)
                _say(f"{which} started: {folder.name}")
            status = summary.get("status")
            if status != "running":
                self.finished.add(folder)
                seconds = summary.get("wall_time_s")
                took = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
                _say(f"{which} finished: {folder.name} ({status}{took})")


def _say(line: str) -> None:
    print(f"[vla_ablate] {line}", file=sys.stderr, flush=True)  # not into a job's own log


def storage_folder(config: DictConfig) -> None:
    """Create the folder of a sweeper's SQLite storage (Optuna's study opens it before the
    launcher creates the sweep folder it lives in)."""
    storage = str(config.hydra.sweeper.get("storage") or "")
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def cache_outermost(config: DictConfig) -> None:
    """Make ``cache`` the first swept key (the slowest to vary), wherever it was given."""
    params = dict(config.hydra.sweeper.get("params") or {})
    task = list(config.hydra.overrides.task)
    swept = [o for o in task if o.partition("=")[0] == "cache" and "," in o]
    if swept:
        task.remove(swept[0])
        value = swept[0].partition("=")[2]
    elif "cache" in params:
        value = params.pop("cache")
    else:
        return
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.task = task
        config.hydra.sweeper.params = {"cache": value, **params}


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, in launch order: what Hydra's basic sweeper will run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=loader)
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def list_jobs(sweep_dir: Path, folders: list[Path]) -> None:
    """Record the sweep's job folders in ``sweep_jobs.json`` (with those of earlier launches in
    the same folder), so the analysis can name a job whose folder is missing."""
    if not folders:
        return
    path = sweep_dir / SWEEP_JOBS
    listed = read_json(path)
    jobs = list(listed.get("jobs") or []) if isinstance(listed, dict) else []
    for folder in folders:
        name = os.path.relpath(folder, sweep_dir)
        if name not in jobs:
            jobs.append(name)
    write_json(path, {"jobs": jobs})


def check_jobs(config: DictConfig) -> list[str]:
    """One ``error: ...`` line per problem found in any job (empty: every job can run)."""
    return checked_jobs(config)[0]


def checked_jobs(config: DictConfig) -> tuple[list[str], list[Path]]:
    """(``check_jobs``'s lines, every job's folder)."""
    from hydra.core.global_hydra import GlobalHydra

    if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
        return [], []  # another sweeper chooses its jobs as it goes
    loader = GlobalHydra.instance().config_loader()
    found: dict[str, list[str]] = defaultdict(list)
    folders: dict[Path, str] = {}
    jobs = sweep_jobs(config)
    for num, overrides in enumerate(jobs):
        name = ",".join(overrides) or f"job {num}"
        try:
            job = loader.load_sweep_config(config, list(overrides))
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors, reported
            found[one_line(str(err)).removeprefix("error: ")].append(name)
            continue
        with open_dict(job):
            job.hydra.job.num = num
        folder = Path(job.hydra.sweep.dir) / str(job.hydra.sweep.subdir)
        if folder in folders:
            found[f"jobs {folders[folder]} and {name} would share the folder {folder}; "
                  "sweep the key in the folder name too (hydra.job.config.override_dirname."
                  "exclude_keys)"].append(name)
        folders[folder] = name
        task = OmegaConf.masked_copy(job, [k for k in job if k != "hydra"])
        try:
            resolve_data_path(task)  # as the job itself binds it
            fetch_dataset(task)  # before any job starts; the jobs then find the copy
            validate(task)
            bind_check(folder, training_config(task))
        except ConfigError as err:
            found[str(err)].append(name)
    lines = []
    for message, names in found.items():
        where = "" if len(names) == len(jobs) else (
            f" (job{'s' if len(names) > 1 else ''} {'; '.join(names[:3])}"
            f"{f' and {len(names) - 3} more' if len(names) > 3 else ''})")
        lines.append(f"error: {message}{where}")
    return lines, list(folders)


def failed_jobs(sweep_dir: Path, launch_id: str | None) -> list[str]:
    """Job folders below ``sweep_dir`` whose summary, or whose record of a later attempt
    (``last_attempt.json``: a re-run that failed or was refused in a completed run's folder),
    was written by this launch and is not completed."""
    failed = set()
    for name in (SUMMARY, ATTEMPT):
        for path in sweep_dir.rglob(name):
            try:
                record = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if (isinstance(record, dict) and record.get("launch_id") == launch_id
                    and record.get("status") != "completed"):
                failed.add(str(path.parent))
    return sorted(failed)
