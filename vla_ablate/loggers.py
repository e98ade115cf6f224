"""Where metrics go besides metrics.jsonl: a CSV file, wandb, or nowhere; one small interface."""

from __future__ import annotations

import csv
import os
from pathlib import Path

CSV_FIELDS = ["step", "split", "loss", "perplexity", "lr", "tokens_per_s", "elapsed_s"]


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
        self.path = Path(run_dir) / "metrics.csv"
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
    # not a folder named `.wandb`: wandb would take it for its run directory
    for var, sub in [("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")]:
        os.environ[var] = str(folder / "wandb-home" / sub)


class WandbLogger(Logger):
    def __init__(self, run_dir, wcfg, config: dict, group: str, tags: list[str], name: str):
        offline_wandb_env(run_dir, wcfg.mode)
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=wcfg.project, entity=wcfg.entity, group=wcfg.group or group,
            tags=[*tags, *wcfg.tags], name=name, config=config, dir=str(run_dir),
            mode=wcfg.mode, reinit="finish_previous",
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

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out
