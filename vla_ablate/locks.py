"""One job trains a shared model at a time: a lock on the model's folder."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from vla_ablate.console import log
from vla_ablate.errors import ConfigError
from vla_ablate.runfolder import JOB_LOCK, LOCK, LOCK_DIR


@contextmanager
def model_lock(folder: Path):
    """An exclusive file lock, so parallel jobs never train the same model twice.

    ``flock`` works on local disks and on NFS (Linux maps it to NFS byte-range locks). Where the
    file system refuses it (Lustre mounted without ``-o flock``, some FUSE and SMB mounts:
    ENOSYS, ENOTSUP, ENOLCK...), a lock folder created with ``mkdir`` (atomic there too) stands
    in, with a warning; one left by a job that died on this host is removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another job that is training the model in {folder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            log(f"warning: file locks are not supported in {folder} ({os.strerror(err.errno)}); "
                "using a lock folder instead")
            with _lock_folder(folder / LOCK_DIR):
                yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_NO_FLOCK = {errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


@contextmanager
def job_folder_lock(folder: Path):
    """One process per job folder: a second one on the same folder is refused (``ConfigError``)
    instead of evaluating beside the first and racing it for the summary. Where the file system
    refuses ``flock``, nothing is locked."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / JOB_LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip()
            raise ConfigError(f"{folder} is in use by another job that is still running"
                              f"{f' (process {owner})' if owner else ''}; wait for it to end, "
                              "or give a new folder (hydra.run.dir=... or hydra.sweep.dir=...)"
                              ) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            yield
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _lock_folder(path: Path, poll_s: float = 1.0):
    owner = f"{socket.gethostname()} {os.getpid()}"
    waiting = False
    while True:
        try:
            path.mkdir()
            (path / "owner").write_text(owner)
            break
        except FileExistsError:
            if _stale(path):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not waiting:
                log(f"waiting for another job that is training the model in {path.parent}")
                waiting = True
            time.sleep(poll_s)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stale(path: Path) -> bool:
    """A lock folder whose owner was a process on this host that no longer exists."""
    try:
        host, pid = (path / "owner").read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
        return False
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
