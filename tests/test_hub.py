"""A LeRobot dataset fetched from the Hugging Face Hub (``vla_ablate/data/hub.py``), without a
network: ``snapshot_download`` is replaced by a stand-in that copies from a local folder laid
out as a Hub dataset repo, with the library's own pattern filter deciding what it copies."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vla_ablate.data import hub
from vla_ablate.data.lerobot import read_lerobot, write_lerobot
from vla_ablate.errors import DataError

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors as hub_errors  # noqa: E402
from huggingface_hub.utils import filter_repo_objects  # noqa: E402


@pytest.fixture
def remote(tmp_path) -> Path:
    """A dataset repo as the Hub holds it: meta/, data/, and videos/ that must not be fetched."""
    rng = np.random.default_rng(0)
    actions = [rng.normal(size=(12, 2)).astype(np.float32) for _ in range(4)]
    repo = write_lerobot(tmp_path / "remote", actions, None, fps=10, version="v3.0",
                         episodes_per_file=2, video_keys=["observation.images.top"])
    video = repo / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\0" * 64)
    (repo / "README.md").write_text("a dataset card\n")
    return repo


def stand_in(remote: Path, calls: list):
    """``snapshot_download`` over ``remote``: copies the files the patterns select."""
    def snapshot_download(repo_id, *, repo_type=None, local_dir=None, allow_patterns=None,
                          ignore_patterns=None, **_):
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "allow": allow_patterns,
                      "ignore": ignore_patterns})
        files = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*")
                       if p.is_file())
        for name in filter_repo_objects(files, allow_patterns=allow_patterns,
                                        ignore_patterns=ignore_patterns):
            target = Path(local_dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote / name, target)
        return str(local_dir)
    return snapshot_download


def test_fetch_downloads_meta_and_data_only_and_returns_a_readable_root(
        tmp_path, remote, monkeypatch):
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in(remote, calls))
    root = hub.fetch("lerobot/pusht", tmp_path / "cache", log=lambda _: None)
    assert root == tmp_path / "cache" / "lerobot" / "lerobot--pusht"
    assert {c["repo_id"] for c in calls} == {"lerobot/pusht"}
    assert {c["repo_type"] for c in calls} == {"dataset"}
    assert calls[-1]["allow"] == ["meta/info.json"]  # last: its presence marks a whole copy
    fetched = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
    assert fetched == {"meta", "data"}  # no videos/, no README
    assert (root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").is_file()
    assert read_lerobot(root, state_key=None).frames == 4 * 12


def test_an_existing_copy_is_reused_without_the_hub(tmp_path, remote, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(remote, hub.local_root("lerobot/pusht", cache))

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked for a dataset already in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    lines = []
    root = hub.fetch("lerobot/pusht", cache, log=lines.append)
    assert root == hub.local_root("lerobot/pusht", cache) and "the copy in" in lines[0]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not even imported
    assert hub.fetch("lerobot/pusht", cache, log=lambda _: None) == root


def test_an_interrupted_copy_is_fetched_again(tmp_path, remote, monkeypatch):
    cache = tmp_path / "cache"
    partial = hub.local_root("lerobot/pusht", cache)
    shutil.copytree(remote / "data", partial / "data")  # stopped before meta/info.json
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in(remote, calls))
    assert (hub.fetch("lerobot/pusht", cache, log=lambda _: None) / "meta" / "info.json").is_file()
    assert calls


def test_no_network_is_one_line_naming_data_root(tmp_path, monkeypatch):
    def offline(*args, **kwargs):  # what huggingface_hub raises when the Hub is unreachable
        raise hub_errors.LocalEntryNotFoundError(
            "Got: ConnectError: [Errno -2] Name or service not known\nAn error happened while "
            "trying to locate the files on the Hub, and we cannot find the appropriate snapshot "
            "folder for the specified revision on the local disk.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError) as err:
        hub.fetch("lerobot/pusht", tmp_path / "cache", log=lambda _: None)
    text = str(err.value)
    assert "\n" not in text
    assert "cannot reach the Hugging Face Hub" in text and "Name or service not known" in text
    assert ('hf download lerobot/pusht --repo-type dataset --include "meta/*" '
            '--include "data/*" --local-dir DIR') in text
    assert "data.root=DIR" in text
    assert not (tmp_path / "cache").exists()  # nothing left behind


@pytest.mark.parametrize("error, expected", [
    (hub_errors.RepositoryNotFoundError, "no dataset lerobot/nope on the Hugging Face Hub"),
    (hub_errors.GatedRepoError, "lerobot/nope is a gated dataset"),
])
def test_a_missing_or_gated_dataset_is_one_line(tmp_path, monkeypatch, error, expected):
    def refuse(*args, **kwargs):
        answer = SimpleNamespace(headers={}, request=None)  # the HTTP response, as it reads it
        raise error("401 Client Error.\nRepository Not Found for url: ...", response=answer)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(DataError, match=expected) as err:
        hub.fetch("lerobot/nope", tmp_path / "cache", log=lambda _: None)
    assert "\n" not in str(err.value) and "data.root=DIR" in str(err.value)


def test_a_repo_without_info_json_is_no_lerobot_dataset(tmp_path, remote, monkeypatch):
    (remote / "meta" / "info.json").unlink()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in(remote, []))
    with pytest.raises(DataError, match="has no meta/info.json: not a LeRobot dataset"):
        hub.fetch("someone/images", tmp_path / "cache", log=lambda _: None)


def test_without_huggingface_hub_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(DataError, match="pip install huggingface_hub") as err:
        hub.fetch("lerobot/pusht", tmp_path / "cache", log=lambda _: None)
    assert "data.root=DIR" in str(err.value)


@pytest.mark.parametrize("repo_id", ["../etc", "a/b/c", "lerobot/", "-x/y", "a--b/c", ""])
def test_a_bad_repo_id_is_refused_before_any_folder(tmp_path, repo_id):
    with pytest.raises(DataError, match="is not a Hugging Face repo id"):
        hub.fetch(repo_id, tmp_path / "cache", log=lambda _: None)
    assert not (tmp_path / "cache").exists()
