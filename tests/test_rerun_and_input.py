"""Reliability, round three (issue #32): a re-run never erases a result, every bad input gets
one line (exit 2, before the folder is bound), a killed compile never slows later runs.
docs/reliability.md names each test here beside the case it shows."""

import errno
import fcntl
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vla_ablate.fileio as fileio
import vla_ablate.runfolder as runfolder
import vla_ablate.training.compile as compile_mod
from analysis.collect import load_metrics, load_runs
from conftest import SMOKE, compose_cfg, run_cli
from vla_ablate.config import validate
from vla_ablate.console import one_line
from vla_ablate.data.store import load_dataset
from vla_ablate.errors import CommandError, ConfigError, DataError
from vla_ablate.host import pick_device
from vla_ablate.job import recorded
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.pipeline import read_file
from vla_ablate.sweep import list_jobs
from vla_ablate.trained import load_model, resolve_checkpoint
from vla_ablate.training.checkpoint import CheckpointError, model_from_state, read_checkpoint

UNSAFE_ADVICE = "weights_only` set to `False`"


def smoke_args(folder, *extra):
    return [*SMOKE, "train.compile=off", f"hydra.run.dir={folder}",
            f"data.cache_dir={folder.parent / 'datasets'}", *extra]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One completed debug=smoke run; tests work on copies of it."""
    root = tmp_path_factory.mktemp("trained")
    run_cli(smoke_args(root / "run"), cwd=root)
    return root / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    (folder / ".job.lock").unlink(missing_ok=True)
    return folder


# 1: a completed run's results survive a later failed attempt; a corrupt last.pt is rebuilt


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_completed_summary(trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    before = json.loads((run / "summary.json").read_text())
    (run / "loss_curve.png").unlink()
    (run / "loss_curve.png").mkdir()  # the re-evaluation fails where it draws the curve
    proc = run_cli(smoke_args(run), cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert json.loads((run / "summary.json").read_text()) == before
    attempt = json.loads((run / "last_attempt.json").read_text())
    assert attempt["status"] == "failed" and "IsADirectoryError" in attempt["error"]
    assert "keeps the completed run's results" in proc.stderr


@pytest.mark.slow
def test_a_corrupt_last_pt_is_rebuilt_from_the_newest_valid_checkpoint(trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    before = json.loads((run / "summary.json").read_text())
    with open(run / "checkpoints" / "last.pt", "r+b") as fh:
        fh.truncate(1000)
    proc = run_cli(smoke_args(run), cwd=tmp_path)
    assert "last.pt" in proc.stderr and "unreadable" in proc.stderr
    assert "training it again from the newest valid checkpoint" in proc.stderr
    after = json.loads((run / "summary.json").read_text())
    assert after["status"] == "completed"
    for key in ("val_loss", "train_loss", "best_val_loss", "mask_audit", "extrapolation"):
        assert after[key] == before[key], key


# 2: a folder without training_config.json is checked against its checkpoint's model_args


@pytest.mark.slow
def test_an_unbound_folder_refuses_another_model(trained_run, tmp_path):
    run = copy_of(trained_run, tmp_path)
    (run / "training_config.json").unlink()
    before = (run / "summary.json").read_text()
    proc = run_cli(smoke_args(run, "pos=alibi", "mask=none"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "holds a model trained with other settings" in proc.stderr
    assert "pos: rope -> alibi" in proc.stderr
    assert (run / "summary.json").read_text() == before


# 3 and 10: values that leave an evaluation without work, and an infinite learning rate


@pytest.mark.parametrize("override,message", [
    ("eval.gen_batch_sizes=[0]", "eval.gen_batch_sizes must all be >= 1"),
    ("eval.gen_new_tokens=[0,4]", "eval.gen_new_tokens must all be >= 1"),
    ("eval.gen_repeats=0", "eval.gen_repeats must be >= 1"),
    ("eval.shift_trajectories=0", "eval.shift_trajectories must be >= 1"),
    ("eval.audit_trajectories=0", "eval.audit_trajectories must be >= 1"),
    ("eval.extrapolation_trajectories=0", "eval.extrapolation_trajectories must be >= 1"),
    ("train.lr=inf", "train.lr must be > 0 and finite"),
])
def test_zero_work_evaluations_and_an_infinite_lr_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(compose_cfg([*SMOKE, override]))


# 4: the analysis names jobs the sweep's own list has but the folder lacks


def test_the_analysis_lists_a_job_whose_folder_is_gone(tmp_path):
    sweep = tmp_path / "sweep"
    kept, gone = sweep / "pos=rope,seed=1", sweep / "pos=alibi,seed=2"
    list_jobs(sweep, [kept, gone])
    (kept / ".hydra").mkdir(parents=True)
    (kept / "summary.json").write_text(json.dumps({
        "status": "completed", "pos": "rope",
        "training_config": {"train": {"lr": 0.003, "steps": 30}, "data": {"seed": 0}}}))
    runs = load_runs(sweep)
    assert sorted(runs["job"]) == ["pos=alibi,seed=2", "pos=rope,seed=1"]
    missing = runs[runs["job"] == "pos=alibi,seed=2"].iloc[0]
    assert missing["status"] == "missing" and missing["pos"] == "alibi"
    # the missing row takes no part in the labels: the completed job stays "default"
    assert runs.set_index("job").loc["pos=rope,seed=1", "config"] == "default"


# 5: a truncated .so in torch's inductor cache, left by a compile killed mid-build


def test_a_damaged_inductor_cache_is_mended_and_the_step_compiles(tmp_path, monkeypatch):
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    damaged = cache / "ab" / "cabcdef.main.so"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"")  # what kill -9 during the build leaves
    calls = []

    def fake_compile(model, dynamic=False):
        calls.append(model)

        def step(*args):
            if damaged.exists():  # torch loads the cached build and fails on it
                try:
                    raise ImportError(f"{damaged}: file too short")
                except ImportError as err:
                    raise RuntimeError("InductorError: ImportError") from err
            return ("compiled", model(*args))
        return step

    monkeypatch.setattr(compile_mod.torch, "compile", fake_compile)
    monkeypatch.setattr(compile_mod.torch._dynamo, "reset", lambda: None)
    lines = []
    step = compile_mod.TrainingStep(lambda x: x + 1, compile_it=True, fall_back=True,
                                    log=lines.append)
    assert step(1) == ("compiled", 2)
    assert step.compiled and len(calls) == 2 and not damaged.exists()
    assert any("inductor cache" in line and str(damaged) in line for line in lines)


def test_a_cache_failure_without_a_named_file_gets_a_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    what = compile_mod.mend_inductor_cache(ImportError("main.so: file too short"))
    assert "a fresh inductor cache" in what
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] != str(tmp_path / "inductor")
    assert compile_mod.mend_inductor_cache(RuntimeError("a shape mismatch")) is None
    # a compile error of its own, even one naming the cache, is not retried (it falls back)
    header = f"g++ {tmp_path}/inductor/ab/c.main.cpp -o c.main.so: fatal error: Python.h: missing"
    assert compile_mod.mend_inductor_cache(RuntimeError(header)) is None


COMPILE_SCRIPT = """
import torch
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.training.compile import TrainingStep
torch.manual_seed(0)
model = DecoderOnlyTransformer(vocab_size=256, dim=32, num_layers=1, num_heads=4,
                               ff_hidden_dim=64, max_seq_len=16, dropout=0.0)
step = TrainingStep(model, compile_it=True, fall_back=True, log=print)
tokens = torch.randint(0, 256, (2, 8))
step(tokens, tokens)
print("compiled", step.compiled)
"""


@pytest.mark.slow
@pytest.mark.skipif(compile_mod.cpp_compiler() is None, reason="no C++ compiler for inductor")
def test_a_truncated_so_in_a_private_inductor_cache_is_recovered_from(tmp_path):
    """The real thing: compile into a private cache, cut its shared objects to 0 bytes (what a
    kill -9 during the build leaves), and compile again: it mends the cache and compiles, and
    the run after it compiles from the mended cache without a word."""
    script = tmp_path / "step.py"
    script.write_text(COMPILE_SCRIPT)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}

    def run():
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=600)

    assert run().stdout.splitlines()[-1] == "compiled True"
    for path in (tmp_path / "inductor").rglob("*.main.so"):
        path.write_bytes(b"")
    mended = run()
    assert mended.stdout.splitlines()[-1] == "compiled True", mended.stdout + mended.stderr
    assert "failed on torch's inductor cache" in mended.stdout
    assert "damaged shared object" in mended.stdout
    after = run()
    assert after.stdout.splitlines()[-1] == "compiled True"
    assert "warning" not in after.stdout


# 6 and 9: dataset files


def write_npz(path, states, actions):
    with open(path, "wb") as fh:  # as named (np.savez would add .npz to a name without it)
        np.savez(fh, states=states, actions=actions)
    return path


def states_for(n, t):
    return np.zeros((n, t, 10), np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.uint32, np.uint64])
def test_small_integer_token_files_load(tmp_path, dtype):
    top = min(255, np.iinfo(dtype).max)
    actions = np.array([[0, top, 3], [1, 2, top]], dtype=dtype)
    data = load_dataset(write_npz(tmp_path / "d.npz", states_for(2, 3), actions))
    assert data["actions"].dtype == torch.int64 and int(data["actions"].max()) == top


def ragged_pickle(path):
    with open(path, "wb") as fh:
        pickle.dump({"states": [[[0.0] * 10], [[0.0] * 10, [1.0] * 10]],
                     "actions": [[1], [1, 2]]}, fh)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: write_npz(p, states_for(0, 3), np.zeros((0, 3), np.int64)), "no trajectories"),
    (lambda p: write_npz(p, states_for(2, 3), np.ones((2, 3), bool)), "dtype bool"),
    (lambda p: write_npz(p, states_for(2, 3).astype(np.complex64), np.ones((2, 3), np.int64)),
     "states must be real numbers"),
    (lambda p: write_npz(p, states_for(2, 3), np.full((2, 3), 300, np.uint16)), "0..300"),
    (lambda p: ragged_pickle(p), "not a rectangular array"),
    (lambda p: p.write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.") and p,
     "claims more memory than this machine has"),
])
def test_bad_dataset_files_are_one_line(tmp_path, make, message):
    path = make(tmp_path / "d.pkl")
    with pytest.raises(DataError, match=message) as err:
        load_dataset(path)
    assert "\n" not in str(err.value)


def test_nan_states_are_refused_for_state_tokens(tmp_path):
    states = states_for(20, 6)
    states[3, 2, 1] = np.nan
    path = write_npz(tmp_path / "d.npz", states, np.ones((20, 6), np.int64))
    cfg = compose_cfg([*SMOKE, "tokens=state_action", f"data.path={path}"])
    with pytest.raises(ConfigError, match="NaN or infinite"):
        read_file(cfg, validate(cfg))


@pytest.mark.slow
def test_a_bad_data_file_is_refused_before_the_folder_is_bound(tmp_path):
    path = write_npz(tmp_path / "d.npz", states_for(20, 6), np.ones((20, 6), bool))
    run = tmp_path / "run"
    proc = run_cli(smoke_args(run, f"data.path={path}"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: actions must be integer tokens in [0, 256), got dtype bool"]
    assert not (run / "training_config.json").exists()


# 7: a sweep with a relative data.path is re-run in place


@pytest.mark.slow
def test_a_sweep_with_a_relative_data_path_reruns(tmp_path):
    write_npz(tmp_path / "d.npz", np.random.rand(40, 8, 10).astype(np.float32),
              np.random.randint(0, 256, (40, 8)))
    args = ["-m", *SMOKE, "data.path=d.npz", "seed=1", "eval.enabled=false", "train.steps=10",
            "train.compile=off", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    run_cli(args, cwd=tmp_path)
    again = run_cli(args, cwd=tmp_path, check=False)
    assert again.returncode == 0, again.stderr
    assert "completed before" in again.stderr


# 8: a failed attempt that trained nothing does not bind its folder


@pytest.mark.slow
def test_a_failed_attempt_that_trained_nothing_binds_nothing(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    run = tmp_path / "run"
    args = [*SMOKE, "train.compile=off", "eval.enabled=false", "train.steps=10",
            f"hydra.run.dir={run}"]
    failed = run_cli([*args, f"data.cache_dir={blocker / 'datasets'}"], cwd=tmp_path,
                     check=False)
    assert failed.returncode == 1
    assert not (run / "training_config.json").exists()
    proc = run_cli([*args, "model.dim=16", f"data.cache_dir={tmp_path / 'datasets'}"],
                   cwd=tmp_path)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed", proc.stderr


# 11: a full disk while the job is recorded


def test_a_full_disk_is_recorded_in_one_line(tmp_path, monkeypatch, caplog):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "atomic_write", full)  # no room for a temporary copy
    monkeypatch.setattr(runfolder, "atomic_write", full)
    job = SimpleNamespace(run_dir=tmp_path, axes={"pos": "rope"}, training={}, multirun=False)
    with recorded(None, job, None) as record:
        full()
    assert record["code"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert "Traceback" in (tmp_path / "error.log").read_text()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left" in errors[0] and "\n" not in errors[0]
    # not even the file in place can be written: one line says so, never a traceback
    caplog.clear()
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, mode="r", *a, **k: full()
                        if str(path).endswith("summary.json") and "w" in mode
                        else real_open(path, mode, *a, **k))
    with recorded(None, job, None) as record:
        full()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(m.startswith("could not record the job's status in") for m in errors), errors
    assert all("\n" not in m for m in errors)


# 12: an error before the first job keeps its cause


def test_an_error_before_the_first_job_keeps_its_cause():
    report = ("Traceback (most recent call last):\n  File \"pathlib.py\", line 1116, in mkdir\n"
              "    os.mkdir(self, mode)\nFileExistsError: [Errno 17] File exists: '/x/run'\n\n"
              "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n")
    assert one_line(report, argv=[]) == "error: [Errno 17] File exists: '/x/run'"


@pytest.mark.slow
def test_a_run_folder_that_is_a_file_is_one_line_with_its_cause(tmp_path):
    (tmp_path / "run").write_text("")
    proc = run_cli([*SMOKE, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: [Errno 17] File exists: '{tmp_path / 'run'}'")


# 13: JSON that is not an object


def test_the_analysis_reads_past_json_that_is_not_an_object(tmp_path):
    for name, summary in (("a", "[1, 2]"), ("b", "3"), ("c", json.dumps({"status": "completed",
                                                                          "kv_cache": 7}))):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("pos: {name: rope}\nseed: 1\n")
        (tmp_path / name / "summary.json").write_text(summary)
        (tmp_path / name / "metrics.jsonl").write_text(
            '3\n[1]\n"x"\n{"step": 5, "split": "val", "loss": 1.0}\n')
    runs = load_runs(tmp_path)
    assert list(runs["status"]) == ["missing", "missing", "completed"]
    assert len(load_metrics(tmp_path, runs)) == 3


# 14: train.device=mps without MPS


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this host has MPS")
def test_mps_without_mps_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device=mps but MPS"):
        pick_device("mps")


# 15: messages


class Strange:
    """Not a tensor: a checkpoint never holds one."""


def test_refusals_never_advise_unsafe_loading(tmp_path):
    torch.save({"x": Strange()}, tmp_path / "zip.pt")
    torch.save({"x": Strange()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / name)
        text = f"{err.value} {err.value.reason}"
        assert UNSAFE_ADVICE not in text and "weights_only=False" not in text
        assert f"'{__name__}.Strange'" in str(err.value)
    torch.save({"states": Strange()}, tmp_path / "data.pt")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "data.pt")
    assert UNSAFE_ADVICE not in str(err.value) and "Strange" in str(err.value)


def model_state(**changes):
    args = {"vocab_size": 256, "dim": 32, "num_layers": 2, "num_heads": 4, "ff_hidden_dim": 64,
            "max_seq_len": 64, "dropout": 0.0, "pos": "learned"}
    weights = DecoderOnlyTransformer(**args).state_dict()
    return {"model_args": {**args, **changes}, "model": weights, "path": "x.pt"}


def test_a_weight_mismatch_names_its_first_key():
    with pytest.raises(CommandError, match=r"size mismatch for pos_encoding\.embedding\.weight"):
        load_model(model_state(max_seq_len=32))


# 16: two processes on one folder


@pytest.mark.slow
def test_a_second_process_on_a_running_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".job.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run_cli(smoke_args(run), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "is in use by another job that is still running" in proc.stderr
    assert not (run / "training_config.json").exists()


# 17: untrusted run folders


def test_a_summary_cannot_send_the_commands_to_another_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "checkpoints"
    elsewhere.mkdir(parents=True)
    (elsewhere / "last.pt").write_bytes(b"PK")
    job = tmp_path / "sweep" / "job"
    job.mkdir(parents=True)
    for summary in ({"model_dir": str(elsewhere.parent)}, {"model_key": "../../elsewhere"}):
        (job / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(CommandError, match="without a checkpoint"):
            resolve_checkpoint(job)
    models = tmp_path / "sweep" / "models" / "k" / "checkpoints"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"PK")
    (job / "summary.json").write_text(json.dumps({"model_key": "k"}))
    assert resolve_checkpoint(job) == job.parent / "models" / "k" / "checkpoints" / "last.pt"


def test_crafted_model_args_allocate_nothing_before_the_weights_are_checked():
    state = model_state(pos="rope")
    state["model"] = {k: v for k, v in state["model"].items() if "pos_encoding" not in k}
    state["model_args"]["max_seq_len"] = 4_000_000
    with pytest.raises(ValueError, match="would allocate"):
        model_from_state(state)



def test_a_refused_job_in_a_completed_folder_counts_in_the_sweeps_exit_status(tmp_path,
                                                                              monkeypatch):
    """A sweep job refused where a completed run lies (another process holds the folder, its
    data file went bad) keeps that run's summary, and the sweep still counts it as failed."""
    from vla_ablate.job import LAUNCH_ENV, refuse
    from vla_ablate.sweep import failed_jobs

    job = tmp_path / "sweep" / "pos=rope"
    job.mkdir(parents=True)
    completed = json.dumps({"status": "completed", "launch_id": "earlier"})
    (job / "summary.json").write_text(completed)
    monkeypatch.setenv(LAUNCH_ENV, "this-launch")
    refuse(job, {"pos": "rope"}, ConfigError("in use by another process"), multirun=True)
    assert (job / "summary.json").read_text() == completed  # its results untouched
    assert failed_jobs(tmp_path / "sweep", "this-launch") == [str(job)]
    assert failed_jobs(tmp_path / "sweep", "another-launch") == []
