"""Atomic file writes: a file either holds its old content or its complete new content.

Every checkpoint, summary and cached dataset goes through here, so a run killed at any moment
(even by SIGKILL) leaves no truncated file behind: data goes to a temporary file in the same
folder, is flushed to disk, and is renamed over the target (rename is atomic on POSIX).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are shared like any file the user creates
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def write_json(path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, default=json_default) + "\n").encode())


def json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_line(record) -> str:
    return json.dumps(record, default=json_default) + "\n"
