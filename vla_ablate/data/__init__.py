"""The course's data: the synthetic arm (``process``), dataset files (``store``) and the token
layouts a model reads (``tokens``). ``python -m vla_ablate.data`` writes a dataset file."""

from vla_ablate.data.process import (
    LINK_LENGTHS,
    NUM_JOINTS,
    NUM_MAGNITUDE_BINS,
    STATE_DIM,
    TOKEN_NOISE,
    VOCAB_SIZE,
    create_dataloaders,
    derived_seed,
    forward_kinematics_7dof,
    generate_dataset,
    generate_trajectory,
    split_indices,
)
from vla_ablate.data.store import cache_path, load_dataset, load_or_generate, save_dataset
from vla_ablate.errors import DataError

__all__ = [
    "LINK_LENGTHS", "NUM_JOINTS", "NUM_MAGNITUDE_BINS", "STATE_DIM", "TOKEN_NOISE", "VOCAB_SIZE",
    "DataError", "cache_path", "create_dataloaders", "derived_seed", "forward_kinematics_7dof",
    "generate_dataset", "generate_trajectory", "load_dataset", "load_or_generate",
    "save_dataset", "split_indices",
]
