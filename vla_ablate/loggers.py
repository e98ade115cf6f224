"""Where metrics go besides metrics.jsonl: a CSV file, wandb, or nowhere; one small interface."""

from __future__ import annotations

import csv
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from hydra.types import RunMode
from omegaconf import OmegaConf

from vla_ablate.console import log
from vla_ablate.fileio import write_json
from vla_ablate.runfolder import METRICS_CSV, WANDB, WANDB_RUN, code_version

CSV_FIELDS = ["step", "split", "loss", "perplexity", "lr", "tokens_per_s", "elapsed_s",
              "action_loss"]  # action_loss: validation records of tokens=state_action runs


class Logger:
    def begin(self, job_type: str) -> None:
        """What the job does, once known: ``train`` (it trains its model) or ``evaluate`` (it
        reuses one trained before); called before anything is logged."""

    def log_metrics(self, record: dict) -> None:
        pass

    def log_images(self, paths: dict) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class CsvLogger(Logger):
    def __init__(self, run_dir):
        self.path = Path(run_dir) / METRICS_CSV
        self._fh = None

    def log_metrics(self, record):
        if self._fh is None:
            self._fh = open(self.path, "w", newline="")
            self._writer = csv.DictWriter(self._fh, CSV_FIELDS, extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(record)
        self._fh.flush()

    def finish(self, exit_code=0):
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def offline_wandb_env(folder, mode="offline") -> None:
    """Environment that keeps wandb off the network and inside ``folder``.

    Must be set before ``import wandb``: offline mode given only to ``wandb.init`` still sends
    telemetry at exit.
    """
    folder = Path(folder)
    if mode != "online":
        os.environ["WANDB_MODE"] = mode
        os.environ["WANDB_ERROR_REPORTING"] = "false"
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_DIR"] = str(folder)
    # wandb's cache and settings (normally in ~/.cache/wandb and ~/.config/wandb) beside the
    # runs it writes in <folder>/wandb/, so a job writes nothing outside its folder; not a
    # folder named `.wandb`: wandb would take it for its run directory
    for var, sub in [("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")]:
        os.environ[var] = str(folder / WANDB / "home" / sub)


def stable_run_id(run_dir) -> str:
    """The wandb run id of a run folder: made once, kept in ``wandb/run_id``, reused on resume."""
    path = Path(run_dir) / WANDB / "run_id"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


STEP = "step"  # the optimizer step: every chart's x axis (define_metric), not wandb's _step
STEPPED = ["train/*", "val/*", "val_subset/*", "audit/*", "kv/*"]


@dataclass
class WandbSettings:
    """What ``wandb.init`` gets besides the job type, which the pipeline settles later."""

    project: str
    entity: str | None
    group: str
    name: str
    tags: list[str]
    config: dict
    mode: str
    job_type: str | None = None  # fixed at start for a smoke run ("smoke"), else by begin()


class WandbLogger(Logger):
    """One wandb run per job, started on ``begin`` (or the first thing logged), so that its
    ``job_type`` says whether the job trained its model or reused one."""

    def __init__(self, run_dir, settings: WandbSettings, log=print):
        offline_wandb_env(run_dir, settings.mode)
        import wandb

        self._wandb, self.run_dir, self.settings, self.log = wandb, Path(run_dir), settings, log
        self.run = None
        self._last_step = 0

    def begin(self, job_type):
        if self.run is not None:
            return
        st = self.settings
        self.run = self._wandb.init(
            project=st.project, entity=st.entity, group=st.group, tags=st.tags, name=st.name,
            job_type=st.job_type or job_type, config=st.config, dir=str(self.run_dir),
            mode=st.mode, reinit="finish_previous",
            id=stable_run_id(self.run_dir), resume="allow",  # a resumed job continues its run
        )
        self.run.define_metric(STEP)
        for pattern in STEPPED:
            self.run.define_metric(pattern, step_metric=STEP)
        write_json(self.run_dir / WANDB / WANDB_RUN,
                   {"id": self.run.id, "group": st.group, "project": st.project,
                    "entity": st.entity, "mode": st.mode, "name": st.name,
                    "job_type": st.job_type or job_type, "tags": st.tags})

    def log_metrics(self, record):
        self.begin("train")
        split = record.get("split", "train")
        data = {f"{split}/{k}": v for k, v in record.items()
                if k not in ("step", "split") and v is not None}
        self._last_step = max(self._last_step, int(record["step"]))
        self.run.log({STEP: record["step"], **data})

    def log_images(self, paths):
        self.begin("evaluate")
        images = {name: self._wandb.Image(str(p)) for name, p in paths.items() if Path(p).exists()}
        if images:
            self.run.log(images)

    def log_summary(self, summary):
        self.begin("evaluate" if summary.get("trained_here") is False else "train")
        final = final_metrics(summary)
        if final:  # beside the curves, at the step the model ended
            self.run.log({STEP: summary.get("steps") or self._last_step, **final})
        for key, value in {**summary_metrics(summary), **final}.items():
            self.run.summary[key] = value
        tables = {name: self._wandb.Table(columns=columns, data=data)
                  for name, (columns, data) in _row_tables(summary).items()}
        if tables:
            self.run.log(tables)

    def finish(self, exit_code=0):
        if self.run is None:
            return
        self.run.finish(exit_code=exit_code)
        if self.settings.mode == "offline":
            self.log(f"wandb run saved offline in {self.run_dir / 'wandb'}; to upload it: "
                     f"wandb sync {self.run_dir / 'wandb' / 'offline-run-*'}")


# the mask audit's figures as metrics of their own; the loss a model scores when each prefix
# runs alone sits beside the teacher-forced validation loss (val/loss), which an unmasked model
# wins by seeing the tokens it predicts
AUDIT_METRICS = {"val_loss_teacher_forced": "val/loss_teacher_forced",
                 "val_loss_prefix_only": "val/loss_prefix_only",
                 "seen_loss_teacher_forced": "audit/seen_loss_teacher_forced",
                 "cheating_gap": "audit/cheating_gap", "leakage": "audit/leakage"}


def final_metrics(summary: dict) -> dict:
    """The evaluations' figures as flat metrics: the mask audit's (``AUDIT_METRICS``) and one
    key per KV-cache cell and field, e.g. ``kv/b1_n150/speedup``, ``kv/consistency/matches``."""
    out = {}
    audit = summary.get("mask_audit") or {}
    for key, name in AUDIT_METRICS.items():
        if isinstance(audit.get(key), (int, float)):
            out[name] = audit[key]
    kv = summary.get("kv_cache") or {}
    for row in kv.get("speed") or []:
        cell = f"kv/b{row.get('batch_size')}_n{row.get('new_tokens')}"
        out.update({f"{cell}/{k}": v for k, v in row.items()
                    if k not in ("batch_size", "new_tokens") and isinstance(v, (int, float))})
    consistency = kv.get("consistency") or {}
    out.update({f"kv/consistency/{k}": v for k, v in consistency.items()
                if isinstance(v, (int, float, bool))})
    return out


def summary_metrics(summary: dict) -> dict:
    """The summary as flat ``a/b/c`` keys, less the KV cache's rows (``final_metrics`` names
    them) and what ``final_metrics`` already holds."""
    kv = {k: v for k, v in (summary.get("kv_cache") or {}).items()
          if k not in ("speed", "consistency")}
    rest = {k: v for k, v in summary.items() if k not in ("kv_cache", "mask_audit")}
    return _flatten({**rest, "kv": kv})


def _flatten(d, prefix=""):
    """Nested dicts as ``a/b/c`` keys; lists of dict rows (``kv_cache.speed``) as one metric
    per row and field, the row named by the fields that tell the rows apart, e.g.
    ``kv_cache/speed/batch_size=1,new_tokens=50/tokens_per_s``."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif _is_rows(value):
            labels = _row_labels(value)
            for label, row in zip(labels, value):
                # a row's own nested rows (a KV cell's timed pairs) stay in summary.json
                out.update(_flatten({k: v for k, v in row.items() if k not in labels[label]
                                     and not _is_rows(v)}, f"{name}/{label}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _is_rows(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def _row_labels(rows: list[dict]) -> dict:
    """``label -> the keys in it`` for each row: the non-float fields whose values differ
    between rows (all of them if none differ), as ``key=value`` joined by commas."""
    keys = [k for k in rows[0] if not isinstance(rows[0][k], float)
            and isinstance(rows[0][k], (int, str, bool))]
    varying = [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1] or keys
    labels = {}
    for i, row in enumerate(rows):
        label = ",".join(f"{k}={row.get(k)}" for k in varying) or str(i)
        labels[label if label not in labels else f"{label},row={i}"] = set(varying)
    return labels


def _row_tables(d, prefix="") -> dict:
    """Every list of dict rows in ``d`` as ``name -> (columns, data)`` for a wandb.Table."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_row_tables(value, f"{name}/"))
        elif _is_rows(value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            # nested rows (a KV cell's timed pairs) as JSON text: a table cell holds a value
            out[name] = (columns, [[_cell(row.get(c)) for c in columns] for row in value])
    return out


def _cell(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def make_logger(cfg, run_dir, hc, axes) -> Logger:
    name = cfg.logger.name
    if name == "csv":
        return CsvLogger(run_dir)
    if name == "wandb":
        return WandbLogger(run_dir, wandb_settings(cfg, run_dir, hc, axes), log=log)
    return Logger()


def debug_mode(cfg, hc) -> str | None:
    """The ``debug`` option a job was composed with (``debug=smoke``: ``smoke``), or None."""
    choice = hc.runtime.choices.get("debug") if hc.runtime.get("choices") else None
    return choice or cfg.get("debug") or None


def wandb_settings(cfg, run_dir, hc, axes) -> WandbSettings:
    """A job's wandb run: named by its axes (``smoke-`` in front for a debug run), grouped by
    its sweep (a single run: by its own folder), tagged with the axes and ``debug``."""
    wcfg = cfg.logger.wandb
    debug = debug_mode(cfg, hc)
    tags = [f"{k}={v}" for k, v in axes.items()] + (["debug", f"debug={debug}"] if debug else [])
    config = {**OmegaConf.to_container(cfg, resolve=True), **code_version(),
              "axes": dict(axes), "debug": debug}
    name = run_name(axes)
    return WandbSettings(
        project=wcfg.project, entity=wcfg.entity, group=wcfg.group or sweep_id(hc, run_dir),
        name=f"{debug}-{name}" if debug else name, tags=[*tags, *wcfg.tags], config=config,
        mode=wcfg.mode, job_type="smoke" if debug else None)


def run_name(axes: dict) -> str:
    """A run's name from its axes, e.g. ``rope-causal-on-s1`` (``...-s1-state_action``)."""
    name = f"{axes['pos']}-{axes['mask']}-{axes['cache']}-s{axes['seed']}"
    return name if axes.get("tokens", "action") == "action" else f"{name}-{axes['tokens']}"


def sweep_id(hc, run_dir) -> str:
    """The wandb group: the sweep folder's last two parts (``2026-12-03-08-10-00``), or for a
    single run ``run-`` and its own folder's (each single run its own group). ``python -m
    analysis SWEEP --wandb`` reads it from ``wandb/run.json`` to log the report beside."""
    if hc.mode == RunMode.MULTIRUN:
        return "-".join(Path(hc.sweep.dir).parts[-2:])
    return "run-" + "-".join(Path(run_dir).parts[-2:])
