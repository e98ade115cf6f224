"""A LeRobot dataset from the Hugging Face Hub: only its ``meta/`` and ``data/`` folders, into the
data cache, once.

The numeric columns live in ``data/`` and the reader needs ``meta/info.json`` beside them;
``videos/`` and ``images/`` (most of a camera dataset's size) are never fetched. The copy lies
in ``CACHE_DIR/lerobot/OWNER--NAME`` and is reused without a network. ``meta/info.json`` is
fetched last, after everything else arrived, so its presence marks a complete copy: an
interrupted download is resumed on the next run, never read half-way.

``huggingface_hub`` is imported when a download is needed, so a run on a local dataset
(``data.root``) or on the course's data never loads it. Every failure is one line, a
``DataError``, that says how to fetch the dataset elsewhere and point ``data.root`` at it.
"""

from __future__ import annotations

import re
from pathlib import Path

from vla_ablate.errors import DataError, first_line

INFO = "meta/info.json"
PATTERNS = ["meta/*", "data/*"]  # fnmatch: "*" also matches "/", so every subfolder

# the Hub's rule for a repo id: OWNER/NAME (or a bare NAME), letters, digits, "-", "_", ".",
# neither starting nor ending with "-" or ".", no "--" or ".."
_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}")


def local_root(repo_id: str, cache_dir) -> Path:
    """Where ``repo_id``'s copy lies under ``cache_dir`` (``lerobot/pusht`` ->
    ``CACHE_DIR/lerobot/lerobot--pusht``)."""
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise DataError(f"data.repo_id {repo_id!r} is not a Hugging Face repo id (OWNER/NAME, "
                        "e.g. lerobot/pusht)")
    return Path(cache_dir) / "lerobot" / repo_id.replace("/", "--")


def download_command(repo_id: str, where: str = "DIR") -> str:
    """The command that fetches what ``fetch`` fetches, for a machine with a network."""
    include = " ".join(f'--include "{p}"' for p in PATTERNS)
    return f"hf download {repo_id} --repo-type dataset {include} --local-dir {where}"


def fetch(repo_id: str, cache_dir: Path, log=print) -> Path:
    """The local root of ``repo_id``'s ``meta/`` and ``data/``: the copy in the data cache if it
    is complete, else downloaded there now. Raises ``DataError`` (one line) where it cannot be
    had: no network, no ``huggingface_hub``, no such dataset, a gated one, a full disk."""
    root = local_root(repo_id, cache_dir)
    if (root / INFO).is_file():
        log(f"dataset {repo_id}: the copy in {root}")
        return root
    elsewhere = (f"on a machine with a network run `{download_command(repo_id)}`, copy DIR "
                 "here and use data.root=DIR instead of data.repo_id")
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        raise DataError(f"data.repo_id needs the huggingface_hub package (pip install "
                        f"huggingface_hub), or {elsewhere}") from None
    log(f"dataset {repo_id}: fetching meta/ and data/ from the Hugging Face Hub into {root}")
    try:  # snapshot_download makes the folder once it has an answer from the Hub
        for allow, ignore in ((PATTERNS, [INFO]), ([INFO], None)):  # info.json last
            huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_dir=root,
                                              allow_patterns=allow, ignore_patterns=ignore)
    except hub_errors.GatedRepoError:
        raise DataError(f"{repo_id} is a gated dataset: accept its terms on its Hub page and "
                        f"log in (hf auth login), or {elsewhere}") from None
    except hub_errors.RepositoryNotFoundError:
        raise DataError(f"no dataset {repo_id} on the Hugging Face Hub (or it is private: log in "
                        f"with hf auth login); check data.repo_id, or {elsewhere}") from None
    except hub_errors.LocalEntryNotFoundError as err:  # no connection, or HF_HUB_OFFLINE=1
        raise DataError(f"cannot reach the Hugging Face Hub to fetch {repo_id} (no network? "
                        f"{_cause(err)}); {elsewhere}") from None
    except hub_errors.HFValidationError as err:
        raise DataError(f"data.repo_id {repo_id!r}: {first_line(err)}") from None
    except hub_errors.HfHubHTTPError as err:
        raise DataError(f"the Hugging Face Hub refused {repo_id}: {first_line(err)}; "
                        f"{elsewhere}") from None
    except OSError as err:  # a full disk, a folder that cannot be written
        raise DataError(f"cannot write {root}: {err.strerror or first_line(err)}") from None
    if not (root / INFO).is_file():
        raise DataError(f"{repo_id} on the Hugging Face Hub has no {INFO}: not a LeRobot "
                        "dataset")
    return root


def _cause(err) -> str:
    """The underlying reason in a few words (``ConnectError: [Errno -2] Name or service not
    known``), from the Hub's message where it names one."""
    text = first_line(err)
    found = re.match(r"Got: (.+)", text)
    if found:
        return found.group(1)
    return "HF_HUB_OFFLINE is set" if "outgoing traffic has been disabled" in text else text
