"""The errors the user sees as one line (``error: ...``); this module imports nothing else."""

import re


class ConfigError(ValueError):
    """A configuration that cannot run."""


class DataError(Exception):
    """A dataset file that cannot be used."""


class CommandError(Exception):
    """Bad input to a command (``python -m vla_ablate.sample`` and the like)."""


def first_line(err) -> str:
    """An exception's message cut to its first line (its type's name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def safe_load_reason(err) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line, without torch's advice
    to re-run it with ``weights_only=False`` (never to be repeated for a file we were handed)."""
    text = str(err)
    if "Weights only load failed" not in text:
        return first_line(err)
    found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", text)
    what = f"it names {found.group(1)!r}" if found else "it holds more than tensors and numbers"
    return f"torch's safe loader refused it: {what}"
