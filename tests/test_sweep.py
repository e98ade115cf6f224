"""End-to-end: real `python -m vla_ablate` runs and sweeps in subprocesses (marked slow)."""

import json
import os
import subprocess

import joblib
import pytest
import torch
from omegaconf import OmegaConf

import vla_ablate
from conftest import ROOT, SMOKE, run_cli
from wandb_reader import history, run_info
from wandb_reader import records as wandb_records

pytestmark = pytest.mark.slow


def summaries(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def test_smoke_sweep_runs_every_combination_and_trains_each_model_once(smoke_sweep):
    sweep, proc = smoke_sweep
    found = summaries(sweep)
    assert len(found) == 8
    combos = {(s["pos"], s["mask"], s["cache"]) for s in found.values()}
    assert len(combos) == 8
    for name, s in found.items():  # folders named by the job's overrides
        assert name == f"cache={s['cache']},debug=smoke,mask={s['mask']},pos={s['pos']}"
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
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or None
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert len(jobs) == 8
    for job in jobs:
        for name in ("summary.json", "metrics.jsonl", "loss_curve.png", "attention_maps.png",
                     ".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (job / name).exists(), f"{job / name} missing"
        s = json.loads((job / "summary.json").read_text())
        assert s["vla_ablate_version"] == vla_ablate.__version__ and s["git_commit"] == head
        log = (job / "vla_ablate.log").read_text()  # the job's messages, not an empty file
        assert f"done: val loss {s['val_loss']:.4f}" in log and "evaluating" in log
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
        assert {r["batch_size"] for r in speed} == {1, 2}
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
    second = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert second["val_loss"] == summary["val_loss"]
    # a single run is re-evaluated, and its folder's wall time counts both sittings
    assert second["wall_time_total_s"] >= summary["wall_time_total_s"] + second["wall_time_s"] - 1e-6


def test_rerun_with_another_training_config_is_refused_untouched(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMOKE, "eval.enabled=false", f"hydra.run.dir={run_dir}",
            f"data.cache_dir={tmp_path / 'ds'}"]
    run_cli(args, cwd=tmp_path)
    kept = ["summary.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml",
            "checkpoints/last.pt"]
    before = {name: (run_dir / name).read_bytes() for name in kept}
    for change, named in [(["train.steps=60"], "train.steps: 30 -> 60"),
                          (["model.dim=64", "train.steps=60"], "model.dim: 32 -> 64")]:
        proc = run_cli([*args, *change], cwd=tmp_path, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir} holds a run trained "
                                                       "with other settings"), proc.stderr
        assert named in lines[0] and "training model" not in proc.stderr
        assert {name: (run_dir / name).read_bytes() for name in kept} == before
    # inference settings may change: the same model is re-evaluated
    again = run_cli([*args, "cache=off"], cwd=tmp_path)
    assert "already trained" in again.stderr
    assert json.loads((run_dir / "summary.json").read_text())["cache"] == "off"


def test_default_output_folders(tmp_path):
    run_cli([*SMOKE, "eval.enabled=false", f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    runs = list((tmp_path / "outputs" / "debug" / "runs").glob("*/*/summary.json"))
    assert len(runs) == 1
    run_cli(["-m", *SMOKE, "eval.enabled=false", "seed=1,2", f"data.cache_dir={tmp_path / 'ds'}"],
            cwd=tmp_path)
    jobs = sorted((tmp_path / "outputs" / "debug" / "multirun").glob("*/*/*/summary.json"))
    assert [p.parent.name for p in jobs] == ["debug=smoke,eval.enabled=False,seed=1",
                                             "debug=smoke,eval.enabled=False,seed=2"]


def test_ablation_preset_runs_as_a_sweep_without_m(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["experiment=ablation", *SMOKE, "eval.enabled=false", "hydra.sweeper.params.pos=rope",
             "hydra.sweeper.params.mask=causal", "hydra.sweeper.params.seed=1",
             f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    found = summaries(sweep)
    assert sorted(s["cache"] for s in found.values()) == ["off", "on"]
    assert not (tmp_path / "outputs" / "runs").exists()  # not one default single run


def test_rerunning_a_sweep_completes_only_what_is_missing(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["experiment=ablation", *SMOKE, "hydra.sweeper.params.pos=rope",
            "hydra.sweeper.params.mask=causal", "hydra.sweeper.params.seed='1,2'",
            f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"]
    run_cli(args, cwd=tmp_path)
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 4
    before = {job: (job / "summary.json").read_bytes() for job in jobs}
    hydra_before = {job: (job / ".hydra" / "config.yaml").read_bytes() for job in jobs}
    missing = jobs[0]
    (missing / "summary.json").unlink()  # as if the study had stopped before this job
    again = run_cli(args, cwd=tmp_path)
    assert again.stderr.count("completed before") == 3
    assert "training model" not in again.stderr  # its model was trained already
    for job in jobs[1:]:
        assert (job / "summary.json").read_bytes() == before[job]  # untouched
        assert (job / ".hydra" / "config.yaml").read_bytes() == hydra_before[job]
    redone = json.loads((missing / "summary.json").read_text())
    assert redone["status"] == "completed" and redone["trained_here"] is False


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*SMOKE, "logger=wandb", "mask=none", f"hydra.run.dir={run_dir}",
                    f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "wandb wrote no offline run inside the run folder"
    rows = history(files[0])
    steps = [r["step"] for r in rows if "train/loss" in r]  # the optimizer step (define_metric)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [r for r in records if r["split"] == "train"]
    assert steps == [r["step"] for r in expected]
    assert [r["train/loss"] for r in rows if "train/loss" in r] == pytest.approx(
        [r["loss"] for r in expected])
    assert any("val/loss" in r for r in rows)
    images = {k.split("/")[0] for r in rows for k in r if k.endswith("/_type")}
    assert images == {"loss_curve", "attention_maps", "kv_cache"}  # plots, and speed as a table
    info = run_info(files[0])
    assert set(info.tags) >= {"pos=rope", "mask=none", "cache=on"}
    assert info.display_name == "smoke-rope-none-on-s42"  # the run's axes, a debug run marked
    assert info.job_type == "smoke" and "debug" in info.tags
    assert info.run_group == f"run-{run_dir.parent.name}-run"  # its own group, not "single"
    assert info.config.update  # the config went in
    config = {item.key: json.loads(item.value_json) for item in info.config.update}
    assert config["git_commit"] == json.loads((run_dir / "summary.json").read_text())["git_commit"]
    summary_keys = {item.key for r in wandb_records(files[0]) if r.WhichOneof("record_type") == "summary"
                    for item in r.summary.update}
    speed = json.loads((run_dir / "summary.json").read_text())["kv_cache"]["speed"]
    assert {f"kv/b{r['batch_size']}_n{r['new_tokens']}/speedup" for r in speed} <= summary_keys
    assert "val/loss_prefix_only" in summary_keys
    assert not (tmp_path / "wandb").exists()  # nothing written outside the run folder
    assert not (run_dir / "wandb-home").exists() and (run_dir / "wandb" / "home").is_dir()
    assert f"wandb sync {run_dir / 'wandb' / 'offline-run-*'}" in proc.stderr


def test_parallel_joblib_jobs_share_one_model_through_the_lock(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE,
                    "cache=on,off", "eval.gen_repeats=1", f"hydra.sweep.dir={sweep}",
                    f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path,
                   env={"OMP_NUM_THREADS": None})  # the default: cores divided among the jobs
    found = list(summaries(sweep).values())
    assert len(found) == 2
    assert all(s["status"] == "completed" for s in found)
    assert sorted(s["trained_here"] for s in found) == [False, True]
    # shared by 2 jobs (joblib's workers also get OMP_NUM_THREADS = its count of cores // 2)
    share = max(1, min(os.cpu_count() or 1, joblib.cpu_count()) // 2)
    assert all(s["threads"] == share for s in found)
    assert proc.stderr.count("training model") == 1
    assert found[0]["val_loss"] == found[1]["val_loss"]


def test_parallel_joblib_sweep_launches_every_model_before_its_twins(tmp_path):
    """cache given last (the fastest-varying axis) would put each model's twins side by side:
    2 slots would train one model while its twin idled on the lock. Launched models-first, both
    slots train. (A twin may still wait for the end of its model's training when a faster model
    frees a slot first: which finishes first is a race, so only the launch order is asserted.)"""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE,
                    "eval.enabled=false", "pos=rope,sinusoidal", "cache=on,off",
                    f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    found = summaries(sweep)
    assert len(found) == 4 and all(s["status"] == "completed" for s in found.values())
    assert proc.stderr.count("training model") == 2
    launched = {OmegaConf.load(sweep / job / ".hydra" / "hydra.yaml").hydra.job.num: s
                for job, s in found.items()}
    assert [(launched[i]["cache"], launched[i]["trained_here"]) for i in range(4)] == [
        ("on", True), ("on", True), ("off", False), ("off", False)]
    assert {launched[0]["pos"], launched[1]["pos"]} == {"rope", "sinusoidal"}


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local",
                                       "hydra.launcher.cpus_per_task=1"]])
def test_parallel_sweep_with_a_failed_job_exits_1(tmp_path, launcher):
    """The jobs run in other processes: the exit status must still count their failures."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *launcher, *SMOKE,
                    "train.lr=3e-3,1e6", "train.min_lr=0", "eval.enabled=false",
                    "train.embed_lr=null", "train.head_lr=null",  # lr for every group
                    f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "1 job(s) did not complete" in proc.stderr
    diverged = [name for name, s in summaries(sweep).items() if s["status"] == "diverged"]
    assert len(diverged) == 1 and "train.lr=1000000.0" in diverged[0]
    assert str(sweep / diverged[0]) in proc.stderr
    # the launching process says each job's start and end, whichever process ran it
    for num in (1, 2):
        assert f"[vla_ablate] job {num}/2 started: " in proc.stderr, proc.stderr
    assert "(diverged" in proc.stderr and "(completed" in proc.stderr, proc.stderr


def test_bf16_greedy_decoding_on_a_trained_model_matches_uncached(smoke_sweep):
    from vla_ablate.data import generate_dataset
    from vla_ablate.evaluate import generation_model
    from vla_ablate.training.checkpoint import load_model_from_checkpoint

    sweep, _ = smoke_sweep
    prompts = generate_dataset(8, 12, seed=42)["actions"][:, :4]
    for ckpt in sorted((sweep / "models").glob("*-causal-*/checkpoints/last.pt")):
        model = generation_model(load_model_from_checkpoint(ckpt).eval(), "bf16")
        assert model.lm_head.weight.dtype == torch.bfloat16
        cached = model.generate(prompts, 40, top_k=1, use_cache=True)
        plain = model.generate(prompts, 40, top_k=1, use_cache=False)
        assert torch.equal(cached, plain), ckpt
