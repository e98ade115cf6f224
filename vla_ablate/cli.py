"""Hydra's composition errors as one line on stderr, instead of its multi-line reports.

Until the first job starts, stderr goes through a gate that holds what is written. If Hydra
exits before that (an unknown option, a wrong type, an unknown key), the held report is
condensed to one ``error: ...`` line. Once a job starts the gate opens and passes everything on.
``HYDRA_FULL_ERROR=1`` keeps Hydra's full report.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager

_NOISE = ("Set the environment variable HYDRA_FULL_ERROR", "Config search path",
          "provider=", "reference_type=", "object_type=", "To append to your config")


class _StderrGate(io.TextIOBase):
    def __init__(self, target):
        self.target, self.held, self.open = target, [], False

    def write(self, text):
        if self.open:
            return self.target.write(text)
        self.held.append(text)
        return len(text)

    def flush(self):
        if self.open:
            self.target.flush()

    def release(self):
        if not self.open:
            self.open = True
            self.target.write("".join(self.held))
            self.held.clear()

    def fileno(self):
        return self.target.fileno()

    def isatty(self):
        return self.target.isatty()


_gate: _StderrGate | None = None


def job_started() -> None:
    """Open the gate: from now on stderr is passed through unchanged."""
    if _gate is not None:
        _gate.release()


def one_line(report: str) -> str:
    """Hydra's multi-line error report as one line."""
    parts, options = [], []
    collecting = False
    for raw in report.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            collecting = False if not line else collecting
            continue
        if line.startswith("Available options in"):
            collecting = True
            continue
        if collecting and raw.startswith(("\t", "    ")) and " " not in line:
            options.append(line)
            continue
        collecting = False
        parts.append(line.removeprefix("In 'config': ").rstrip("."))
    text = "; ".join(parts) or "invalid configuration"
    if options:
        text += f" (available: {', '.join(options)})"
    return f"error: {text}"


@contextmanager
def hydra_errors_on_one_line():
    global _gate
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    real = sys.stderr
    _gate = _StderrGate(real)
    sys.stderr = _gate
    try:
        yield
    except SystemExit as exit_:
        if not _gate.open and exit_.code not in (0, None):
            _gate.held = [one_line("".join(_gate.held)) + "\n"]
        raise
    finally:
        _gate.release()
        sys.stderr = real
