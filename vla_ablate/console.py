"""What the user sees on the console: one-line errors, the log format, command-line parsing.

Hydra's composition errors become one line on stderr instead of its multi-line reports: until
the first job starts, stderr goes through a gate that holds what is written. If Hydra
exits before that (an unknown option, a wrong type, an unknown key), the held report is
condensed to one ``error: ...`` line. Once a job starts the gate opens and passes everything on.
``HYDRA_FULL_ERROR=1`` keeps Hydra's full report.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from vla_ablate.errors import CommandError, first_line

CONF = Path(__file__).resolve().parents[1] / "conf"
USAGE = 2  # the exit code of every user error: a command line, a config or a file refused

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


def report(lines) -> None:
    """Print problems found before any job started, one line each, past the gate."""
    job_started()
    for line in lines:
        print(line, file=sys.stderr, flush=True)


_log = logging.getLogger("vla_ablate")


def log(message: str) -> None:
    """A progress message: on stderr as ``[vla_ablate] ...`` and in the job's vla_ablate.log."""
    _log.info(message)


def error(message: str) -> None:
    """A one-line error: on stderr as ``error: ...`` and in the job's vla_ablate.log."""
    _log.error(message)


class ConsoleFormatter(logging.Formatter):
    """A job's log records on stderr: ``[vla_ablate] message``, errors as ``error: message``."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= logging.ERROR and record.name.startswith("vla_ablate"):
            return f"error: {message}"
        return f"[{record.name.split('.')[0]}] {message}"


def one_line(report: str, argv=None) -> str:
    """Hydra's multi-line error report (or a traceback it printed) as one line."""
    if "Traceback (most recent call last)" in report:
        lines = [line.strip() for line in report.splitlines() if line.strip()]
        # the exception's own line, not Hydra's HYDRA_FULL_ERROR hint printed after it
        last = ([line for line in lines if not line.startswith(_NOISE)] or lines)[-1]
        return f"error: {_explain(last, sys.argv[1:] if argv is None else argv)}"
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
    return f"error: {_respelled(text, sys.argv[1:] if argv is None else argv)}"


def _respelled(message: str, argv) -> str:
    """``+experiment=ablation`` (the spelling before ``experiment: null`` joined the defaults,
    as ``+debug=``, ``+hparams_search=``) answered with the spelling that works now."""
    found = re.match(r"Multiple values for (\w+)", message)
    for arg in argv if found else ():
        group, _, option = arg.partition("=")
        if group == f"+{found.group(1)}":
            return (f"{arg}: {found.group(1)} is in the defaults list now; write "
                    f"{found.group(1)}={option} (no +)")
    return message


def _explain(message: str, argv) -> str:
    """A known Hydra exception in the user's words (naming the override), else its message."""
    message = re.sub(r"^[\w.]+(Error|Exception): ", "", message)
    if "Config group override must be a string" in message:
        for arg in argv:
            group, _, value = arg.lstrip("+~").partition("=")
            if (CONF / group).is_dir() and value.lower() in ("true", "false"):
                options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
                return (f"{arg}: the {group} group takes an option name, not a boolean "
                        f"(available: {', '.join(options)})")
    return message


_USAGE_HINTS = {
    "Only one of --run, --multirun, --cfg": " (--cfg shows one job's config: drop -m and give "
    "one value per key, e.g. `python -m vla_ablate seed=1 --cfg job`)",
}


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
        if not _gate.open and exit_.code not in (0, None):  # Hydra refused the command line
            _gate.held = [one_line("".join(_gate.held)) + "\n"]
            raise SystemExit(USAGE) from None
        raise
    except Exception as err:  # a usage error Hydra raises instead of reporting (-m with --cfg)
        if _gate.open or isinstance(err, BrokenPipeError):
            raise
        message = first_line(err)
        usage = [h for k, h in _USAGE_HINTS.items() if message.startswith(k)]
        _gate.held = [f"error: {message}{''.join(usage)}\n"]
        raise SystemExit(USAGE if usage else 1) from None  # else ours, not the user's
    finally:
        _gate.release()
        sys.stderr = real


# the small commands (python -m vla_ablate.data, .sample, .visualize, .check_cache)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...``, with exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(USAGE, f"error: {message}\n")


def run_command(main_fn, argv=None) -> int:
    """Run ``main_fn(argv)``; a ``CommandError`` becomes ``error: ...`` on stderr and exit 2."""
    try:
        return main_fn(argv) or 0
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE


def _number(cast, ok, expected: str, name: str):
    """An argparse ``type``: ``cast(text)`` if ``ok`` holds for it, else one clear line."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number", "positive_float")
