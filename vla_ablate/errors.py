"""The errors the user sees as one line (``error: ...``); this module imports nothing else."""


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
