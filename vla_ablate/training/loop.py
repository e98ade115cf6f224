"""The training loop: teacher forcing, resumable from its checkpoints.

Everything a resumed run needs to continue exactly as if it had never stopped lives in a
checkpoint: weights, optimizer moments, the step (which fixes the learning rate and the batch
order) and the torch RNG state (dropout).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vla_ablate.data.tokens import ACTION, TokenLayout
from vla_ablate.fileio import write_json
from vla_ablate.optim import make_optimizer
from vla_ablate.precision import autocast
from vla_ablate.runfolder import CHECKPOINTS, TRAIN_DONE, MetricsFile
from vla_ablate.training.budget import Pace, TimeBudget, TimedCheckpoints, validations_left
from vla_ablate.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoints
from vla_ablate.training.compile import compiled
from vla_ablate.training.losses import validation_losses
from vla_ablate.training.schedule import BatchSource, lr_at
from vla_ablate.training.signals import TrainingInterrupted, stop_on_signals

_sitting_clock = time.perf_counter  # times and paces a sitting reports (tests replace it)


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


def train(model, model_args, batches: BatchSource, val_actions, tcfg, train_dir, device,
          seed: int, on_record=None, log=print, precision: str = "fp32",
          layout: TokenLayout = ACTION) -> TrainResult:
    """Train ``model`` in ``train_dir`` (checkpoints/ and metrics.jsonl), resuming if possible.

    ``precision`` (``fp32``, ``bf16`` or ``fp16``, see vla_ablate/precision.py) is the forward
    pass's compute dtype; weights, gradients and optimiser state stay float32. ``layout`` (the
    ``tokens`` group) says which targets the loss covers; with ``tokens=state_action`` the
    validation records carry ``action_loss`` (the action tokens alone) beside ``loss``.
    """
    run = _Run(model, model_args, batches, val_actions, tcfg, Path(train_dir), device, seed,
               on_record, log, precision, layout)
    with stop_on_signals() as stop:
        for step in range(run.start, run.budget.end):
            if stop["signum"] is not None:
                run.save_last(step)
                raise TrainingInterrupted(step, stop["signum"])
            if not run.optimise(step):
                return run.diverged(step)
            last = run.stepped(step + 1)
            if last:
                break
        # still under stop_on_signals: a signal during the last step or these saves comes after
        # the loop's last look, and is raised again once the trained model is saved
        return run.completed()


class _Run:
    """One sitting of training: the state ``train`` carries from step to step."""

    def __init__(self, model, model_args, batches, val_actions, tcfg, train_dir, device, seed,
                 on_record, log, precision, layout):
        self.model, self.model_args, self.batches, self.val = model, model_args, batches, val_actions
        self.tcfg, self.train_dir, self.device, self.log = tcfg, train_dir, device, log
        self.on_record, self.precision, self.layout = on_record, precision, layout
        self.ckpts = Checkpoints(train_dir / CHECKPOINTS, tcfg.keep_checkpoints, log=log)
        self.metrics = MetricsFile(train_dir)
        model.to(device)
        self.optimizer = make_optimizer(model, tcfg)
        # fp16's range is too narrow for raw gradients: scale the loss (a no-op elsewhere)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        torch.manual_seed(seed)
        self.start, self.best_val, self.elapsed_before, self.resumed_from = 0, math.inf, 0.0, None
        horizon, hard = self._resume()
        self.step_fn = compiled(model, tcfg.compile, (horizon or tcfg.steps) - self.start, log)
        for record in self.metrics.truncate(self.start):
            if on_record:
                on_record(record)
        self.tokens_per_step = tcfg.batch_size * (batches.actions.shape[1] - 1)
        self.train_loss = self.val_loss = self.val_action = None
        self.window_loss, self.window_steps = 0.0, 0
        # the records carry the action tokens' loss where it is not the objective's
        self.by_action = not layout.all_action_targets
        self.pace = Pace(_sitting_clock, self.start)  # not budget's clock: it moves fake budgets
        self.window_t0 = self.pace.t0
        self.progress = _progress_bar(self.start, tcfg) if tcfg.progress else None
        self.budget = TimeBudget(tcfg, self.elapsed_before, horizon, log=log, hard=hard)
        self.timed = TimedCheckpoints(tcfg.checkpoint_minutes)
        self.s, self.lr = self.start, None
        model.train()

    def _resume(self):
        """Load the newest valid checkpoint, if any: (its time-budget horizon, hard)."""
        state = self.ckpts.latest_valid()
        if state is None:
            return None, True
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"the checkpoint in {self.ckpts.folder} holds the state of another optimizer than "
                f"train.optimizer={self.tcfg.optimizer} ({err}); resume with the "
                "settings it was trained with, or train in a new folder"
            ) from err
        torch.set_rng_state(state["rng_torch"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start, self.best_val = state["step"], state["best_val_loss"]
        self.elapsed_before, self.resumed_from = state["elapsed_s"], state["step"]
        horizon = state.get("horizon")
        self.log(f"resuming from checkpoint at step {self.start} of {horizon or self.tcfg.steps}")
        return horizon, state.get("budget_hard", True)

    def elapsed(self, now=None) -> float:
        return self.elapsed_before + self.pace.elapsed(now)

    def emit(self, record: dict) -> None:
        self.metrics.append(record)
        if self.on_record:
            self.on_record(record)

    def snapshot(self, step: int, elapsed: float | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_args": self.model_args, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": step,
            "best_val_loss": self.best_val, "rng_torch": torch.get_rng_state(),
            "elapsed_s": self.elapsed() if elapsed is None else elapsed,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "horizon": self.budget.horizon, "budget_hard": self.budget.hard,
        }

    def save_last(self, step: int) -> None:
        self.ckpts.save(self.snapshot(step), self.ckpts.last)

    def optimise(self, step: int) -> bool:
        """One optimiser step; False where the loss or the gradient is not finite."""
        self.lr = lr_at(step, self.tcfg, self.budget.horizon)
        for group, scale in zip(self.optimizer.param_groups, self.optimizer.lr_scales,
                                strict=True):
            group["lr"] = self.lr * scale
        x = self.batches.batch(step).to(self.device)
        with autocast(self.precision, self.device):
            _, loss = self.step_fn(x[:, :-1], self.layout.train_targets(x))
        self.loss_value = loss.item()
        if not math.isfinite(self.loss_value):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        if self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            grad_norm = torch.zeros(())  # fp16 overflow: the scaler skips this step
        if not torch.isfinite(grad_norm):
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def stepped(self, s: int) -> bool:
        """The records and saves after step ``s``; True where training ends here."""
        tcfg = self.tcfg
        self.s = s
        self.pace.stepped(s)
        last = self.budget.is_last(s)
        self.window_loss += self.loss_value
        self.window_steps += 1
        if self.progress:
            self.progress.update(1)
        if s % tcfg.log_every == 0 or last:
            self.record_train(s)
        if tcfg.subset_eval_every and s % tcfg.subset_eval_every == 0:
            self.record_subset(s)
        if s % tcfg.eval_every == 0 or last:
            self.record_validation(s, last)
        if s % tcfg.checkpoint_every == 0 and not last:
            self.ckpts.save_step(self.snapshot(s), s)
        if not last and self.timed.due(s, tcfg.log_every):  # train.checkpoint_minutes
            self.save_last(s)
            self.timed.saved()
        return last

    def record_train(self, s: int) -> None:
        now = self.pace.clock()
        self.train_loss = self.window_loss / self.window_steps
        tps = self.tokens_per_step * self.window_steps / max(now - self.window_t0, 1e-9)
        self.emit({"step": s, "split": "train", "loss": self.train_loss,
                   "perplexity": math.exp(min(self.train_loss, 50)), "lr": self.lr,
                   "tokens_per_s": tps, "elapsed_s": self.elapsed(now)})
        if self.progress:
            self.progress.set_postfix(loss=f"{self.train_loss:.3f}", tok_s=f"{tps:,.0f}")
        self.window_loss, self.window_steps, self.window_t0 = 0.0, 0, now

    def _val_record(self, s: int, split: str, loss: float, action: float) -> dict:
        return {"step": s, "split": split, "loss": loss, "perplexity": math.exp(min(loss, 50)),
                **({"action_loss": action} if self.by_action else {}),
                "elapsed_s": self.elapsed()}

    def record_subset(self, s: int) -> None:
        """A fixed slice of the validation set, often: the step a loss is reached resolved to
        ``subset_eval_every`` steps at a few percent of the training time."""
        loss, action = validation_losses(self.model, self.val[: self.tcfg.subset_eval_size],
                                         self.device, self.layout, self.precision)
        self.emit(self._val_record(s, "val_subset", loss, action))

    def record_validation(self, s: int, last: bool) -> None:
        val_t0 = self.pace.clock()
        self.val_loss, self.val_action = validation_losses(self.model, self.val, self.device,
                                                           self.layout, self.precision)
        val_seconds = self.pace.clock() - val_t0
        self.pace.set_aside(val_seconds)
        self.emit(self._val_record(s, "val", self.val_loss, self.val_action))
        if self.progress:
            self.progress.write(f"step {s}: val loss {self.val_loss:.4f}")
        else:  # a sign of life in logs of long runs (train.progress=false)
            end = self.budget.end
            left = None if last else (  # the steps', then the validations' time
                self.pace.left(s, end)
                + val_seconds * validations_left(s, end, self.tcfg.eval_every))
            self.log(_eval_line(s, s if last else end,  # a spent budget ends here
                                self.val_loss, self.val_action if self.by_action else None,
                                self.pace.elapsed(), left))
        if self.val_loss < self.best_val:
            self.best_val = self.val_loss
            self.ckpts.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                             "model_args": self.model_args, "model": self.model.state_dict(),
                             "step": s, "val_loss": self.val_loss}, self.ckpts.best)

    def diverged(self, step: int) -> TrainResult:
        if self.progress:
            self.progress.close()
        self.log(f"diverged at step {step + 1}: loss {self.loss_value}; keeping the last good "
                 "checkpoint")
        result = TrainResult("diverged", step, self.train_loss, self.val_loss,
                             None if self.best_val == math.inf else self.best_val,
                             self.elapsed(), diverged_step=step + 1,
                             resumed_from=self.resumed_from, val_action_loss=self.val_action,
                             compiled=self.step_fn.compiled)
        write_json(self.train_dir / TRAIN_DONE, result.as_dict())
        return result

    def completed(self) -> TrainResult:
        if self.progress:
            self.progress.close()
        elapsed = self.elapsed()
        self.ckpts.save(self.snapshot(self.s, elapsed), self.ckpts.last)
        result = TrainResult(
            "completed", self.s, self.train_loss, self.val_loss, self.best_val, elapsed,
            resumed_from=self.resumed_from,  # tokens/s over every sitting, as train_time_s is
            tokens_per_s=self.tokens_per_step * self.s / max(elapsed, 1e-9),
            stopped_by=self.budget.stopped_by, val_action_loss=self.val_action,
            compiled=self.step_fn.compiled,
        )
        write_json(self.train_dir / TRAIN_DONE, result.as_dict())
        return result


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
    from tqdm import tqdm  # imported only where a bar is shown

    return tqdm(total=tcfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                mininterval=1.0)
