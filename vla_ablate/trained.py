"""A trained model found from what the user names: its checkpoint, the run that trained it,
and that run's validation trajectories (for ``python -m vla_ablate.sample``, ``.visualize`` and
``.check_cache``). Every failure is a ``CommandError`` with one line."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from vla_ablate.data.lerobot import read_lerobot
from vla_ablate.data.process import VOCAB_SIZE, generate_dataset, split_indices
from vla_ablate.data.robot import RobotData, robot_layout
from vla_ablate.data.store import load_dataset
from vla_ablate.data.tokenizer import Tokenizers
from vla_ablate.errors import CommandError, DataError, first_line
from vla_ablate.runfolder import (
    BEST,
    CHECKPOINTS,
    JOB_CONFIG,
    LAST,
    MODELS,
    SUMMARY,
    TOKENIZER,
    read_json,
)
from vla_ablate.training.checkpoint import CheckpointError, model_from_state, read_checkpoint

# the course's defaults (dataset-spec.md), for a checkpoint found outside any run folder
DEFAULT_DATA = {"num_trajectories": 10000, "seq_length": 50, "seed": 42, "train_split": 0.9,
                "path": None}


def resolve_checkpoint(path) -> Path:
    """A checkpoint file from a path that names one, a run folder or a model folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CommandError(f"no such checkpoint: {path}")
    folders = [path, path / CHECKPOINTS]
    summary = read_json(path / SUMMARY)  # a sweep job: its model lives in models/<key>/
    summary = summary if isinstance(summary, dict) else {}
    # a run folder is not trusted to steer reads: only its own sweep's models/<key>/ is followed
    # (a summary could name any folder on the machine)
    models = (path.parent / MODELS).resolve()
    shared = [Path(summary["model_dir"])] if isinstance(summary.get("model_dir"), str) else []
    if isinstance(summary.get("model_key"), str):
        shared.append(path.parent / MODELS / summary["model_key"])
    for folder in shared:
        if folder.resolve().parent == models:
            folders.append(folder / CHECKPOINTS)
    for folder in folders:
        for name in (LAST, BEST):
            if (folder / name).is_file():
                return folder / name
    raise CommandError(f"{path} is a folder without a checkpoint (no checkpoints/last.pt)")


def load_checkpoint_file(path, state_tokens: bool = False) -> dict:
    """A checkpoint's state (``training.checkpoint.read_checkpoint``) and its ``path``.

    ``path``: a checkpoint, a run folder or a model folder. ``state_tokens``: the command reads
    a ``tokens=state_action`` model too (others refuse it).
    """
    path = resolve_checkpoint(path)
    try:
        state = read_checkpoint(path)
    except CheckpointError as err:
        raise CommandError(str(err)) from None
    vocab = state["model_args"].get("vocab_size", VOCAB_SIZE)
    if not state_tokens and (train_dir_of(path) / TOKENIZER).is_file():
        raise CommandError(f"{path} was trained on a LeRobot dataset (data=lerobot); this "
                           "command reads the course's action-token models only (python -m "
                           "vla_ablate.sample and .check_cache read it; its run folder's "
                           "summary.json holds the evaluations)")
    if vocab != VOCAB_SIZE and not state_tokens:  # they prompt and score action tokens
        raise CommandError(f"{path} was trained on state and action tokens (tokens=state_action, "
                           f"vocabulary {vocab}); this command reads action-token models only "
                           "(its run folder's summary.json holds the evaluations)")
    return {**state, "path": path}


def load_model(state: dict) -> torch.nn.Module:
    """The model of a state ``load_checkpoint_file`` read, in eval mode."""
    try:
        model = model_from_state(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CommandError(f"{state['path']}: the weights do not fit the model it describes "
                           f"({first_line(err)})") from None
    return model.eval()


def train_dir_of(checkpoint: Path) -> Path:
    """The folder that trained the checkpoint: it holds ``checkpoints/`` and ``metrics.jsonl``."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def run_config(checkpoint: Path) -> tuple[dict | None, Path | None]:
    """The Hydra config of the run that trained ``checkpoint`` and that run's folder, if found.

    A single run keeps its checkpoints beside ``.hydra/``; a sweep keeps a shared model in
    ``<sweep>/models/<key>/``, and the jobs that used it name the key in their summary.
    """
    train_dir = train_dir_of(checkpoint)
    candidates = [train_dir]
    if train_dir.parent.name == MODELS:
        for summary_path in sorted(train_dir.parent.parent.glob(f"*/{SUMMARY}")):
            if (read_json(summary_path) or {}).get("model_key") == train_dir.name:
                candidates.append(summary_path.parent)
    for folder in candidates:
        config = folder / JOB_CONFIG
        if config.is_file():
            try:
                return yaml.safe_load(config.read_text()) or {}, folder
            except (OSError, yaml.YAMLError):
                continue
    return None, None


def validation_actions(checkpoint: Path, data_path=None):
    """(validation action tokens (N, T), a sentence saying where they came from)."""
    cfg, run_dir = run_config(checkpoint)
    data = {**DEFAULT_DATA, **((cfg or {}).get("data") or {})}
    if data_path is not None or data.get("path"):
        path = Path(data_path or data["path"])
        try:
            actions = load_dataset(path)["actions"]
        except DataError as err:
            raise CommandError(str(err)) from None
        source = f"the dataset file {path}"
    else:
        n, length, seed = int(data["num_trajectories"]), int(data["seq_length"]), int(data["seed"])
        actions = generate_dataset(n, length, seed, progress=False)["actions"]
        source = f"generated: {n} trajectories of {length} steps, seed {seed}"
    if data_path is None:
        source += (f"; the data of the run in {run_dir}" if run_dir else
                   "; no run folder found, so the course's defaults")
    try:
        _, val_idx = split_indices(len(actions), float(data.get("train_split", 0.9)))
    except ValueError as err:
        raise CommandError(str(err)) from None
    return actions[val_idx], source


def robot_data(checkpoint: Path) -> tuple[RobotData, str] | None:
    """(the LeRobot dataset of the run that trained ``checkpoint``, split and tokenized by the
    model's own ``tokenizer.json``, a sentence saying where it came from), or None for a model
    of the course's data (no tokenizer file beside it)."""
    path = train_dir_of(checkpoint) / TOKENIZER
    if not path.is_file():
        return None
    cfg, run_dir = run_config(checkpoint)
    if cfg is None:
        raise CommandError(f"{checkpoint} was trained on a LeRobot dataset, but no run folder "
                           "beside it holds its settings (.hydra/config.yaml)")
    data = cfg.get("data") or {}
    try:
        tokenizers = Tokenizers.load(path)
    except DataError as err:
        raise CommandError(str(err)) from None
    # the folder the job read, as it resolved it (a repo_id's fetched copy, a relative root made
    # absolute): the run's config holds data.root as given; files from before name none
    source = tokenizers.dataset or {"root": data.get("root"), "repo_id": data.get("repo_id")}
    root, repo_id = source.get("root"), source.get("repo_id")
    if not root:
        raise CommandError(f"{checkpoint} was trained on a LeRobot dataset, but neither {path} "
                           "nor the run's .hydra/config.yaml names its folder (data.root)")
    if not Path(root).is_dir():
        raise CommandError(f"{checkpoint} was trained on the LeRobot dataset in {root}"
                           f"{f' (data.repo_id={repo_id})' if repo_id else ''}, which is not "
                           "there any more; put a copy back at that path")
    try:
        episodes = read_lerobot(root, data.get("action_key", "action"),
                                data.get("state_key") if tokenizers.state else None)
        layout = robot_layout(tokenizers.action.dims, tokenizers.state_names or None,
                              tokenizers.action.bins,
                              str(((cfg or {}).get("tokens") or {}).get("loss", "all")))
        robot = RobotData.build(episodes, layout, int(data["window"]),
                                float(data.get("train_split", 0.9)), int(data.get("seed", 42)),
                                int(cfg.get("seed", 42)), tokenizers.kind, tokenizers=tokenizers)
    except DataError as err:
        raise CommandError(str(err)) from None
    return robot, (f"the LeRobot dataset {root} of the run in {run_dir}, tokenized by "
                   f"{path} ({tokenizers.kind}, {tokenizers.action.bins} bins)")


def pick_trajectory(val_actions, index: int, max_seq_len: int) -> torch.Tensor:
    if index >= len(val_actions):
        raise CommandError(f"--trajectory {index} is out of range: there are "
                           f"{len(val_actions)} validation trajectories (0..{len(val_actions) - 1})")
    if val_actions.shape[1] > max_seq_len:
        raise CommandError(f"the trajectories have {val_actions.shape[1]} steps, more than the "
                           f"model's max_seq_len ({max_seq_len})")
    return val_actions[index]
