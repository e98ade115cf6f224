"""wandb runs that answer the three questions, read back from the files wandb writes offline:
a job's run (names, group, job_type, tags, step axis, the audit and KV figures as flat metrics)
and the sweep's report run (``python -m analysis SWEEP --wandb``)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import SMOKE, run_cli
from wandb_reader import history, records, run_info

# WANDB_SERVICE: the wandb service this process starts, which subprocesses would join
WANDB_VARS = ("WANDB_SERVICE", "WANDB_MODE", "WANDB_ERROR_REPORTING", "WANDB_DISABLE_GIT", "WANDB_SILENT",
              "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")

SUMMARY = {
    "status": "completed", "steps": 30, "val_loss": 5.0,
    "mask_audit": {"seen_loss_teacher_forced": 4.8, "val_loss_teacher_forced": 5.0,
                   "val_loss_prefix_only": 5.4, "cheating_gap": 0.4, "leakage": 0.3},
    "kv_cache": {"precision": "bf16", "consistency": {"matches": False, "max_logit_diff": 0.4},
                 "speed": [{"batch_size": b, "new_tokens": 150, "repeats": 3, "speedup": 2.0 * b,
                            "tokens_per_s_cache_on": 100.0 * b} for b in (1, 8)]},
}


def run_file(folder):
    files = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"{len(files)} offline wandb runs in {folder}"
    return files[0]


def summary_keys(path) -> set:
    return {item.key for r in records(path) if r.WhichOneof("record_type") == "summary"
            for item in r.summary.update}


def step_metrics(path) -> dict:
    """glob or name -> its step metric, from the run's define_metric records."""
    found = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "metric":
            found[r.metric.glob_name or r.metric.name] = r.metric.step_metric
    return found


def test_a_job_run_holds_the_audit_and_kv_figures_as_flat_metrics(tmp_path, monkeypatch):
    from vla_ablate.loggers import WandbLogger, WandbSettings

    for var in WANDB_VARS:  # the logger sets them for the process: put them back after
        monkeypatch.delenv(var, raising=False)
    settings = WandbSettings(project="p", entity=None, group="2026-12-03-08-00-00",
                             name="rope-none-on-s1", tags=["pos=rope"], config={}, mode="offline")
    logger = WandbLogger(tmp_path, settings, log=lambda *_: None)
    logger.begin("evaluate")  # a job that reuses a model trained by its twin
    logger.log_metrics({"step": 30, "split": "val", "loss": 5.0})
    logger.log_summary(SUMMARY)
    logger.finish()
    import wandb

    wandb.teardown()  # stop this process's wandb service: later tests' jobs start their own
    path = run_file(tmp_path)
    info = run_info(path)
    assert (info.job_type, info.run_group, info.display_name) == (
        "evaluate", "2026-12-03-08-00-00", "rope-none-on-s1")
    rows = history(path)
    final = next(r for r in rows if "val/loss_prefix_only" in r)
    assert final["step"] == 30  # on the same axis as val/loss, at the step the model ended
    assert final["val/loss_prefix_only"] == 5.4 and final["val/loss_teacher_forced"] == 5.0
    assert final["audit/cheating_gap"] == 0.4 and final["audit/leakage"] == 0.3
    assert final["kv/b1_n150/speedup"] == 2.0 and final["kv/b8_n150/speedup"] == 16.0
    assert final["kv/consistency/matches"] is False
    keys = summary_keys(path)
    assert {"val/loss_prefix_only", "kv/b8_n150/tokens_per_s_cache_on", "kv/precision"} <= keys
    assert not [k for k in keys if "batch_size=" in k]  # no row labels in the keys
    steps = step_metrics(path)
    assert all(steps[g] == "step" for g in ("train/*", "val/*", "audit/*", "kv/*"))
    written = json.loads((tmp_path / "wandb" / "run.json").read_text())
    assert written["group"] == "2026-12-03-08-00-00" and written["job_type"] == "evaluate"


@pytest.mark.slow
def test_smoke_sweep_runs_and_the_report_run_answer_the_questions(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", *SMOKE, "logger=wandb", "mask=causal,none",
             f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    group = "-".join(sweep.parts[-2:])
    names = set()
    for job in jobs:
        path = run_file(job)
        info = run_info(path)
        assert info.job_type == "smoke" and "debug" in info.tags  # debug=smoke detected
        assert info.run_group == group  # the sweep's group, not one shared "single"
        names.add(info.display_name)
        rows = history(path)
        assert any("val/loss_prefix_only" in r for r in rows)  # beside val/loss
        assert any("kv/b1_n8/speedup" in r for r in rows)
        assert step_metrics(path)["val/*"] == "step"
    assert names == {"smoke-rope-causal-on-s42", "smoke-rope-none-on-s42"}

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis", str(sweep), "--out", str(out),
                           "--wandb"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    path = run_file(out)
    info = run_info(path)
    assert (info.job_type, info.run_group) == ("report", group)
    assert "debug" in info.tags
    logged = {k.split("/")[0] + "/" + k.split("/")[1] for r in history(path) for k in r
              if k.count("/") >= 2}
    assert {f"tables/{t}" for t in ("positional", "mask_audit", "kv_cache", "tokens")} <= logged
    assert {"plots/loss_by_pos", "plots/kv_cache_speed"} <= logged
    files = path.parent / "files"
    assert (files / "report.md").read_text() == (out / "report.md").read_text()
    table = next(files.glob("media/table/tables/mask_audit_*.table.json"))
    assert json.loads(table.read_text())["columns"] == list(pd.read_csv(out / "mask_audit.csv"))
    assert "findings" in summary_keys(path)
