"""``python -m analysis SWEEP --wandb``: the report as one wandb run in the sweep's group.

The jobs' runs (``logger=wandb``) hold each job's curves and figures; this run holds what only
the whole sweep can answer, the same as report.md: the four tables (``tables/positional``,
``tables/mask_audit``, ``tables/kv_cache``, ``tables/tokens``; ``tables/tokenizer`` for runs on
continuous actions), the plots (``plots/<name>``),
the findings and report.md itself. It joins the group, project and mode the jobs recorded in
their ``wandb/run.json``; a sweep logged without wandb gets the group its jobs would have had.
Offline by default, like the jobs: the run is written to ``<report>/wandb/offline-run-*``.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd

from analysis.common import WANDB_RUN

TABLES = ("positional", "mask_audit", "kv_cache", "tokens", "tokenizer")  # the last: when made
PROJECT = "vla-ablate"  # conf/logger/wandb.yaml's default


def job_runs(sweep_dirs) -> list[dict]:
    """The ``wandb/run.json`` of every job (or single run) in ``sweep_dirs`` that has one."""
    found = []
    for sweep in map(Path, sweep_dirs):
        for path in sorted([*sweep.glob(f"*/{WANDB_RUN}"), *sweep.glob(WANDB_RUN)]):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return [r for r in found if isinstance(r, dict)]


def settings(sweep_dirs, mode: str | None = None) -> dict:
    """Project, entity, group, mode and tags of the report's run, from the jobs' runs."""
    runs = job_runs(sweep_dirs)

    def common(key, default):
        values = Counter(r.get(key) for r in runs if r.get(key) is not None)
        return values.most_common(1)[0][0] if values else default

    first = Path(sweep_dirs[0]).resolve() if sweep_dirs else Path("report")
    group = common("group", "-".join(first.parts[-2:]))  # a sweep's jobs' default group
    debug = any("debug" in (r.get("tags") or []) for r in runs)
    return {"project": common("project", PROJECT), "entity": common("entity", None),
            "group": group, "mode": mode or common("mode", "offline"),
            "name": f"report-{group}", "tags": ["report", *(["debug"] if debug else [])],
            "jobs": len(runs)}


def _offline_env(folder: Path, mode: str) -> None:
    """Keep wandb off the network and inside ``folder`` (set before ``import wandb``; the same
    as the jobs' ``vla_ablate.loggers.offline_wandb_env``, which the analysis does not import)."""
    if mode != "online":
        os.environ["WANDB_MODE"] = mode
        os.environ["WANDB_ERROR_REPORTING"] = "false"
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_DIR"] = str(folder)
    for var, sub in [("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")]:
        os.environ[var] = str(folder / "wandb" / "home" / sub)


def _run_id(out: Path) -> str:
    """The report run's id, kept in ``<report>/wandb/run_id``."""
    path = out / "wandb" / "run_id"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def findings(report_md: str) -> list[str]:
    """The bullet points of report.md's Findings section."""
    lines, inside = [], False
    for line in report_md.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Findings"
        elif inside and line.startswith("- "):
            lines.append(line[2:])
    return lines


def report_tables(out: Path) -> dict:
    """The report's four tables by name, as written beside report.md. A table with no rows
    (``positional`` of a sweep without the causal mask) keeps its place, as one ``note``."""
    tables = {}
    for name in TABLES:
        try:
            tables[name] = pd.read_csv(out / f"{name}.csv")
        except FileNotFoundError:
            continue
        except pd.errors.EmptyDataError:
            tables[name] = pd.DataFrame({"note": ["no rows for this sweep"]})
    return tables


def _table(wandb, frame: pd.DataFrame):
    """A wandb.Table of ``frame``; missing values as None (NaN is not JSON)."""
    frame = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(columns=[str(c) for c in frame.columns], data=frame.values.tolist())


def log_report(out_dir, sweep_dirs, mode: str | None = None, log=print) -> Path:
    """Log the report in ``out_dir`` (tables, plots, report.md) to one wandb run in the sweep's
    group; returns the folder wandb wrote the run to."""
    out = Path(out_dir).resolve()
    st = settings(sweep_dirs, mode)
    _offline_env(out, st["mode"])
    import wandb

    text = (out / "report.md").read_text()
    run = wandb.init(project=st["project"], entity=st["entity"], group=st["group"],
                     name=st["name"], job_type="report", tags=st["tags"], dir=str(out),
                     mode=st["mode"], reinit="finish_previous", resume="allow",
                     id=_run_id(out),  # the report made again: the same run, logged again
                     config={"sweeps": [str(d) for d in sweep_dirs], "jobs_logged": st["jobs"]})
    try:
        data = {f"tables/{name}": _table(wandb, frame)
                for name, frame in report_tables(out).items()}
        data.update({f"plots/{png.stem}": wandb.Image(str(png))
                     for png in sorted(out.glob("*.png"))})
        data["report"] = wandb.Html(f"<pre>{html.escape(text)}</pre>")
        run.log(data)
        run.summary["findings"] = "\n".join(findings(text))
        run.save(str(out / "report.md"), base_path=str(out), policy="now")
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    folder = Path(run.dir).parent
    log(f"wandb run {st['name']} (group {st['group']}, {len(data) - 1} tables and plots and "
        f"report.md) in {folder}" + (f"; to upload it: wandb sync {folder}"
                                     if st["mode"] == "offline" else ""))
    return folder
