"""Ctrl-C and SIGTERM: the training loop saves before it stops; elsewhere a job stops where it is."""

from __future__ import annotations

import signal
from contextlib import contextmanager


class TrainingInterrupted(Exception):
    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved")
        self.step, self.signum = step, signum


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


class JobInterrupted(BaseException):
    """SIGTERM while a job is outside its training loop (loading data, evaluating). A
    BaseException, as KeyboardInterrupt is: the ``except Exception`` that reads a damaged cache
    or checkpoint as unusable must not take a stop for damage."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum} (no training step in progress)")
        self.signum = signum


@contextmanager
def signals_stop_the_job(stop: dict):
    """Within ``stop_on_signals`` (``stop``), which holds a SIGTERM or Ctrl-C back until the job
    is recorded: around the job's work, SIGTERM raises ``JobInterrupted`` and Ctrl-C does what it
    did before (``KeyboardInterrupt``), so the job stops where it is. (The training loop installs
    its own handlers for its steps, which save a checkpoint first, and puts these back.) A
    signal held back just before the block is raised on entering it."""

    def on_sigterm(signum, _frame):
        raise JobInterrupted(signum)

    found, held = stop["found"], {}  # found is empty outside the main thread: signals left alone
    if signal.SIGTERM in found:
        held[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
    if signal.SIGINT in found:  # None: a handler not set from Python, which can't be put back
        before = found[signal.SIGINT]
        held[signal.SIGINT] = signal.signal(
            signal.SIGINT, signal.default_int_handler if before is None else before)
    try:
        if stop["signum"] is not None:
            signum, stop["signum"] = stop["signum"], None
            signal.raise_signal(signum)
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
