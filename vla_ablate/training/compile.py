"""``train.compile``: whether the training step and the decode step run ``torch.compile``d, and a
first compiled step that falls back to eager where compiling fails (``auto``)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

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
            out = self._first_step(*args)
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

    def _first_step(self, *args):
        """The first compiled step; one that fails on a damaged file in torch's inductor cache
        (a compile killed mid-build leaves a truncated ``.so`` there, which every later run of
        that shape would load) is compiled once more after the cache is mended."""
        try:
            return self.fn(*args)
        except Exception as err:  # noqa: BLE001 - only inductor-cache failures are retried
            what = mend_inductor_cache(err)
            if what is None:
                raise
            self.log(f"warning: the compiled first training step failed on torch's inductor "
                     f"cache ({type(err).__name__}: {_message(err)}); {what}; compiling again")
        torch._dynamo.reset()
        self.fn = torch.compile(self.model, dynamic=False)
        return self.fn(*args)


# what loading a truncated or half-written shared object from the cache says
_CACHE_DAMAGE = ("file too short", "invalid ELF header", "file truncated",
                 "file format not recognized")


def mend_inductor_cache(err) -> str | None:
    """For a compile error that points at torch's inductor cache (it names a shared object there,
    or says one is damaged): remove the damaged shared objects (empty or cut short) from the
    cache, so later runs build them afresh, and point this run at a fresh private cache
    (``TORCHINDUCTOR_CACHE_DIR``), which the retry is sure to build in; say what was done.
    None: the error is something else (a compile error of its own falls back as before)."""
    text = "\n".join(str(e) for e in _chain(err))
    where = _inductor_cache_dir()  # None: not known here, so nothing is removed
    cache = Path(where) if where else None
    named = [Path(p) for p in re.findall(r"(/[^\s:'\"]+\.so)\b", text)]
    ours = [p for p in named if cache is not None and p.is_relative_to(cache)
            and (not p.exists() or _not_elf(p))]
    if not ours and not any(k in text for k in _CACHE_DAMAGE):
        return None
    damaged = [] if cache is None else [p for p in cache.rglob("*.so") if _not_elf(p)]
    for path in damaged:
        path.unlink(missing_ok=True)
    fresh = tempfile.mkdtemp(prefix="vla-ablate-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
    removed = (f"removed {len(damaged)} damaged shared object(s) from {cache} (a compile killed "
               f"mid-build leaves one), e.g. {damaged[0]}; " if damaged else "")
    return f"{removed}this run builds in a fresh inductor cache, {fresh}"


def _not_elf(path: Path) -> bool:
    """A file that is no shared object: empty or cut short before its header (or not ELF)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) != b"\x7fELF"
    except OSError:
        return False


def _inductor_cache_dir() -> str | None:
    # imported here: torch._inductor takes seconds to import, and only a failed compile needs it
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # another torch version: its variable, else unknown (never a guess,
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # files there are removed)
    return cache_dir()


def _chain(err):
    """``err`` and the errors it was raised from (torch wraps the ImportError it hit)."""
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


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
