"""Turn sweep folders into the positional, mask-audit and KV-cache tables, plots and a report.

Reads run folders only (``.hydra/``, ``summary.json``, ``metrics.jsonl``); it never imports the
training code, so it works on any machine that has the folders.
"""

from analysis.collect import load_metrics, load_runs, load_speed
from analysis.report import build_report

__all__ = ["build_report", "load_metrics", "load_runs", "load_speed"]
