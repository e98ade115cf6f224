"""Interruption, divergence, corrupt state, bad input and untrusted files, with real processes."""

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, SMOKE, built_once, run_cli
from wandb_reader import records, run_info

pytestmark = pytest.mark.slow

# long enough that a signal sent once the first checkpoints exist lands well before the end
STEPS = 200
LONG = [*SMOKE, f"train.steps={STEPS}", "train.checkpoint_every=20", "train.eval_every=40",
        "train.log_every=20", "eval.enabled=false", "logger=none"]


def start_cli(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "vla_ablate", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(path, proc, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def final_state(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return summary, state["model"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    def build(root):
        run_cli([*LONG, f"hydra.run.dir={root / 'run'}", f"data.cache_dir={root / 'ds'}"],
                cwd=root)

    return final_state(built_once(tmp_path_factory, "reference_run", build) / "run")


def assert_same_result(run_dir, reference):
    summary, weights = final_state(run_dir)
    ref_summary, ref_weights = reference
    assert summary["status"] == "completed"
    assert summary["val_loss"] == ref_summary["val_loss"]
    assert summary["train_loss"] == ref_summary["train_loss"]
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == list(range(40, STEPS + 1, 40))


def interrupted_run(tmp_path, checkpoint, sig):
    """Start a LONG run, send ``sig`` once ``checkpoint`` exists; returns (args, run_dir, proc)."""
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}", f"data.cache_dir={tmp_path / 'ds'}"]
    proc = start_cli(args, tmp_path)
    wait_for(run_dir / "checkpoints" / checkpoint, proc)
    proc.send_signal(sig)
    return args, run_dir, proc


def test_kill_9_then_resume_gives_identical_results(tmp_path, reference_run):
    args, run_dir, proc = interrupted_run(tmp_path, "step_0000020.pt", signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "train_done.json").exists(), "killed too late to test anything"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    for name in leftovers:  # a temp file may remain; a truncated checkpoint may not
        (run_dir / "checkpoints" / name).unlink()
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=True)  # every visible checkpoint is complete
    resumed = run_cli(args, cwd=tmp_path)
    assert "resuming from checkpoint at step" in resumed.stderr
    assert_same_result(run_dir, reference_run)


def test_sigterm_saves_and_resumes(tmp_path, reference_run):
    args, run_dir, proc = interrupted_run(tmp_path, "step_0000020.pt", signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert saved >= 20
    resumed = run_cli(args, cwd=tmp_path)
    assert f"resuming from checkpoint at step {saved}" in resumed.stderr
    assert_same_result(run_dir, reference_run)


def read_until(proc, text):
    """Read the process's stderr until a line holds ``text``. A watchdog kills the process after
    300 s, which ends the read: a run that never logs ``text`` fails the test, never hangs it."""
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if text in line:
                return
    finally:
        watchdog.cancel()
    raise AssertionError(f"the run ended (exit {proc.wait()}) before logging {text!r}:\n"
                         + "".join(seen))


def test_sigterm_while_evaluating_is_recorded_and_the_rerun_counts_the_training(tmp_path):
    """SIGTERM after training, in the evaluations, used to kill the process with its summary left
    `running`: now the job records `interrupted`, its wall time and exit 143. A `kill -9` keeps
    the earlier sittings' time (the `running` summary carries it). The same command then
    evaluates the trained model without training it again, and the job still counts that
    training as its own (`trained_here`, which the analysis's cost sums)."""
    sweep = tmp_path / "sweep"
    # eval.gen_repeats left out of the job folder's name, so all three sittings share the folder
    keep_name = ("hydra.job.config.override_dirname.exclude_keys=[experiment,data.cache_dir,"
                 "train.num_threads,train.progress,train.device,logger.wandb.mode,eval.gen_repeats]")
    args = ["-m", *SMOKE, "seed=1", "logger=none", keep_name, f"hydra.sweep.dir={sweep}",
            f"data.cache_dir={tmp_path / 'ds'}"]
    endless = "eval.gen_repeats=1000000"  # evaluations that last until the process is stopped
    started = []

    def start():
        started.append(start_cli([*args, endless], tmp_path))
        return started[-1]

    try:
        proc = start()
        read_until(proc, "evaluating in")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr
        assert "interrupted by signal 15 (no training step in progress); to resume: " in stderr
        (job,) = [p.parent for p in sweep.glob("*/summary.json")]
        first = json.loads((job / "summary.json").read_text())
        assert first["status"] == "interrupted" and first["wall_time_total_s"] > 0

        proc = start()
        read_until(proc, "by this job in an earlier sitting")
        read_until(proc, "evaluating in")
        running = json.loads((job / "summary.json").read_text())
        assert running["status"] == "running"
        assert running["wall_time_total_s"] == first["wall_time_total_s"]
        proc.kill()
        proc.communicate(timeout=60)
    finally:  # a failed assertion must not leave an endless evaluation running
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    again = run_cli(args, cwd=tmp_path)
    assert "training model" not in again.stderr
    assert [p.parent for p in sweep.glob("*/summary.json")] == [job]
    done = json.loads((job / "summary.json").read_text())
    assert done["status"] == "completed" and done["trained_here"] is True
    assert done["wall_time_total_s"] == pytest.approx(
        first["wall_time_total_s"] + done["wall_time_s"], abs=2.0)  # the killed sitting is lost


# The job's work ends in ``raised``; the SIGTERM comes while run_job logs that end (the one log
# call whose message holds ``when``), after the job's own stop handlers are gone.
SIGNAL_WHILE_CLASSIFIED = """
import os, runpy, signal
import vla_ablate.job as job
import vla_ablate.pipeline as pipeline
def execute(*_args):
    raise {raised}
def hooked(message, _real=job.{logger}):
    if {when!r} in message:
        os.kill(os.getpid(), signal.SIGTERM)
    _real(message)
pipeline.execute, job.{logger} = execute, hooked
runpy.run_module("vla_ablate", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("raised, logger, when, status, exit_code", [
    ("RuntimeError('boom')", "error", "boom", "failed", -signal.SIGTERM),
    ("job.JobInterrupted(signal.SIGTERM)", "log", "to resume", "interrupted", 143),
])
def test_a_sigterm_while_the_job_is_classified_waits_for_its_record(
        tmp_path, raised, logger, when, status, exit_code):
    """A SIGTERM between the job's end and its record (here in the log call of an ``except``)
    used to get the default action, leaving summary.json ``running``. Now it waits for the
    record: a failed job is recorded as failed and then the held signal ends the process; an
    interrupted one exits 143 as any stopped job does."""
    code = SIGNAL_WHILE_CLASSIFIED.format(raised=raised, logger=logger, when=when)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", code, *SMOKE, "logger=none",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert when in proc.stderr  # the hooked call ran, so the signal was sent
    assert proc.returncode == exit_code, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == status and summary["wall_time_total_s"] > 0


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path, reference_run):
    args, run_dir, proc = interrupted_run(tmp_path, "step_0000040.pt", signal.SIGKILL)
    proc.wait(timeout=30)
    ckpts = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = run_cli(args, cwd=tmp_path)
    assert f"{newest.name} is unreadable" in resumed.stderr
    previous = int(ckpts[-2].stem.split("_")[1])
    assert f"resuming from checkpoint at step {previous}" in resumed.stderr
    assert_same_result(run_dir, reference_run)


def test_diverging_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *SMOKE, "train.lr=3e-3,1e6", "train.min_lr=0", "eval.enabled=false",
                    "train.embed_lr=null", "train.head_lr=null",  # lr for every group
                    f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "1 job(s) did not complete" in proc.stderr
    jobs = {json.loads(p.read_text())["status"]: p.parent for p in sweep.glob("*/summary.json")}
    good_dir, bad_dir = jobs["completed"], jobs["diverged"]
    assert "train.lr=1000000.0" in bad_dir.name  # the folder is named by the job's overrides
    good = json.loads((good_dir / "summary.json").read_text())
    bad = json.loads((bad_dir / "summary.json").read_text())
    assert good["status"] == "completed"
    assert bad["status"] == "diverged" and bad["diverged_step"] >= 1
    assert f"diverged at step {bad['diverged_step']}" in proc.stderr
    report = subprocess.run([sys.executable, "-m", "analysis", str(sweep)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    status = pd.read_csv(sweep / "report" / "status.csv")
    assert status["status"].tolist() == ["diverged"] and status["job"].tolist() == [bad_dir.name]
    assert f"job {bad_dir.name} (diverged)" in (sweep / "report" / "report.md").read_text()


def test_crafted_pickle_as_data_path_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"states": Payload(), "actions": np.zeros((4, 5))}))
    proc = run_cli([*SMOKE, f"data.path={evil}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: refusing to load")
    assert not marker.exists()


def test_course_pickle_trains(tmp_path):
    from vla_ablate.data import generate_dataset

    data = generate_dataset(96, 12, seed=0)
    path = tmp_path / "trajectories.pkl"
    path.write_bytes(pickle.dumps({"trajectories": data["states"].numpy(),
                                   "tokenized": data["actions"].numpy()}))
    proc = run_cli([*SMOKE, f"data.path={path}", "eval.enabled=false", "data.num_trajectories=5000",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    # what was loaded, and that data.num_trajectories/seq_length did not apply
    assert (f"loaded 96 trajectories of 12 steps from {path} (data.num_trajectories and "
            "data.seq_length do not apply)") in proc.stderr


BAD_INPUTS = [
    ("pos=spiral", "Could not find 'pos/spiral'"),
    ("model.dim=abc", "could not be converted to Integer"),
    ("model.colour=red", "Key 'colour' not in 'ModelConfig'"),
    ("model.dim=-8", "model.dim must be positive"),
    ("model.num_heads=3", "must be divisible by model.num_heads"),
    ("train.lr=0", "train.lr must be > 0"),
    ("model.dropout=1.5", "model.dropout must lie in [0, 1)"),
    ("data.seq_length=1", "data.seq_length must be >= 2"),
    ("data.seq_length=65", "exceeds model.max_seq_len"),
    ("data.num_trajectories=1", "empty train or validation split"),
    ("data.path=/no/such/file.pkl", "data.path does not exist"),
    ("pos.base=-1", "pos.base must be > 0, got -1.0"),
    ("cache=true", "cache=true: the cache group takes an option name, not a boolean "
                   "(available: off, on)"),
    ("+experiment=ablation", "+experiment=ablation: experiment is in the defaults list now; "
                             "write experiment=ablation (no +)"),
    ("pos=spiral", "Could not find 'pos/spiral'"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS)
def test_bad_input_one_line_nonzero_before_work(tmp_path, override, message):
    run_dir = tmp_path / "run"
    proc = run_cli([*SMOKE, override, f"hydra.run.dir={run_dir}",
                    f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2  # every user error, Hydra's composition errors too
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "ds").exists()  # no data generated
    assert not (run_dir / "checkpoints").exists()  # no training


def test_unreadable_data_path(tmp_path):
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x04\x95garbage")
    proc = run_cli([*SMOKE, f"data.path={corrupt}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read dataset file {corrupt}")


def test_offline_wandb_sweep_opens_no_network_connection(tmp_path):
    """Every socket a job's process tree opens is checked: only local (unix/loopback) ones."""
    guard = tmp_path / "guard"
    guard.mkdir()
    log = tmp_path / "connections.log"
    (guard / "sitecustomize.py").write_text(f'''
import socket
_orig = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        with open({str(log)!r}, "a") as fh:
            fh.write(repr(address) + "\\n")
        host = address[0]
        if not (host.startswith("127.") or host == "::1" or host == "localhost"):
            raise OSError("network access attempted: " + repr(address))
    return _orig(self, address)
socket.socket.connect = connect
''')
    # no WANDB_* variables from outside: the project itself must keep wandb offline
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = f"{guard}{os.pathsep}{ROOT}"
    # positive control: the guard is active in a child process and records a remote connect
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; s = socket.socket(); s.settimeout(0.1)\n"
         "try:\n    s.connect(('192.0.2.1', 9))\nexcept OSError as e:\n    print(e)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert "network access attempted" in probe.stdout
    assert "192.0.2.1" in log.read_text()
    log.unlink()
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "vla_ablate", "-m", *SMOKE, "logger=wandb", "mask=causal,none",
         "eval.enabled=false", f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    remote = [line for line in (log.read_text().splitlines() if log.exists() else [])
              if not line.startswith(("('127.", "('::1'", "('localhost'"))]
    assert remote == []
    assert len(list(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))) == 2


def test_bad_sweep_value_stops_every_job_before_work(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *SMOKE, "seed=1,2", "pos.base=-1,10000", "mask=causal,none",
                    f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path / 'ds'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one problem, one line, naming the 4 jobs it concerns
    assert lines[0].startswith("error: pos.base must be > 0, got -1.0 (jobs ")
    assert "and 1 more" in lines[0]
    assert not list(sweep.rglob("summary.json")) and not (tmp_path / "ds").exists()


def test_two_problems_in_a_sweep_are_two_lines(tmp_path):
    proc = run_cli(["-m", *SMOKE, "pos=rope,spiral", "model.num_heads=3",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines == [
        "error: model.dim (32) must be divisible by model.num_heads (3) "
        "(job debug=smoke,pos=rope,model.num_heads=3)",
        "error: Could not find 'pos/spiral' (available: alibi, learned, none, rope, sinusoidal) "
        "(job debug=smoke,pos=spiral,model.num_heads=3)",
    ]


def test_cfg_with_multirun_is_one_line(tmp_path):
    proc = run_cli(["-m", "seed=1,2", "--cfg", "hydra"], cwd=tmp_path, check=False)
    assert proc.returncode == 2  # a user error, as every other
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Only one of --run, --multirun, --cfg")
    assert "Traceback" not in proc.stderr


def test_help_is_the_projects_own(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.stdout.startswith("python -m vla_ablate [-m]")
    assert "action tokens" in proc.stdout and "python -m vla_ablate debug=smoke" in proc.stdout
    assert "pos: alibi, learned, none, rope, sinusoidal" in proc.stdout
    assert "Powered by Hydra" not in proc.stdout and "powered by Hydra" not in proc.stdout


def test_sigterm_default_folder_prints_the_resume_command_and_wandb_continues(tmp_path):
    """Default, time-stamped folder: the printed command resumes it, into the same wandb run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [*LONG, "logger=wandb", f"data.cache_dir={tmp_path / 'ds'}"]
    proc = subprocess.Popen([sys.executable, "-m", "vla_ablate", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    end = time.time() + 300
    while not list((tmp_path / "outputs" / "debug" / "runs").glob("*/*/checkpoints/step_0000020.pt")):
        assert proc.poll() is None and time.time() < end, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    run_dir = next((tmp_path / "outputs" / "debug" / "runs").glob("*/*"))
    hint = [line for line in stderr.splitlines() if "to resume: " in line]
    assert len(hint) == 1, stderr
    command = shlex.split(hint[0].split("to resume: ", 1)[1])
    assert command[:3] == ["python", "-m", "vla_ablate"]
    assert command[-1] == f"hydra.run.dir={run_dir.resolve()}"
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint at step" in resumed.stderr
    assert len(list((tmp_path / "outputs" / "debug" / "runs").glob("*/*"))) == 1  # no second folder
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    assert run_info(files[0]).run_id == run_info(files[1]).run_id  # one run, continued
    exits = [r.exit.exit_code for f in files for r in records(f)
             if r.WhichOneof("record_type") == "exit"]
    assert exits == [143, 0]  # SIGTERM recorded as 143, not 130
