"""Time during training: the ``train.max_minutes`` budget, the pace of the steps, and the
``train.checkpoint_minutes`` clock."""

from __future__ import annotations

import time

_clock = time.monotonic  # the tests replace it to make time-based decisions predictable


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
    step, which holds one-off costs (a torch.compile build), once a later step
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
