"""What the analysis modules share: the process's loss scales, the cheating threshold, the names
of the files a job writes, and how a mean with its interval reads in text.

The analysis reads run folders only and imports nothing from ``vla_ablate``, so the run-folder
file names are copies of that format (docs/run-folder.md), kept here once.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import PurePosixPath

NOISE_FLOOR = math.log(5)  # the +-2 token noise: no model's action loss can go below ln 5
UNIFORM = math.log(256)  # guessing uniformly over the 256 tokens
CHEATING_GAP = 0.05  # nats of prefix-only minus teacher-forced loss that count as cheating

# files in a job's folder
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
# the resolved training config under "training", written when the job starts
# (vla_ablate/runfolder.py, BINDING)
BINDING = "training_config.json"
ATTENTION_MAPS = "attention_maps.npz"
ATTENTION_PNG = "attention_maps.png"  # the rendered maps; the only ones in older folders
WANDB_RUN = "wandb/run.json"  # the job's wandb run (id, group, project, mode), with logger=wandb
# in a sweep folder: the job folders its launches ran (vla_ablate/runfolder.py, SWEEP_JOBS)
SWEEP_JOBS = "sweep_jobs.json"


def as_float(value) -> float:
    """``value`` as a float; NaN for None and anything else that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pm(mean, half, missing: str | None = None, digits: int = 4) -> str:
    """``mean ± half`` to ``digits`` decimals; ``mean`` alone where ``half`` is not finite (one
    seed: no interval). ``missing``: the text for a mean that is not finite (default: formatted
    as it is, ``nan``)."""
    mean, half = as_float(mean), as_float(half)
    if missing is not None and not math.isfinite(mean):
        return missing
    return (f"{mean:.{digits}f}" if not math.isfinite(half)
            else f"{mean:.{digits}f} ± {half:.{digits}f}")


def decimals(*values, least: int = 4) -> int:
    """Decimals that show two significant digits of the smallest non-zero magnitude among
    ``values``, and never fewer than ``least``: errors in a dataset's own units can be 1e-4."""
    small = [abs(as_float(v)) for v in values if math.isfinite(as_float(v)) and as_float(v)]
    return max(least, 1 - math.floor(math.log10(min(small)))) if small else least


def parse_per_seed(text) -> list[float]:
    """The values of a ``*_per_seed`` table cell (``tables.per_seed_text``), in seed order."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [float(part.split(":", 1)[1]) for part in text.split(";") if ":" in part]


def sign_count(values, diff) -> str:
    """How many of the per-seed ``values`` lie on the same side of zero as ``diff``:
    "3 of 3 seeds"."""
    sign = 1 if diff > 0 else -1
    return f"{sum(1 for v in values if v * sign > 0)} of {len(values)} seeds"


def stated_n(diff, half, per_seed: str, unit: str = "nats", digits: int = 4) -> str:
    """A paired difference with what its interval rests on: ``-0.0031 ± 0.0011 nats (95%
    Student-t interval over n = 3 paired seeds, df = 2; per seed -0.00265, -0.00335,
    -0.00341; 3 of 3 seeds below zero)``. With n < 5 the interval leans on normality, so the
    sign count goes beside it; with one seed there is no interval."""
    values = parse_per_seed(per_seed)
    n = len(values)
    text = f"{pm(diff, half, digits=digits)} {unit}"
    if n == 0:
        return text
    listed = ", ".join(f"{v:+.{digits + 1}f}" for v in values)
    if n == 1:
        return f"{text} (one seed: no interval)"
    side = "above" if diff > 0 else "below"
    count = f"; {sign_count(values, diff)} {side} zero" if n < 5 else ""
    return (f"{text} (95% Student-t interval over n = {n} paired seeds, df = {n - 1}; "
            f"per seed {listed}{count})")


def difference_verdict(diff, half) -> str:
    """Whether a paired difference is resolved by its 95% interval, as the texts word it."""
    if math.isfinite(half) and abs(diff) > half:
        return "larger than its 95% interval, so the difference is resolved"
    if math.isfinite(half):
        return "not larger than its 95% interval: more seeds are needed to call it"
    return "measured on one seed, so it has no interval"


def sweep_names(folders) -> dict[str, str]:
    """Each sweep folder's name in the tables: its last path component, or as many of its last
    components as tell it apart from the other folders (a results folder reads the same on
    any machine). A name that is already relative stays as it is; ``NAME [SOURCE]`` (a part
    from another machine, ``datafiles.merge_parts``) keeps its source."""
    folders = [str(f) for f in dict.fromkeys(map(str, folders))]
    bare = {f: re.sub(r" \[.*\]$", "", f) for f in folders}
    parts = {f: PurePosixPath(b).parts for f, b in bare.items()}
    names = {}
    for f in folders:
        if not PurePosixPath(bare[f]).is_absolute():
            names[f] = f
            continue
        for k in range(1, len(parts[f]) + 1):
            name = "/".join(parts[f][-k:])
            if not any(bare[g] != bare[f] and PurePosixPath(bare[g]).is_absolute()
                       and "/".join(parts[g][-k:]) == name for g in folders):
                break
        names[f] = name.lstrip("/") + f[len(bare[f]):]
    return names


def portable_text(text, sweep: str, name: str):
    """``text`` (overrides, an error) with the sweep folder's absolute path as ``name`` and any
    other absolute path after ``=`` relative to the sweep folder (``data.cache_dir=../datasets``)."""
    if not isinstance(text, str) or not PurePosixPath(sweep).is_absolute():
        return text
    text = text.replace(sweep.rstrip("/") + "/", name + "/").replace(sweep, name)
    return re.sub(r"(?<==)(/[^\s,;'\"]+)", lambda m: os.path.relpath(m.group(1), sweep), text)
