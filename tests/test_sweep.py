"""End-to-end: real `python -m vla_ablate` runs and sweeps in subprocesses (marked slow)."""

import json
import os

import pytest

from conftest import SMOKE, run_cli
from wandb_reader import history, run_info

pytestmark = pytest.mark.slow


def summaries(sweep):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def test_smoke_sweep_runs_every_combination_and_trains_each_model_once(smoke_sweep):
    sweep, proc = smoke_sweep
    found = summaries(sweep)
    assert sorted(found) == list(range(8))
    combos = {(s["pos"], s["mask"], s["cache"]) for s in found.values()}
    assert len(combos) == 8
    assert all(s["status"] == "completed" for s in found.values())
    # cache only changes inference: 4 trained models, each reused by its twin
    assert sum(s["trained_here"] for s in found.values()) == 4
    assert len(list((sweep / "models").iterdir())) == 4
    assert proc.stderr.count("training model") == 4
    for s in found.values():
        twin = [t for t in found.values() if t["model_key"] == s["model_key"]]
        assert len(twin) == 2 and twin[0]["val_loss"] == twin[1]["val_loss"]


def test_each_job_folder_holds_the_run_format(smoke_sweep):
    sweep, _ = smoke_sweep
    for job in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        for name in ("summary.json", "metrics.jsonl", "loss_curve.png", "attention_maps.png",
                     ".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (job / name).exists(), f"{job / name} missing"
        s = json.loads((job / "summary.json").read_text())
        for key in ("val_loss", "val_perplexity", "train_loss", "wall_time_s", "steps"):
            assert isinstance(s[key], (int, float)), key
        audit = s["mask_audit"]
        assert {"seen_loss_teacher_forced", "val_loss_teacher_forced", "val_loss_prefix_only",
                "cheating_gap", "leakage"} == set(audit)
        assert {"loss_1x", "loss_2x_beyond", "loss_4x_beyond"} == set(s["extrapolation"])
        assert {"loss_shift_0", "delta_shift_12", "delta_shift_36"} <= set(s["position_shift"])
        if s["pos"] == "rope" and s["mask"] == "causal":  # relative positions only
            assert abs(s["position_shift"]["delta_shift_36"]) < 1e-3
        speed = s["kv_cache"]["speed"]
        assert {r["batch_size"] for r in speed} == {1, 4}
        # every job times both sides on its own model (paired), whatever its cache setting
        assert all(r["cache_on_s"] > 0 and r["cache_off_s"] > 0 and r["speedup"] > 0
                   for r in speed)
        records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == s["steps"]


def test_mask_audit_shows_the_difference(smoke_sweep):
    found = summaries(smoke_sweep[0]).values()
    for s in found:
        audit, consistency = s["mask_audit"], s["kv_cache"]["consistency"]
        if s["mask"] == "causal":
            assert audit["leakage"] < 1e-4
            assert abs(audit["val_loss_prefix_only"] - audit["val_loss_teacher_forced"]) < 1e-3
            assert consistency["matches"] is True
        else:
            assert audit["leakage"] > 1e-4
            assert "by construction" in consistency["note"]


def test_single_run_then_rerun_does_not_train_again(tmp_path):
    args = [*SMOKE, f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'ds'}"]
    first = run_cli(args, cwd=tmp_path)
    assert "training model" in first.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["trained_here"] is True
    again = run_cli(args, cwd=tmp_path)
    assert "already trained" in again.stderr and "training model" not in again.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["val_loss"] == summary["val_loss"]


def test_default_output_folders(tmp_path):
    run_cli([*SMOKE, "eval.enabled=false", f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    runs = list((tmp_path / "outputs" / "runs").glob("*/*/summary.json"))
    assert len(runs) == 1
    run_cli(["-m", *SMOKE, "eval.enabled=false", "seed=1,2", f"data.cache_dir={tmp_path / 'ds'}"],
            cwd=tmp_path)
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/[0-9]*/summary.json"))
    assert [p.parent.name for p in jobs] == ["0", "1"]


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*SMOKE, "logger=wandb", "mask=none", f"hydra.run.dir={run_dir}",
             f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "wandb wrote no offline run inside the run folder"
    rows = history(files[0])
    steps = [r["_step"] for r in rows if "train/loss" in r]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [r for r in records if r["split"] == "train"]
    assert steps == [r["step"] for r in expected]
    assert [r["train/loss"] for r in rows if "train/loss" in r] == pytest.approx(
        [r["loss"] for r in expected])
    assert any("val/loss" in r for r in rows)
    images = {k.split("/")[0] for r in rows for k in r if k.endswith("/_type")}
    assert images == {"loss_curve", "attention_maps"}  # the plots, logged as images
    info = run_info(files[0])
    assert set(info.tags) >= {"pos=rope", "mask=none", "cache=on"}
    assert not (tmp_path / "wandb").exists()  # nothing written outside the run folder


def test_parallel_joblib_jobs_share_one_model_through_the_lock(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE,
                    "cache=on,off", "eval.gen_repeats=1", f"hydra.sweep.dir={sweep}",
                    f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    found = summaries(sweep)
    assert sorted(found) == [0, 1]
    assert all(s["status"] == "completed" for s in found.values())
    assert sorted(s["trained_here"] for s in found.values()) == [False, True]
    cores = os.cpu_count() or 1
    assert all(s["threads"] == max(1, cores // 2) for s in found.values())  # shared by 2 jobs
    assert proc.stderr.count("training model") == 1
    assert found[0]["val_loss"] == found[1]["val_loss"]
