"""``train.compile``: whether the training step and the decode step run ``torch.compile``d, and a
first compiled step that falls back to eager where compiling fails (``auto``)."""

from __future__ import annotations

import os
import shutil

import torch


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile builds CPU kernels with ($CXX, else g++), if installed."""
    return shutil.which(os.environ.get("CXX") or "g++")


CPU_COMPILE_MIN_STEPS = 1000  # train.compile=auto compiles a CPU run of at least this many steps


def use_compile(mode: str, device, steps: int | None = None) -> bool:
    """``train.compile`` for the training step: ``on``, ``off``, or ``auto``: on CUDA, and on a
    CPU for a run of ``CPU_COMPILE_MIN_STEPS`` steps or more where a C++ compiler is installed.
    Compiling costs seconds once and then makes every step faster, so a long run repays it and a
    short one never (the measured figures: docs/benchmarks.md, "Compiling the step")."""
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
            self.log(f"warning: the compiled first training step failed ({type(err).__name__}: "
                     f"{_message(err)}); training eagerly (train.compile=off skips the attempt; "
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


def _message(err) -> str:
    """The first line of an error's message, cut to 200 characters (empty if it has none)."""
    return (str(err).splitlines() or [""])[0][:200]
