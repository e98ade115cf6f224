"""What this machine gives a job: its device and its share of the cores."""

from __future__ import annotations

import os

import torch
from hydra.core.hydra_config import HydraConfig

from vla_ablate.console import log
from vla_ablate.errors import ConfigError


def pick_device(name: str) -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available")
        mps = getattr(torch.backends, "mps", None)
        if name == "mps" and not (mps and mps.is_available()):
            raise ConfigError("train.device=mps but MPS (Apple's GPU backend) is not available")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def thread_count(cfg) -> int:
    """train.num_threads, else this job's share of the cores: ``cpus_per_task`` under submitit
    (the allocation), else the cores divided among the jobs that run at the same time, fewer
    where ``OMP_NUM_THREADS`` asks for fewer."""
    if cfg.train.num_threads:
        return cfg.train.num_threads
    launcher = HydraConfig.get().launcher
    if "submitit" in str(launcher.get("_target_", "")):
        return int(launcher.get("cpus_per_task") or 1)
    share = max(1, (os.cpu_count() or 1) // jobs_at_once(cfg))
    omp = omp_num_threads()
    return min(share, omp) if omp else share


def jobs_at_once(cfg) -> int | None:
    """How many jobs share this machine at once: joblib's ``n_jobs``, else
    ``train.concurrent_jobs``; None under submitit (a cluster allocation, or every job at once
    with submitit_local), where it is not known here."""
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if "submitit" in target:
        return None
    return int(cfg.train.concurrent_jobs)


def omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS``'s first level ("4" and "4,2" give 4), or None where it is unset; a
    value that is not a positive number is ignored with a warning, as OpenMP and torch do."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    if first.isascii() and first.isdigit() and int(first) > 0:
        return int(first)
    log(f"warning: OMP_NUM_THREADS={value!r} is not a positive number of threads; ignored")
    return None
