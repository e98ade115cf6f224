"""Where metrics go besides metrics.jsonl: a CSV file, wandb, or nowhere; one small interface."""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

from hydra.types import RunMode
from omegaconf import OmegaConf

from vla_ablate.console import log
from vla_ablate.runfolder import METRICS_CSV, WANDB, code_version

CSV_FIELDS = ["step", "split", "loss", "perplexity", "lr", "tokens_per_s", "elapsed_s",
              "action_loss"]  # action_loss: validation records of tokens=state_action runs


class Logger:
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


class WandbLogger(Logger):
    def __init__(self, run_dir, wcfg, config: dict, group: str, tags: list[str], name: str,
                 log=print):
        offline_wandb_env(run_dir, wcfg.mode)
        import wandb

        self._wandb, self.run_dir, self.mode, self.log = wandb, Path(run_dir), wcfg.mode, log
        self.run = wandb.init(
            project=wcfg.project, entity=wcfg.entity, group=wcfg.group or group,
            tags=[*tags, *wcfg.tags], name=name, config=config, dir=str(run_dir),
            mode=wcfg.mode, reinit="finish_previous",
            id=stable_run_id(run_dir), resume="allow",  # a resumed job continues its run
        )

    def log_metrics(self, record):
        split = record.get("split", "train")
        data = {f"{split}/{k}": v for k, v in record.items()
                if k not in ("step", "split") and v is not None}
        self.run.log(data, step=record["step"])

    def log_images(self, paths):
        images = {name: self._wandb.Image(str(p)) for name, p in paths.items() if Path(p).exists()}
        if images:
            self.run.log(images)

    def log_summary(self, summary):
        for key, value in _flatten(summary).items():
            self.run.summary[key] = value
        tables = {name: self._wandb.Table(columns=columns, data=data)
                  for name, (columns, data) in _row_tables(summary).items()}
        if tables:
            self.run.log(tables)

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)
        if self.mode == "offline":
            self.log(f"wandb run saved offline in {self.run_dir / 'wandb'}; to upload it: "
                     f"wandb sync {self.run_dir / 'wandb' / 'offline-run-*'}")


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
        group = "single" if hc.mode != RunMode.MULTIRUN else _sweep_id(hc)
        tags = [f"{k}={v}" for k, v in axes.items()]
        config = {**OmegaConf.to_container(cfg, resolve=True), **code_version()}
        return WandbLogger(run_dir, cfg.logger.wandb, config, group, tags, name=run_name(axes),
                           log=log)
    return Logger()


def run_name(axes: dict) -> str:
    """A run's name from its axes, e.g. ``rope-causal-on-s1`` (``...-s1-state_action``)."""
    name = f"{axes['pos']}-{axes['mask']}-{axes['cache']}-s{axes['seed']}"
    return name if axes.get("tokens", "action") == "action" else f"{name}-{axes['tokens']}"


def _sweep_id(hc) -> str:
    folder = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir
    return "-".join(Path(folder).parts[-2:])
