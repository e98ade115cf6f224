"""What the analysis modules share: the process's loss scales, the cheating threshold, the names
of the files a job writes, and how a mean with its interval reads in text.

The analysis reads run folders only and imports nothing from ``vla_ablate``, so the run-folder
file names are copies of that format (docs/run-folder.md), kept here once.
"""

from __future__ import annotations

import math

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


def as_float(value) -> float:
    """``value`` as a float; NaN for None and anything else that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pm(mean, half, missing: str | None = None) -> str:
    """``mean ± half`` to 4 decimals; ``mean`` alone where ``half`` is not finite (one seed:
    no interval). ``missing``: the text for a mean that is not finite (default: formatted as
    it is, ``nan``)."""
    mean, half = as_float(mean), as_float(half)
    if missing is not None and not math.isfinite(mean):
        return missing
    return f"{mean:.4f}" if not math.isfinite(half) else f"{mean:.4f} ± {half:.4f}"


def difference_verdict(diff, half) -> str:
    """Whether a paired difference is resolved by its 95% interval, as the texts word it."""
    if math.isfinite(half) and abs(diff) > half:
        return "larger than its 95% interval, so the difference is resolved"
    if math.isfinite(half):
        return "not larger than its 95% interval: more seeds are needed to call it"
    return "measured on one seed, so it has no interval"
