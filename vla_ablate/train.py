"""The training loop: teacher forcing, AdamW with warmup + cosine, checkpoints and resume.

Everything a resumed run needs to continue exactly as if it had never stopped lives in a
checkpoint: weights, optimizer moments, the step (which fixes the learning rate and the batch
order) and the torch RNG state (dropout). Batches are a pure function of (seed, step), so the
data order needs no state of its own.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vla_ablate.data import derived_seed
from vla_ablate.fileio import atomic_torch_save, write_json
from vla_ablate.optim import make_optimizer
from vla_ablate.precision import autocast
from vla_ablate.runfolder import MetricsFile
from vla_ablate.tokens import ACTION, TokenLayout

CHECKPOINT_FORMAT = "vla-ablate-checkpoint"
# 2: linear layers store their matrices as (in, out) (vla_ablate/model/linear.py)
CHECKPOINT_VERSION = 2
_STEP_CKPT = re.compile(r"step_(\d+)\.pt$")


class TrainingInterrupted(Exception):
    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved")
        self.step, self.signum = step, signum


@dataclass
class TrainResult:
    status: str  # completed | diverged
    steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    train_time_s: float
    diverged_step: int | None = None
    resumed_from: int | None = None
    tokens_per_s: float | None = None
    stopped_by: str | None = None  # "train.max_minutes" when the time budget ended training
    val_action_loss: float | None = None  # the action tokens alone (= val_loss, tokens=action)
    compiled: bool | None = None  # whether this sitting's training steps ran torch.compile'd

    def as_dict(self):
        return dict(self.__dict__)


class BatchSource:
    """Training batches as a pure function of the step: shuffled epochs, drop-last.

    Epoch e is a permutation seeded by (seed, e). With ``fresh`` (a callable epoch -> actions)
    every epoch draws new trajectories instead of repeating the same training split.
    """

    def __init__(self, actions: torch.Tensor, batch_size: int, seed: int, fresh=None):
        self.actions, self.batch_size, self.seed, self.fresh = actions, batch_size, seed, fresh
        n = len(actions)
        if n < batch_size:
            raise ValueError(f"train.batch_size ({batch_size}) exceeds the {n} training trajectories")
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm, self._epoch_actions = None, None, actions

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
            self._perm = torch.randperm(len(self.actions), generator=gen)
            self._epoch_actions = self.fresh(epoch) if self.fresh and epoch else self.actions
            self._epoch = epoch
        return self._epoch_actions[self._perm[i * self.batch_size : (i + 1) * self.batch_size]]


def lr_at(step: int, tcfg, steps: int | None = None) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    The cosine reaches ``min_lr`` at ``steps`` (default ``tcfg.steps``; a time budget sets a
    shorter horizon, see ``TimeBudget``).
    """
    if step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    span = max(1, (steps or tcfg.steps) - tcfg.warmup_steps)
    progress = min(1.0, (step - tcfg.warmup_steps) / span)
    return tcfg.min_lr + 0.5 * (tcfg.lr - tcfg.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def token_losses(model, actions: torch.Tensor, device, batch_size: int = 256,
                 precision: str = "fp32") -> torch.Tensor:
    """Teacher-forced cross-entropy (nats) of every predicted token: (N, T - 1), on the CPU.

    ``precision`` is the run's compute precision, so validation scores the model as it trains.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(actions), batch_size):
            x = actions[i : i + batch_size].to(device)
            with autocast(precision, device):
                logits, _ = model(x[:, :-1])
            out.append(F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:],
                                       reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def mean_loss(model, actions: torch.Tensor, device, batch_size: int = 256,
              precision: str = "fp32", select: torch.Tensor | None = None) -> float:
    """Teacher-forced mean cross-entropy (nats per token) over all sequences in ``actions``;
    ``select`` (T - 1,) bool: only those targets (e.g. ``TokenLayout.action_targets``)."""
    return masked_mean(token_losses(model, actions, device, batch_size, precision), select)


def masked_mean(losses: torch.Tensor, select: torch.Tensor | None) -> float:
    """The mean of per-target losses (N, T - 1), over the targets ``select`` (None: all)."""
    return (losses if select is None else losses[:, select]).mean().item()


def validation_losses(model, seqs: torch.Tensor, device, layout: TokenLayout = ACTION,
                      precision: str = "fp32") -> tuple[float, float]:
    """(the training objective's loss, the action tokens' loss) on ``seqs``, from one pass.

    With ``tokens=action`` both are the same number: every target is an action token."""
    losses = token_losses(model, seqs, device, precision=precision)
    objective = masked_mean(losses, layout.objective_targets(seqs.shape[1]))
    if layout.name == "action":
        return objective, objective
    return objective, masked_mean(losses, layout.action_targets(seqs.shape[1]))


# ------------------------------------------------------------------------------ checkpoints


class Checkpoints:
    """The checkpoint folder: step_N.pt every ``checkpoint_every``, last.pt, best.pt."""

    def __init__(self, folder: Path, keep: int, log=print):
        self.folder, self.keep, self.log = Path(folder), keep, log

    @property
    def last(self):
        return self.folder / "last.pt"

    @property
    def best(self):
        return self.folder / "best.pt"

    def save(self, state: dict, path: Path) -> None:
        atomic_torch_save(state, path)

    def save_step(self, state: dict, step: int) -> None:
        self.save(state, self.folder / f"step_{step:07d}.pt")
        steps = sorted(self._step_files(), reverse=True)
        for _, old in steps[self.keep :]:
            old.unlink(missing_ok=True)

    def _step_files(self):
        if not self.folder.is_dir():
            return []
        return [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_CKPT.search(p.name))]

    def latest_valid(self):
        """The loaded state of the newest checkpoint that reads back, or None.

        A corrupt or truncated newest file is reported and the previous one is used instead.
        """
        last = load_checkpoint(self.last, log=self.log) if self.last.exists() else None
        for step, path in sorted(self._step_files(), reverse=True):
            if last is not None and step <= last["step"]:
                break
            state = load_checkpoint(path, log=self.log)
            if state is not None:
                return state
        return last


def check_checkpoint(state) -> None:
    """Raise ValueError unless ``state`` is a checkpoint this version of vla-ablate can read."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a vla-ablate checkpoint")
    version = state.get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {version} is not {CHECKPOINT_VERSION} (written by "
                         "another vla-ablate version: retrain the model)")


def load_checkpoint(path, log=print):
    """A checkpoint's state dict, read with ``weights_only=True``; None (and a message) if bad."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_checkpoint(state)
        return state
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log(f"warning: checkpoint {path} is unreadable ({reason}); skipping it")
        return None


def load_model_from_checkpoint(path, **overrides):
    """Rebuild a ``DecoderOnlyTransformer`` from a checkpoint file alone."""
    from vla_ablate.model import DecoderOnlyTransformer

    state = torch.load(path, map_location="cpu", weights_only=True)
    check_checkpoint(state)
    args = dict(state["model_args"])
    if args.get("pos") == "sinusoidal" and "pos_amplitude" not in args:
        args["pos_amplitude"] = 1.0  # written before the matched amplitude: the unit table
    model = DecoderOnlyTransformer(**{**args, **overrides})
    model.load_state_dict(state["model"])
    return model


# ------------------------------------------------------------------------------ time

_clock = time.monotonic  # the tests replace it to make time-based decisions predictable
_sitting_clock = time.perf_counter  # times and paces a sitting reports (tests replace it)


class TimedCheckpoints:
    """``train.checkpoint_minutes``: a resumable last.pt every N minutes of training (0: never).

    Saved at the first step after the interval that is a multiple of ``log_every``, so a run
    resumed from it logs the same training-loss windows as one that never stopped.
    """

    def __init__(self, minutes: float):
        self.every, self.since = minutes * 60, _clock()

    def due(self, step: int, log_every: int) -> bool:
        return self.every > 0 and step % log_every == 0 and _clock() - self.since >= self.every

    def saved(self) -> None:
        self.since = _clock()


class Pace:
    """Seconds per step of this process's steps on ``clock``: counted from the end of its first
    step, which holds one-off costs (torch.compile's 15-30 s on a CPU), once a later step
    exists, and from the start (``start`` steps done, ``elapsed_before`` seconds in) before that.
    Time ``set_aside`` (the full validations) is left out: it does not recur with every step.
    """

    def __init__(self, clock, start: int = 0, elapsed_before: float = 0.0):
        self.clock, self.start = clock, start
        self.t0, self.first, self.aside = clock() - elapsed_before, None, 0.0

    def elapsed(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.t0

    def stepped(self, step: int, now: float | None = None) -> None:
        """Called after each step (``step`` steps done)."""
        if self.first is None:
            self.first = (step, self.clock() if now is None else now, self.aside)

    def set_aside(self, seconds: float) -> None:
        self.aside += seconds

    def per_step(self, step: int, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        base_step, base_t, base_aside = (self.first if self.first and step > self.first[0]
                                         else (self.start, self.t0, 0.0))
        return (now - base_t - (self.aside - base_aside)) / max(step - base_step, 1)

    def left(self, step: int, end: int) -> float:
        """Seconds of steps until step ``end`` at this pace (``step`` steps done)."""
        return self.per_step(step) * (end - step)


def validations_left(step: int, end: int, every: int) -> int:
    """Full validations after step ``step`` up to ``end``: every ``every`` steps and at the end."""
    return 0 if step >= end else end // every - step // every + (end % every != 0)


class TimeBudget:
    """``train.max_minutes``: training ends cleanly when its time budget is spent (0: no budget).

    The schedule is not cut off: when warmup ends, the pace of the steps after this process's
    first one (which holds one-off costs such as a compilation), applied to what is left of 90%
    of the budget, fixes the *horizon*, the number of steps that fit (at most ``train.steps``); the
    cosine then decays to ``min_lr`` at the horizon and training ends there. The horizon is saved
    in every checkpoint, so a resumed run keeps the schedule. If steps slow down and the budget
    is spent before the horizon, training stops at that step anyway (never before warmup ends).
    A budget that the warmup alone overruns gets a warning, and training continues for as many
    steps as the warmup took, to decay the learning rate, before it ends.
    """

    MARGIN = 0.9

    def __init__(self, tcfg, elapsed_before: float, horizon: int | None, log=print,
                 hard: bool = True):
        self.tcfg, self.seconds, self.log = tcfg, tcfg.max_minutes * 60, log
        self.pace = Pace(_clock, elapsed_before=elapsed_before)
        self.horizon = horizon if self.seconds > 0 else None
        self.hard = hard  # False once the warmup overran the budget: end at the horizon
        # a resumed run keeps what its horizon says about why it ends early
        self.stopped_by = ("train.max_minutes" if self.horizon and self.horizon < tcfg.steps
                           else None)

    @property
    def end(self) -> int:
        """The step at which training ends (``train.steps`` until a horizon is fixed)."""
        return self.horizon or self.tcfg.steps

    def is_last(self, step: int) -> bool:
        """Called after each step (``step`` steps done): does training end here?"""
        if self.seconds <= 0 or step >= self.end:
            return step >= self.end
        warmup = max(1, self.tcfg.warmup_steps)
        now = self.pace.clock()
        elapsed = self.pace.elapsed(now)
        self.pace.stepped(step, now)
        if self.horizon is None and step >= warmup:
            # the steps after this process's first one set the pace (see Pace); a clock that
            # did not move between them falls back to the whole run's
            per_step = self.pace.per_step(step, now)
            if per_step <= 0:
                per_step = max(elapsed, 1e-9) / step
            fit = step + int((self.seconds * self.MARGIN - elapsed) / per_step)
            self.horizon = min(self.tcfg.steps, max(fit, step + 1))
            if fit <= step:
                self.horizon = min(self.tcfg.steps, 2 * step)
                self.hard = False
                self.log(f"warning: train.max_minutes={self.tcfg.max_minutes:g} is spent before "
                         f"the warmup's {self.tcfg.warmup_steps} steps end; training continues "
                         f"to step {self.horizon} to decay the learning rate")
            else:
                self.log(f"time budget of {self.tcfg.max_minutes:g} min: the learning rate "
                         f"decays to train.min_lr at step {self.horizon} of {self.tcfg.steps}")
            self.stopped_by = "train.max_minutes" if self.horizon < self.tcfg.steps else None
            return step >= self.end
        if self.hard and step >= warmup and elapsed >= self.seconds:
            self.log(f"time budget of {self.tcfg.max_minutes:g} min spent at step {step}; "
                     "ending training")
            self.stopped_by = "train.max_minutes"
            return True
        return False


# ------------------------------------------------------------------------------ signals


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks before each step (to save first). One that
    came after the loop's last look (during the last step, the final saves, or a diverging step)
    is raised again on leaving the block normally, under the handlers it found (``found``)."""
    previous = {}
    flag = {"signum": None, "found": previous}

    def handler(signum, _frame):
        flag["signum"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    if flag["signum"] is not None:  # reached on a normal exit only (not TrainingInterrupted)
        signal.raise_signal(flag["signum"])


# ------------------------------------------------------------------------------ the loop


def train(model, model_args, batches: BatchSource, val_actions, tcfg, train_dir, device,
          seed: int, on_record=None, log=print, precision: str = "fp32",
          layout: TokenLayout = ACTION) -> TrainResult:
    """Train ``model`` in ``train_dir`` (checkpoints/ and metrics.jsonl), resuming if possible.

    ``precision`` (``fp32``, ``bf16`` or ``fp16``, see vla_ablate/precision.py) is the forward
    pass's compute dtype; weights, gradients and optimiser state stay float32. ``layout`` (the
    ``tokens`` group) says which targets the loss covers; with ``tokens=state_action`` the
    validation records carry ``action_loss`` (the action tokens alone) beside ``loss``.
    """
    train_dir = Path(train_dir)
    ckpts = Checkpoints(train_dir / "checkpoints", tcfg.keep_checkpoints, log=log)
    metrics = MetricsFile(train_dir)
    model.to(device)
    optimizer = make_optimizer(model, tcfg)
    # fp16's range is too narrow for raw gradients: scale the loss (a no-op in other precisions)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    torch.manual_seed(seed)
    start, best_val, elapsed_before, resumed_from = 0, math.inf, 0.0, None
    horizon, hard = None, True

    state = ckpts.latest_valid()
    if state is not None:
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"the checkpoint in {ckpts.folder} holds the state of another optimizer than "
                f"train.optimizer={tcfg.optimizer} ({err}); resume with the "
                "settings it was trained with, or train in a new folder"
            ) from err
        torch.set_rng_state(state["rng_torch"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_val = state["step"], state["best_val_loss"]
        elapsed_before, resumed_from = state["elapsed_s"], state["step"]
        horizon, hard = state.get("horizon"), state.get("budget_hard", True)
        log(f"resuming from checkpoint at step {start} of {horizon or tcfg.steps}")
    step_fn = compiled(model, tcfg.compile, (horizon or tcfg.steps) - start, log)
    records = metrics.truncate(start)
    if on_record:
        for rec in records:
            on_record(rec)

    def emit(record):
        metrics.append(record)
        if on_record:
            on_record(record)

    def snapshot(step, elapsed):
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_args": model_args,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "best_val_loss": best_val, "rng_torch": torch.get_rng_state(), "elapsed_s": elapsed,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "horizon": budget.horizon, "budget_hard": budget.hard,
        }

    tokens_per_step = tcfg.batch_size * (batches.actions.shape[1] - 1)
    last_train_loss, last_val, window_loss, window_steps = None, None, 0.0, 0
    last_val_action = None
    by_action = layout.name != "action"  # the records carry the action tokens' loss too
    pace = Pace(_sitting_clock, start)  # not _clock: its readings would move fake time budgets
    window_t0 = pace.t0
    progress = _progress_bar(start, tcfg) if tcfg.progress else None
    budget = TimeBudget(tcfg, elapsed_before, horizon, log=log, hard=hard)
    timed = TimedCheckpoints(tcfg.checkpoint_minutes)
    s = start
    model.train()
    with stop_on_signals() as stop:
        for step in range(start, budget.end):
            if stop["signum"] is not None:
                ckpts.save(snapshot(step, elapsed_before + pace.elapsed()), ckpts.last)
                raise TrainingInterrupted(step, stop["signum"])
            lr = lr_at(step, tcfg, budget.horizon)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = batches.batch(step).to(device)
            with autocast(precision, device):
                _, loss = step_fn(x[:, :-1], layout.train_targets(x))
            loss_value = loss.item()
            grad_norm = None
            if math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                if scaler.is_enabled() and not torch.isfinite(grad_norm):
                    grad_norm = torch.zeros(())  # fp16 overflow: the scaler skips this step
            if not math.isfinite(loss_value) or not torch.isfinite(grad_norm):
                if progress:
                    progress.close()
                log(f"diverged at step {step + 1}: loss {loss_value}; keeping the last good checkpoint")
                result = TrainResult("diverged", step, last_train_loss, last_val,
                                     None if best_val == math.inf else best_val,
                                     elapsed_before + pace.elapsed(), diverged_step=step + 1,
                                     resumed_from=resumed_from, val_action_loss=last_val_action,
                                     compiled=step_fn.compiled)
                write_json(train_dir / "train_done.json", result.as_dict())
                return result
            scaler.step(optimizer)
            scaler.update()
            s = step + 1
            pace.stepped(s)
            last = budget.is_last(s)
            window_loss += loss_value
            window_steps += 1
            if progress:
                progress.update(1)
            if s % tcfg.log_every == 0 or last:
                now = pace.clock()
                last_train_loss = window_loss / window_steps
                tps = tokens_per_step * window_steps / max(now - window_t0, 1e-9)
                emit({"step": s, "split": "train", "loss": last_train_loss,
                      "perplexity": math.exp(min(last_train_loss, 50)), "lr": lr,
                      "tokens_per_s": tps, "elapsed_s": elapsed_before + pace.elapsed(now)})
                if progress:
                    progress.set_postfix(loss=f"{last_train_loss:.3f}", tok_s=f"{tps:,.0f}")
                window_loss, window_steps, window_t0 = 0.0, 0, now
            if tcfg.subset_eval_every and s % tcfg.subset_eval_every == 0:
                # a fixed slice of the validation set, often: the step a loss is reached
                # resolved to subset_eval_every steps at a few percent of the training time
                subset, subset_action = validation_losses(
                    model, val_actions[: tcfg.subset_eval_size], device, layout, precision)
                emit({"step": s, "split": "val_subset", "loss": subset,
                      "perplexity": math.exp(min(subset, 50)),
                      **({"action_loss": subset_action} if by_action else {}),
                      "elapsed_s": elapsed_before + pace.elapsed()})
            if s % tcfg.eval_every == 0 or last:
                val_t0 = pace.clock()
                last_val, last_val_action = validation_losses(model, val_actions, device, layout,
                                                              precision)
                val_seconds = pace.clock() - val_t0
                pace.set_aside(val_seconds)
                emit({"step": s, "split": "val", "loss": last_val,
                      "perplexity": math.exp(min(last_val, 50)),
                      **({"action_loss": last_val_action} if by_action else {}),
                      "elapsed_s": elapsed_before + pace.elapsed()})
                if progress:
                    progress.write(f"step {s}: val loss {last_val:.4f}")
                else:  # a sign of life in logs of long runs (train.progress=false)
                    left = None if last else (  # the steps', then the validations' time
                        pace.left(s, budget.end)
                        + val_seconds * validations_left(s, budget.end, tcfg.eval_every))
                    log(_eval_line(s, s if last else budget.end,  # a spent budget ends here
                                   last_val, last_val_action if by_action else None,
                                   pace.elapsed(), left))
                if last_val < best_val:
                    best_val = last_val
                    ckpts.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                "model_args": model_args,
                                "model": model.state_dict(), "step": s, "val_loss": last_val},
                               ckpts.best)
            if s % tcfg.checkpoint_every == 0 and not last:
                ckpts.save_step(snapshot(s, elapsed_before + pace.elapsed()), s)
            if not last and timed.due(s, tcfg.log_every):  # train.checkpoint_minutes
                ckpts.save(snapshot(s, elapsed_before + pace.elapsed()), ckpts.last)
                timed.saved()
            if last:
                break
        if progress:
            progress.close()
        # still under stop_on_signals: a signal during the last step or these saves comes after
        # the loop's last look, and is raised again once the trained model is saved
        elapsed = elapsed_before + pace.elapsed()
        ckpts.save(snapshot(s, elapsed), ckpts.last)
        result = TrainResult(
            "completed", s, last_train_loss, last_val, best_val, elapsed,
            resumed_from=resumed_from,  # tokens/s over every sitting, as train_time_s is
            tokens_per_s=tokens_per_step * s / max(elapsed, 1e-9),
            stopped_by=budget.stopped_by, val_action_loss=last_val_action,
            compiled=step_fn.compiled,
        )
        write_json(train_dir / "train_done.json", result.as_dict())
    return result


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile builds CPU kernels with ($CXX, else g++), if installed."""
    return shutil.which(os.environ.get("CXX") or "g++")


CPU_COMPILE_MIN_STEPS = 1000  # train.compile=auto compiles a CPU run of at least this many steps


def use_compile(mode: str, device, steps: int | None = None) -> bool:
    """``train.compile`` for the training step: ``on``, ``off``, or ``auto``: on CUDA, and on a
    CPU for a run of ``CPU_COMPILE_MIN_STEPS`` steps or more where a C++ compiler is installed.
    On the development CPU compiling took ~14 s and a compiled step of the default model 0.66x
    the eager time in bf16 (0.76x in fp32), so a run repays it after ~140 steps, a short one
    never; the default run trained in 0.69x the eager time (docs/benchmarks.md, "Compiling the
    step")."""
    if mode != "auto":
        return mode == "on"
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and (steps or 0) >= CPU_COMPILE_MIN_STEPS
                              and cpp_compiler() is not None)


def use_compile_decode(mode: str, device) -> bool:
    """``train.compile`` for the evaluations' decode step: ``on``, or ``auto`` on CUDA only. On a
    CPU its compilations (a new one per batch size and grad mode) cost more than they save in
    the evaluations (docs/benchmarks.md, "Compiling the step")."""
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


class TrainingStep:
    """The model's forward for training steps: ``torch.compile``d, or the model itself.

    Under ``train.compile=auto`` a compilation that fails in the first step's forward pass (a
    CPU whose C++ toolchain lacks Python's or torch's headers shows there first) falls back to
    the eager model with a warning; under ``train.compile=on`` the error stands. The backward
    pass compiles lazily, at the first ``backward()``, outside this guard. ``compiled`` says
    whether this sitting's steps ran compiled.
    """

    def __init__(self, model, compile_it: bool, fall_back: bool, log=print):
        self.model, self.fall_back, self.log = model, fall_back, log
        self.fn = torch.compile(model, dynamic=False) if compile_it else model
        self.compiled, self._tried = compile_it, not compile_it

    def __call__(self, *args):
        if self._tried:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as err:  # torch raises several kinds (BackendCompilerFailed, ...)
            if not self.fall_back:
                raise
            first_line = (str(err).splitlines() or [""])[0][:200]
            self.log(f"warning: the compiled first training step failed ({type(err).__name__}: "
                     f"{first_line}); training eagerly (train.compile=off skips the attempt; "
                     "an error that follows is the eager model's own)")
            self.fn, self.compiled = self.model, False
            out = self.fn(*args)
        self._tried = True
        return out


def compiled(model, mode: str, steps: int, log=print) -> TrainingStep:
    """The training step, ``torch.compile``d when ``train.compile`` says so for ``steps`` steps
    (those left to run: a resumed run counts from its checkpoint)."""
    device = next(model.parameters()).device
    compile_it = use_compile(mode, device, steps)
    if compile_it:
        why = "" if mode == "on" else ", train.compile=auto"
        if why and device.type == "cpu":
            why += f": {cpp_compiler()} builds its CPU kernels"
        log(f"compiling the training step (torch.compile{why}; the first steps are slow)")
    return TrainingStep(model, compile_it, fall_back=mode == "auto", log=log)


def _eval_line(step, end, val, val_action, seconds, left=None):
    """``step 300/2400: val loss 2.0311 (action tokens 1.9650), 11 min, ~77 min left``:
    ``seconds`` this sitting's time (a resumed run counts from its checkpoint), ``left`` the
    estimate of the time to ``end`` (None: training ends at this step)."""
    def minutes(sec):
        return "<1 min" if sec < 60 else f"{sec / 60:.0f} min"

    action = "" if val_action is None else f" (action tokens {val_action:.4f})"
    after = ""
    if left is not None:
        after = ", <1 min left" if left < 60 else f", ~{minutes(left)} left"
    return f"step {step}/{end}: val loss {val:.4f}{action}, {minutes(seconds)}{after}"


def _progress_bar(start, tcfg):
    from tqdm import tqdm

    return tqdm(total=tcfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                mininterval=1.0)
