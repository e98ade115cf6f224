"""The training loop in-process: schedule, batches, checkpoints, resume, divergence."""

import json
import math
import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from vla_ablate.config import TrainConfig
from vla_ablate.data import generate_dataset
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.runfolder import MetricsFile
from vla_ablate.training.budget import Pace, validations_left
from vla_ablate.training.checkpoint import Checkpoints
from vla_ablate.training.loop import _eval_line, train
from vla_ablate.training.schedule import BatchSource, lr_at

ARGS = dict(vocab_size=256, dim=32, num_layers=2, num_heads=4, ff_hidden_dim=64, max_seq_len=32,
            dropout=0.1)


def tcfg(**over):
    base = OmegaConf.structured(TrainConfig(steps=24, batch_size=8, warmup_steps=4, log_every=4,
                                            eval_every=8, checkpoint_every=8, progress=False,
                                            keep_checkpoints=5))
    for key, value in over.items():
        base[key] = value
    return base


@pytest.fixture(scope="module")
def actions():
    return generate_dataset(80, 12, seed=0)["actions"]


def fresh_run(folder, actions, cfg, seed=0, precision="fp32"):
    torch.manual_seed(seed)
    model = DecoderOnlyTransformer(**ARGS)
    batches = BatchSource(actions[:64], cfg.batch_size, seed)
    result = train(model, ARGS, batches, actions[64:], cfg, folder, torch.device("cpu"), seed,
                   log=lambda m: None, precision=precision)
    return model, result


def test_lr_schedule_warmup_then_cosine():
    cfg = tcfg(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_schedule_warmup_stable_decay():
    cfg = tcfg(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    # held at lr until the last 20% of the 90 steps after warmup (18 steps) ...
    assert all(lr_at(s, cfg) == pytest.approx(1e-3) for s in range(9, 82))
    # ... then a straight line that reaches min_lr at the last step trained (99)
    tail = [lr_at(s, cfg) for s in range(82, 100)]
    assert tail[0] < 1e-3 and tail[-1] == pytest.approx(1e-4)
    steps = [a - b for a, b in zip(tail, tail[1:])]
    assert max(steps) == pytest.approx(min(steps))
    # a shorter horizon (a time budget's) moves the decay inside it
    assert lr_at(49, cfg, 50) == pytest.approx(1e-4) and lr_at(43, cfg, 50) < 1e-3
    assert lr_at(41, cfg, 50) == pytest.approx(1e-3)  # 8 decay steps: 42-49


def test_batches_are_a_function_of_the_step(actions):
    a = BatchSource(actions[:64], 8, seed=3)
    b = BatchSource(actions[:64], 8, seed=3)
    assert torch.equal(a.batch(13), b.batch(13))
    epoch = torch.cat([a.batch(s) for s in range(8)])  # one epoch covers every row once
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, actions[:64].tolist()))
    assert not torch.equal(a.batch(0), a.batch(8))  # a new permutation each epoch
    fresh = BatchSource(actions[:64], 8, 3, fresh=lambda e: actions[:64] + e)
    assert torch.equal(fresh.batch(8), a.batch(8) + 1)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_learns_and_writes_checkpoints_and_metrics(tmp_path, actions, optimizer):
    # lr 1e-2: both optimisers lose > 2 nats in 40 steps on this tiny model (3e-3: about 1.0)
    _, result = fresh_run(tmp_path, actions, tcfg(steps=40, lr=1e-2, optimizer=optimizer))
    assert result.status == "completed" and result.steps == 40
    records = MetricsFile(tmp_path).read()
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert [r["step"] for r in records if r["split"] == "val"] == [8, 16, 24, 32, 40]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step_0000008.pt", "step_0000016.pt",
                     "step_0000024.pt", "step_0000032.pt"]
    assert result.best_val_loss == min(r["loss"] for r in records if r["split"] == "val")


def test_checkpoint_retention_keeps_best_and_last(tmp_path, actions):
    fresh_run(tmp_path, actions, tcfg(keep_checkpoints=1))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step_0000016.pt"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_gives_identical_weights_and_metrics(tmp_path, actions, optimizer, precision):
    cfg = tcfg(optimizer=optimizer)
    ref_model, ref = fresh_run(tmp_path / "ref", actions, cfg, precision=precision)
    # a run "killed" after its step-8 checkpoint: drop everything written later
    part = tmp_path / "part"
    fresh_run(part, actions, cfg, precision=precision)
    ckpt = part / "checkpoints"
    for name in ("last.pt", "step_0000016.pt", "train_done.json"):
        (ckpt / name).unlink(missing_ok=True)
    (part / "train_done.json").unlink()
    messages = []
    torch.manual_seed(123)  # a different init: resume must overwrite it
    model = DecoderOnlyTransformer(**ARGS)
    result = train(model, ARGS, BatchSource(actions[:64], 8, 0), actions[64:], cfg, part,
                   torch.device("cpu"), 0, log=messages.append, precision=precision)
    assert result.resumed_from == 8 and "resuming from checkpoint at step 8" in messages[0]
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}  # noqa: E731
                        for r in rs]
    assert strip(MetricsFile(part).read()) == strip(MetricsFile(tmp_path / "ref").read())
    assert result.val_loss == ref.val_loss


def test_without_a_progress_bar_each_validation_is_logged_with_the_time_left(tmp_path, actions):
    # train.progress=false (study parts under nohup): the job log still shows the run moving
    messages = []
    torch.manual_seed(0)
    train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0), actions[64:],
          tcfg(), tmp_path, torch.device("cpu"), 0, log=messages.append)
    lines = [m for m in messages if m.startswith("step ")]
    vals = [r["loss"] for r in MetricsFile(tmp_path).read() if r["split"] == "val"]
    assert [m.split(":")[0] for m in lines] == ["step 8/24", "step 16/24", "step 24/24"]
    assert [f"val loss {v:.4f}," in m for m, v in zip(lines, vals)] == [True] * 3
    assert ["min left" in m for m in lines] == [True, True, False]
    assert not [m for m in lines if "action tokens" in m]  # tokens=action: the loss is theirs
    (tmp_path / "train_done.json").unlink()
    for name in ("last.pt", "step_0000016.pt"):
        (tmp_path / "checkpoints" / name).unlink()
    messages.clear()  # resumed from step 8: its lines go on from there
    train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0), actions[64:],
          tcfg(), tmp_path, torch.device("cpu"), 0, log=messages.append)
    assert [m.split(":")[0] for m in messages if m.startswith("step ")] == ["step 16/24",
                                                                             "step 24/24"]
    messages.clear()  # with the bar, the bar says it
    train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0), actions[64:],
          tcfg(progress=True), tmp_path / "bar", torch.device("cpu"), 0, log=messages.append)
    assert not [m for m in messages if m.startswith("step ")]


def test_the_time_left_is_this_sittings_pace_after_its_first_step():
    readings = iter([0.0, 100.0, 107.0, 107.0])  # the first step compiles: 100 s
    pace = Pace(lambda: next(readings), start=8)  # resumed at step 8
    pace.stepped(9)
    for step in range(10, 17):
        pace.stepped(step)  # only the first step is timed on its own
    assert pace.left(16, 24) == pytest.approx(8.0)  # 7 steps in 7 s after the first: 1 s/step
    assert pace.elapsed() == 107.0
    one = Pace(iter([0.0, 30.0, 30.0]).__next__)
    one.stepped(1)
    assert one.left(1, 3) == pytest.approx(60.0)  # one step so far: it is the pace
    # a validation just after a resume is not a step's time: set aside, then counted once per
    # validation left (a resume at step 290 once read "~506 min left" for ~300)
    readings = iter([0.0, 30.0, 162.0])  # start, step 291 compiles, 9 steps of 8 s, 60 s aside
    resumed = Pace(lambda: next(readings), start=290)
    resumed.stepped(291)
    resumed.set_aside(60.0)  # the validation at step 300
    assert resumed.per_step(300, now=next(readings)) == pytest.approx(8.0)
    assert validations_left(300, 2400, 100) == 21 and validations_left(16, 25, 8) == 2
    assert validations_left(2300, 2400, 100) == 1 and validations_left(0, 24, 8) == 3
    # a time budget's pace counts a resumed run's time before this process (t0 moves back)
    before = Pace(iter([500.0, 530.0]).__next__, elapsed_before=70.0)
    assert before.elapsed() == 100.0 and before.per_step(10, now=530.0) == pytest.approx(10.0)
    assert _eval_line(16, 24, 1.0, None, 120.0, 8.0) == "step 16/24: val loss 1.0000, 2 min, <1 min left"
    assert (_eval_line(300, 2400, 2.03114, 1.96501, 660.0, 4620.0)
            == "step 300/2400: val loss 2.0311 (action tokens 1.9650), 11 min, ~77 min left")
    assert _eval_line(24, 24, 1.0, None, 30.0) == "step 24/24: val loss 1.0000, <1 min"


def test_the_time_left_counts_each_validation_once_not_in_the_step_pace(tmp_path, actions,
                                                                          monkeypatch):
    import vla_ablate.training.loop as train_module

    now = [0.0]  # a sitting clock that only the full validations move: 1000 s each
    real = train_module.validation_losses

    def slow_validation(*args, **kwargs):
        now[0] += 1000.0
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "_sitting_clock", lambda: now[0])
    monkeypatch.setattr(train_module, "validation_losses", slow_validation)
    messages = []
    torch.manual_seed(0)
    train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0), actions[64:],
          tcfg(subset_eval_every=0), tmp_path, torch.device("cpu"), 0, log=messages.append)
    lines = [m for m in messages if m.startswith("step ")]
    # steps take no time: two validations left (16, 24) at 1000 s each. Counted in the step
    # pace too it would read ~71 min; with no validations left counted, <1 min
    assert lines[0].endswith(", 17 min, ~33 min left")
    assert lines[1].endswith(", 33 min, ~17 min left")
    assert validations_left(24, 24, 8) == 0


def test_corrupt_newest_checkpoint_falls_back(tmp_path, actions):
    fresh_run(tmp_path, actions, tcfg())
    ckpt = tmp_path / "checkpoints"
    (ckpt / "last.pt").unlink()
    data = (ckpt / "step_0000016.pt").read_bytes()
    (ckpt / "step_0000016.pt").write_bytes(data[: len(data) // 2])  # truncated
    messages = []
    state = Checkpoints(ckpt, 5, log=messages.append).latest_valid()
    assert state["step"] == 8
    assert any("step_0000016.pt is unreadable" in m for m in messages)


def test_divergence_is_detected_and_reported(tmp_path, actions):
    _, result = fresh_run(tmp_path, actions, tcfg(lr=1e6, min_lr=1e6, warmup_steps=0,
                                                  grad_clip=1e9, embed_lr=None,
                                                  head_lr=None))
    assert result.status == "diverged"
    assert 1 <= result.diverged_step <= 24
    assert (tmp_path / "train_done.json").exists()
    assert not math.isnan(result.train_loss or 0.0)


def test_resume_with_another_optimizer_is_refused_clearly(tmp_path, actions):
    fresh_run(tmp_path, actions, tcfg(optimizer="adamw"))
    (tmp_path / "checkpoints" / "last.pt").unlink()  # resume from the step-16 checkpoint
    with pytest.raises(ValueError, match="another optimizer than train.optimizer=muon"):
        fresh_run(tmp_path, actions, tcfg(optimizer="muon"))


class FakeClock:
    """Stands in for train._clock: each reading is one second after the previous one."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_checkpoint_minutes_saves_resumable_state_between_step_checkpoints(tmp_path, actions,
                                                                           monkeypatch):
    import vla_ablate.training.budget as train_module

    cfg = tcfg(steps=24, checkpoint_every=1000, checkpoint_minutes=2 / 60)  # 2 fake seconds
    monkeypatch.setattr(train_module, "_clock", FakeClock())
    ref_model, _ = fresh_run(tmp_path / "ref", actions, cfg)
    assert not list((tmp_path / "ref" / "checkpoints").glob("step_*.pt"))

    class Killed(Exception):
        pass

    def kill_at_step_20(record):
        if record["step"] == 20:
            raise Killed  # like kill -9: nothing after this point is saved
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**ARGS)
    with pytest.raises(Killed):
        train(model, ARGS, BatchSource(actions[:64], 8, 0), actions[64:], cfg, tmp_path / "part",
              torch.device("cpu"), 0, on_record=kill_at_step_20, log=lambda m: None)
    saved = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < saved["step"] < 20 and saved["step"] % cfg.log_every == 0
    assert "optimizer" in saved  # resumable, unlike best.pt
    messages = []
    model = DecoderOnlyTransformer(**ARGS)
    result = train(model, ARGS, BatchSource(actions[:64], 8, 0), actions[64:], cfg,
                   tmp_path / "part", torch.device("cpu"), 0, log=messages.append)
    assert result.resumed_from == saved["step"]
    # a resumed run's speed covers every sitting, as its training time does (8 x 11 tokens a step)
    assert result.tokens_per_s == pytest.approx(8 * 11 * result.steps / result.train_time_s)
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_signal_during_the_last_step_is_raised_again_once_the_model_is_saved(tmp_path,
                                                                               actions):
    """SIGTERM after the loop's last look at its flag (here during the final validation) used to
    be swallowed: the job went on to evaluate. Now train() saves the finished model first."""

    class Stopped(BaseException):
        pass

    def handler(_signum, _frame):
        raise Stopped

    cfg = tcfg()

    def term_at_the_final_validation(record):
        if record["step"] == cfg.steps and record["split"] == "val":
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        torch.manual_seed(0)
        with pytest.raises(Stopped):
            train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0),
                  actions[64:], cfg, tmp_path, torch.device("cpu"), 0,
                  on_record=term_at_the_final_validation, log=lambda m: None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    done = json.loads((tmp_path / "train_done.json").read_text())
    assert done["status"] == "completed" and done["steps"] == cfg.steps
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == cfg.steps


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_time_budget_ends_at_min_lr_after_warmup(tmp_path, actions, monkeypatch, schedule):
    import vla_ablate.training.budget as train_module

    # every step reads the fake clock a fixed number of times: the budget fits ~20 of 100 steps
    monkeypatch.setattr(train_module, "_clock", FakeClock())
    cfg = tcfg(steps=100, warmup_steps=4, max_minutes=1.0, checkpoint_minutes=0, lr=1e-2,
               min_lr=1e-4, schedule=schedule, decay_frac=0.5)
    messages = []
    torch.manual_seed(0)
    result = train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0),
                   actions[64:], cfg, tmp_path, torch.device("cpu"), 0, log=messages.append)
    assert result.status == "completed" and result.stopped_by == "train.max_minutes"
    assert cfg.warmup_steps < result.steps < cfg.steps
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == last["horizon"] == result.steps
    lrs = [r["lr"] for r in MetricsFile(tmp_path).read() if r["split"] == "train"]
    assert lrs[-1] == pytest.approx(lr_at(result.steps - 1, cfg, result.steps))
    assert lrs[-1] < 0.05 * cfg.lr  # the schedule ran its course, not cut off at a high rate
    if schedule == "wsd":  # its decay fell inside the budget: the last step trained at min_lr
        assert lr_at(result.steps - 1, cfg, result.steps) == pytest.approx(cfg.min_lr)
    assert any(f"decays to train.min_lr at step {result.steps}" in m for m in messages)
    # the evaluation at the end still happens
    final = MetricsFile(tmp_path).read()[-1]
    assert final["split"] == "val" and final["step"] == result.steps
    # (train.progress=false) its line ends at the budget's step, with no time left
    assert [m for m in messages if m.startswith("step ")][-1].startswith(
        f"step {result.steps}/{result.steps}: val loss {final['loss']:.4f}, ")
    assert "left" not in [m for m in messages if m.startswith("step ")][-1]


def test_a_budget_spent_before_its_horizon_ends_there_and_its_line_says_so(tmp_path, actions,
                                                                            monkeypatch):
    import vla_ablate.training.budget as train_module

    class SlowsDown(FakeClock):  # steps of 1 s until the horizon is fixed, then one of 1000 s
        def __call__(self):
            self.now += 1000.0 if self.now == 10.0 else 1.0
            return self.now

    monkeypatch.setattr(train_module, "_clock", SlowsDown())
    cfg = tcfg(steps=100, warmup_steps=4, max_minutes=1.0, checkpoint_minutes=0, eval_every=100)
    messages = []
    torch.manual_seed(0)
    result = train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0),
                   actions[64:], cfg, tmp_path, torch.device("cpu"), 0, log=messages.append)
    horizon = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["horizon"]
    assert result.stopped_by == "train.max_minutes" and result.steps < horizon
    assert any(f"spent at step {result.steps}; ending training" in m for m in messages)
    lines = [m for m in messages if m.startswith("step ")]
    assert len(lines) == 1 and lines[0].startswith(f"step {result.steps}/{result.steps}: ")
    assert "left" not in lines[0]


def test_time_budget_shorter_than_warmup_finishes_warmup_and_decays(tmp_path, actions,
                                                                    monkeypatch):
    import vla_ablate.training.budget as train_module

    monkeypatch.setattr(train_module, "_clock", FakeClock())
    cfg = tcfg(steps=100, warmup_steps=10, max_minutes=0.01, checkpoint_minutes=0)
    messages = []
    result = train(DecoderOnlyTransformer(**ARGS), ARGS, BatchSource(actions[:64], 8, 0),
                   actions[64:], cfg, tmp_path, torch.device("cpu"), 0, log=messages.append)
    assert result.steps == 20  # warmup, then as many steps to decay
    assert any("is spent before the warmup" in m for m in messages)


def test_bf16_keeps_float32_master_weights_and_tracks_fp32(tmp_path, actions):
    cfg = tcfg(steps=16)
    fp32_model, fp32 = fresh_run(tmp_path / "fp32", actions, cfg, precision="fp32")
    bf16_model, bf16 = fresh_run(tmp_path / "bf16", actions, cfg, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    assert bf16.val_loss == pytest.approx(fp32.val_loss, abs=0.05)
    assert bf16.val_loss != fp32.val_loss  # the forward pass really ran in bf16


def test_a_resumed_time_budget_keeps_its_horizon_reason_and_warmup_overrun(monkeypatch):
    from vla_ablate.training import budget as T

    cfg = tcfg(steps=100, warmup_steps=10, max_minutes=1.0)
    monkeypatch.setattr(T, "_clock", lambda: 1000.0)
    budget = T.TimeBudget(cfg, elapsed_before=70.0, horizon=60, log=lambda m: None)
    assert budget.end == 60 and budget.stopped_by == "train.max_minutes"
    # the warmup had overrun the budget: the run goes on to its horizon instead of stopping
    overrun = T.TimeBudget(cfg, elapsed_before=70.0, horizon=60, log=lambda m: None, hard=False)
    assert not overrun.is_last(30) and overrun.is_last(60)
    assert budget.is_last(30)  # a hard budget that is spent ends at once


def test_compile_auto_compiles_long_cpu_runs_where_a_compiler_exists(monkeypatch):
    from vla_ablate.training import compile as training

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(training.shutil, "which", lambda name: f"/usr/bin/{name}")
    long, short = training.CPU_COMPILE_MIN_STEPS, training.CPU_COMPILE_MIN_STEPS - 1
    assert training.use_compile("auto", cpu, long) and not training.use_compile("auto", cpu, short)
    assert training.use_compile("auto", cuda, 10) and training.use_compile("on", cpu, 10)
    assert not training.use_compile("off", cuda, long)
    # the evaluations' decode step: compiled on CUDA (or when asked), not on a CPU
    assert not training.use_compile_decode("auto", cpu) and training.use_compile_decode("on", cpu)
    assert training.use_compile_decode("auto", cuda)
    monkeypatch.setenv("CXX", "my-c++")
    assert training.cpp_compiler() == "/usr/bin/my-c++"
    monkeypatch.setattr(training.shutil, "which", lambda name: None)  # no compiler: stay eager
    assert training.cpp_compiler() is None and not training.use_compile("auto", cpu, long)


@pytest.mark.slow
def test_a_compiled_training_step_trains_like_the_eager_one(tmp_path, actions):
    from vla_ablate.training.compile import cpp_compiler

    if cpp_compiler() is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    cfg = tcfg(steps=6, eval_every=6, checkpoint_every=6)
    logs = []
    args = {**ARGS, "dropout": 0.0}
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**args)
    eager_model = DecoderOnlyTransformer(**args)
    eager_model.load_state_dict(model.state_dict())
    init = [p.detach().clone() for p in model.parameters()]
    results = {}
    for name, m, mode in (("compiled", model, "on"), ("eager", eager_model, "off")):
        cfg.compile = mode
        results[name] = train(m, args, BatchSource(actions[:64], 8, 0),
                              actions[64:], cfg, tmp_path / name, torch.device("cpu"), 0,
                              log=logs.append, precision="fp32")
    assert any("compiling the training step" in line for line in logs)
    assert results["compiled"].compiled is True and results["eager"].compiled is False
    assert results["compiled"].val_loss == pytest.approx(results["eager"].val_loss, abs=1e-3)
    # the same updates, up to float rounding (Muon's bf16 iterations amplify it a little)
    for a, b, start in zip(model.parameters(), eager_model.parameters(), init):
        moved = (b - start).norm()
        assert moved > 0 and (a - b).norm() <= 0.05 * moved


def test_a_failing_auto_compile_falls_back_to_eager_and_says_so(monkeypatch):
    from vla_ablate.training import compile as training

    def broken_compile(model, **kwargs):
        def fn(*args):
            raise RuntimeError("C++ compile error: Python.h: No such file or directory")
        return fn

    monkeypatch.setattr(training.torch, "compile", broken_compile)
    monkeypatch.setattr(training.shutil, "which", lambda name: f"/usr/bin/{name}")
    model = DecoderOnlyTransformer(**ARGS).eval()
    x = torch.randint(0, 256, (2, 8))
    logs = []
    step = training.compiled(model, "auto", training.CPU_COMPILE_MIN_STEPS, log=logs.append)
    assert step.compiled
    _, loss = step(x[:, :-1], x[:, 1:])
    assert not step.compiled and torch.equal(loss, model(x[:, :-1], x[:, 1:])[1])
    assert any("compiled first training step failed" in m and "Python.h" in m for m in logs)
    asked = training.compiled(model, "on", 10, log=logs.append)  # asked for: the error stands
    with pytest.raises(RuntimeError, match="Python.h"):
        asked(x[:, :-1], x[:, 1:])
    # a run resumed close to its end has too few steps left to repay a compilation
    assert not training.compiled(model, "auto", training.CPU_COMPILE_MIN_STEPS - 1).compiled
    # only the first call is guarded: an error of a later step stands
    calls = []

    def flaky_compile(model, **kwargs):
        def fn(*args):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("a later step's own error")
            return model(*args)
        return fn

    monkeypatch.setattr(training.torch, "compile", flaky_compile)
    later = training.compiled(model, "auto", training.CPU_COMPILE_MIN_STEPS, log=logs.append)
    later(x[:, :-1], x[:, 1:])
    with pytest.raises(RuntimeError, match="later step"):
        later(x[:, :-1], x[:, 1:])
    assert later.compiled
    empty = training.TrainingStep(model, True, fall_back=True, log=logs.append)
    empty.fn = lambda *args: (_ for _ in ()).throw(RuntimeError())  # an error without a message
    empty(x[:, :-1], x[:, 1:])
    assert not empty.compiled and "RuntimeError: )" in logs[-1]


def test_a_time_budget_is_paced_by_the_steps_after_the_first(monkeypatch):
    """The first step of a process holds one-off costs (torch.compile's 15-30 s on a CPU); the
    horizon is set by the pace of the steps after it, so a compiled run is not cut short."""
    from vla_ablate.training import budget as T

    readings = iter([0.0, 100.0, 101.0, 102.0, 103.0, 104.0])  # init, then steps 1-5
    monkeypatch.setattr(T, "_clock", lambda: next(readings))
    cfg = tcfg(steps=1000, warmup_steps=5, max_minutes=10.0)
    budget = T.TimeBudget(cfg, elapsed_before=0.0, horizon=None, log=lambda m: None)
    assert not any(budget.is_last(step) for step in range(1, 5))
    budget.is_last(5)
    # 540 s of budget (90%): 104 s spent by step 5, then one step per second
    assert budget.horizon == 5 + int(540 - 104)
