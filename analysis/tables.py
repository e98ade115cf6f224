"""The four tables: positional encodings, the mask audit, the KV cache and the token layouts;
and, for runs on continuous actions, the action tokenizers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.collect import config_labels, tokenizer_labels
from analysis.common import NOISE_FLOOR, as_float, decimals


def t95(n: int) -> float:
    """The two-sided 95% Student-t quantile for a mean of ``n`` values (df = n - 1)."""
    return math.nan if n < 2 else float(stats.t.ppf(0.975, n - 1))


def mean_ci(values) -> tuple[float, float, float, int]:
    """(mean, std, half-width of the 95% interval, n) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, 0
    std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), std, t95(len(v)) * std / math.sqrt(len(v)), len(v)


def per_seed_text(values: pd.Series, fmt: str = "+.5f") -> str:
    """Paired values by seed as text, ``1: -0.00265; 2: -0.00335``: what an interval over
    seeds rests on, beside it in the tables (analysis/common.py, ``parse_per_seed``)."""
    return "; ".join(f"{_seed(s)}: {v:{fmt}}" for s, v in values.items() if np.isfinite(v))


def _seed(s) -> str:
    return str(int(s)) if isinstance(s, (int, float, np.number)) and float(s).is_integer() else str(s)


def trained_models(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model: jobs that differ only in ``cache`` share a model."""
    done = runs[runs["status"] == "completed"]
    key = done["model_key"].fillna(done["path"])
    return done.loc[~key.duplicated()]


def steps_to_reach(metrics: pd.DataFrame, target: float) -> pd.Series:
    """First logged step at which each job's validation loss is <= ``target`` (NaN: never).

    Uses the frequent fixed validation slice (split ``val_subset``) where a run logged one, else
    the whole validation split.
    """
    has_subset = metrics[metrics["split"] == "val_subset"].groupby(["sweep", "job"]).size()
    uses = [(sw, jb) in has_subset.index for sw, jb in zip(metrics["sweep"], metrics["job"])]
    split = pd.Series(uses, index=metrics.index).map({True: "val_subset", False: "val"})
    val = metrics[(metrics["split"] == split) & (metrics["loss"] <= target)]
    return val.groupby(["sweep", "job"])["step"].min()


def censored_median(values) -> float:
    """Median where NaN means "never reached" (later than any step): NaN if half never did."""
    v = sorted(math.inf if not np.isfinite(x) else float(x) for x in values)
    if not v:
        return math.nan
    n = len(v)
    m = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return m if math.isfinite(m) else math.nan


def _per_seed(group: pd.DataFrame, col: str) -> pd.Series:
    """``col`` averaged per seed (a seed trained twice, e.g. in two sweeps, counts once)."""
    return group.groupby("seed")[col].mean() if col in group else pd.Series(dtype=float)


def positional(runs, metrics, target_loss=2.0, reference="rope") -> pd.DataFrame:
    """Each (training configuration, ``pos``) under the causal mask.

    Validation loss of the action tokens (``val_action_loss``: the validation loss itself with
    tokens=action) over seeds with a 95% Student-t interval; steps to ``target_loss`` as a
    median in which runs that never reach it count as never (not dropped); the position-shift
    deltas; the loss at unseen positions of longer trajectories; and the difference to
    ``reference`` paired by seed within the same configuration (``pairs``: seeds on both sides).
    """
    models = trained_models(runs)
    models = models[models["mask"] == "causal"]
    reached = steps_to_reach(metrics, target_loss) if not metrics.empty else pd.Series(dtype=float)
    shift_cols = sorted((c for c in models if c.startswith("delta_shift_")),
                        key=lambda c: int(c.rsplit("_", 1)[1]))
    beyond_cols = sorted(c for c in models if c.endswith("x_beyond"))
    rows = []
    for (config, pos), group in models.groupby(["config", "pos"], sort=True):
        loss = mean_ci(_per_seed(group, "val_action_loss"))
        ppl = mean_ci(np.exp(_per_seed(group, "val_action_loss")))
        steps = [reached.get((r.sweep, r.job), math.nan) for r in group.itertuples()]
        row = {"config": config, "pos": pos, "seeds": loss[3], "val_loss_mean": loss[0],
               "val_loss_std": loss[1], "val_loss_ci95": loss[2], "val_ppl_mean": ppl[0],
               "val_ppl_ci95": ppl[2], f"steps_to_{target_loss:g}": censored_median(steps),
               "reached": f"{sum(np.isfinite(steps))}/{len(steps)}"}
        for col in shift_cols:
            row[col] = mean_ci(_per_seed(group, col))[0]
        if "loss_1x" in group:
            row["loss_1x_fresh"] = mean_ci(_per_seed(group, "loss_1x"))[0]
        for col in beyond_cols:
            row[col] = mean_ci(_per_seed(group, col))[0]
        ref = models[(models["config"] == config) & (models["pos"] == reference)]
        ref_loss, own = _per_seed(ref, "val_action_loss"), _per_seed(group, "val_action_loss")
        paired = own.index.intersection(ref_loss.index)
        d = mean_ci((own[paired] - ref_loss[paired]).tolist())
        row[f"diff_vs_{reference}"], row[f"diff_vs_{reference}_ci95"] = d[0], d[2]
        row["pairs"] = d[3]
        row[f"diff_vs_{reference}_per_seed"] = per_seed_text(own[paired] - ref_loss[paired])
        rows.append(row)
    return pd.DataFrame(rows)


AUDIT_FIGURES = ["seen_loss_teacher_forced", "val_loss_teacher_forced", "val_loss_prefix_only",
                 "cheating_gap", "leakage"]


def mask_audit(runs) -> pd.DataFrame:
    """causal vs none, per configuration and pos: the summary's mask-audit figures, by name."""
    models = trained_models(runs)
    present = [c for c in AUDIT_FIGURES if c in models]
    if models.empty or not present:
        return pd.DataFrame(columns=["config", "pos", "mask", "seeds", *AUDIT_FIGURES])
    rows = []
    for (config, pos, mask), group in models.groupby(["config", "pos", "mask"], sort=True):
        row = {"config": config, "pos": pos, "mask": mask,
               "seeds": group["seed"].nunique()}
        for col in present:
            row[col] = mean_ci(_per_seed(group, col))[0]
        if "cheating_gap" in present:
            row["cheating_gap_ci95"] = mean_ci(_per_seed(group, "cheating_gap"))[2]
        rows.append(row)
    return pd.DataFrame(rows)


MIN_BOOTSTRAP = 6  # fewer values: the bootstrap interval of a median is just their range


def median_ci(values, level=0.95, resamples=2000, seed=0) -> tuple[float, float, float]:
    """(median, low, high): a percentile-bootstrap interval of the median.

    NaN below ``MIN_BOOTSTRAP`` values: with n values the bootstrap's interval is about their
    range, which covers the median with probability 1 - 2^(1-n) only (0.875 for 4 values), so
    it would be no 95% interval; the tables give the range beside it."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    med = float(np.median(v))
    if len(v) < MIN_BOOTSTRAP:
        return med, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(v, size=(resamples, len(v)), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    return med, float(np.percentile(boots, tail)), float(np.percentile(boots, 100 - tail))


def speedup_spread(cell) -> str:
    """How sure a KV cell's median speed-up is: its 95% interval (``median_ci``), or the
    models' range where too few models (< ``MIN_BOOTSTRAP``) give none. ``cell``: a row of
    ``kv_cache`` (a Series or dict); absent values read "n/a"."""
    def num(key):
        value = as_float(cell.get(key))
        return f"{value:.2f}" if np.isfinite(value) else "n/a"

    lo, hi = num("speedup_ci95_low"), num("speedup_ci95_high")
    if "n/a" not in (lo, hi):
        return f"95% interval {lo}-{hi}"
    return f"range {num('speedup_min')}-{num('speedup_max')}"


def fixed_cell(kv):
    """The KV cell the texts quote, chosen in advance and never the best one: the smallest
    batch size, with the most new tokens. ``kv``: rows of ``kv_cache``, at least one."""
    one = kv[kv["batch_size"] == kv["batch_size"].min()]
    return one.loc[one["new_tokens"].idxmax()]


def kv_cache(runs, speed) -> pd.DataFrame:
    """The KV cache's paired speed-up per (training configuration, token layout, batch size,
    new tokens), across trained models: models trained differently (another precision, on
    another host) are never pooled.

    Each job times cached and uncached generation alternately on its own model; per job, the
    ratio is the median of its pairs; per model, the median of its jobs' ratios (the mean of
    two). The table gives the median ratio over models with a 95% bootstrap interval (the
    compute does not depend on the weights, so it says how reproducible this host's timing was
    over those ``jobs``, not how models differ), the range, the median
    tokens/s of each side, and how many causal models decoded like the full pass (every
    check of the model: ``evaluate.kv_cache_consistency``'s ``matches``), naming those whose
    greedy decodes parted at a near-tie. With
    ``tokens=state_action`` a new token is a step's action, generated after its given state
    tokens: a different workload, so its own rows. With D action tokens a step (``data=lerobot``)
    ``new_tokens`` counts tokens (D a step; the job's ``new_steps`` counts steps).
    """
    cols = ["config", "tokens", "batch_size", "new_tokens", "models", "jobs", "speedup_median",
            "speedup_ci95_low", "speedup_ci95_high", "speedup_min", "speedup_max",
            "tokens_per_s_cache_on", "tokens_per_s_cache_off", "precision", "timed_alone",
            "cached_decode_matched"]
    if speed.empty:
        return pd.DataFrame(columns=cols)
    ok = runs[runs["status"] == "completed"]
    # the runs' layout labels (with their settings where variants differ)
    speed = speed.drop(columns=["tokens", "config"], errors="ignore").merge(
        ok[["sweep", "job", "config", "tokens"]], on=["sweep", "job"])
    if speed.empty:
        return pd.DataFrame(columns=cols)
    speed = speed.assign(model=speed["model_key"].fillna(speed["sweep"] + "/" + speed["job"]))
    per_model = (speed.groupby(["config", "tokens", "batch_size", "new_tokens", "model"])
                 .agg(speedup=("speedup", "median"), jobs=("speedup", "size"),
                      on=("tokens_per_s_cache_on", "median"),
                      off=("tokens_per_s_cache_off", "median"),
                      precision=("precision", lambda p: ",".join(sorted(set(map(str, p))))),
                      alone=("concurrent_jobs", lambda c: bool(c.notna().all() and (c <= 1).all())))
                 .reset_index())
    rows = []
    for (config, tokens, batch, new), cell in per_model.groupby(
            ["config", "tokens", "batch_size", "new_tokens"], sort=True):
        causal = ok[(ok["mask"] == "causal") & (ok["tokens"] == tokens)
                    & (ok["config"] == config)].dropna(subset=["kv_matches"])
        # per model: a model evaluated by several jobs (cache on/off, a later sweep) counts once,
        # and matches only if every check of it did
        model = causal["model_key"].fillna(causal["path"])
        by_model = causal.groupby(model)["kv_matches"].all()
        matched = (f"{int(by_model.sum())}/{len(by_model)} causal models" if len(by_model)
                   else "n/a")
        tie = (causal["kv_greedy_tie"] if "kv_greedy_tie" in causal
               else pd.Series(False, index=causal.index))
        ties = int((by_model & tie.fillna(False).astype(bool).groupby(model).any()).sum())
        if ties:  # matched, but their greedy decodes parted where two logits were within it
            matched += f" ({ties} with greedy decodes parting at a near-tie)"
        med, lo, hi = median_ci(cell["speedup"])
        rows.append({"config": config, "tokens": tokens, "batch_size": batch, "new_tokens": new,
                     "models": len(cell), "jobs": int(cell["jobs"].sum()),
                     "speedup_median": med, "speedup_ci95_low": lo, "speedup_ci95_high": hi,
                     "speedup_min": cell["speedup"].min(), "speedup_max": cell["speedup"].max(),
                     "tokens_per_s_cache_on": cell["on"].median(),
                     "tokens_per_s_cache_off": cell["off"].median(),
                     "precision": ",".join(sorted(set(",".join(cell["precision"]).split(",")))),
                     "timed_alone": bool(cell["alone"].all()), "cached_decode_matched": matched})
    return pd.DataFrame(rows, columns=cols)


def token_layouts(runs, reference="action") -> pd.DataFrame:
    """Action-token validation loss by token layout (``tokens``), under the causal mask.

    ``val_action_loss`` scores the action tokens a_1 .. a_{T-1} alone in every layout, so the
    rows compare. One row per (configuration apart from the layout, pos, tokens): the mean over
    seeds with its 95% Student-t interval, the distance to the noise floor ln 5, and the
    difference to ``reference`` (action tokens alone) paired by seed within the same
    configuration and encoding (``pairs``: seeds on both sides).
    """
    cols = ["config", "pos", "tokens", "seeds", "val_action_loss_mean", "val_action_loss_std",
            "val_action_loss_ci95", "above_noise_floor", f"diff_vs_{reference}",
            f"diff_vs_{reference}_ci95", "pairs", f"diff_vs_{reference}_per_seed"]
    models = trained_models(runs)
    if models.empty or "val_action_loss" not in models:
        return pd.DataFrame(columns=cols)
    models = models[(models["mask"] == "causal") & models["val_action_loss"].notna()]
    key = "config_without_tokens" if "config_without_tokens" in models else "config"
    rows = []
    for (config, pos, tokens), group in models.groupby([key, "pos", "tokens"], sort=True):
        own = _per_seed(group, "val_action_loss")
        loss = mean_ci(own)
        ref = models[(models[key] == config) & (models["pos"] == pos)
                     & (models["tokens"] == reference)]
        ref_loss = _per_seed(ref, "val_action_loss")
        paired = own.index.intersection(ref_loss.index)
        d = (mean_ci((own[paired] - ref_loss[paired]).tolist()) if tokens != reference
             else (math.nan, math.nan, math.nan, math.nan))  # the reference itself
        rows.append({"config": config, "pos": pos, "tokens": tokens, "seeds": loss[3],
                     "val_action_loss_mean": loss[0], "val_action_loss_std": loss[1],
                     "val_action_loss_ci95": loss[2], "above_noise_floor": loss[0] - NOISE_FLOOR,
                     f"diff_vs_{reference}": d[0], f"diff_vs_{reference}_ci95": d[2],
                     "pairs": d[3], f"diff_vs_{reference}_per_seed": (
                         per_seed_text(own[paired] - ref_loss[paired])
                         if tokens != reference else "")})
    return pd.DataFrame(rows, columns=cols)


def tokenizer_models(runs) -> pd.DataFrame:
    """The trained models with an action error (runs on continuous actions), ``config``
    labelled apart from the tokenizer (which ``runs``' own label includes, as a training
    setting): the rows the tokenizer table and figure compare. Empty for the course's data."""
    models = trained_models(runs)
    if models.empty or "action_error_greedy" not in models:
        return models.iloc[:0]
    models = models[models["action_error_greedy"].notna()]
    if models.empty:
        return models
    configs = [json.loads(c) if isinstance(c, str) and c else {}
               for c in models.get("training_config", pd.Series("", index=models.index))]
    names = models["tokenizer"].fillna("n/a").astype(str).tolist()
    return models.assign(config=config_labels(configs, without=("tokenizer",)),
                         tokenizer=tokenizer_labels(configs, names))


def tokenizers(runs, reference="uniform") -> pd.DataFrame:
    """Action error by action tokenizer, for runs on continuous actions (``action_error`` in
    their summaries); no rows for the course's data, which has none.

    Cross-entropy is not comparable across tokenizers (other bins, another distribution over
    them), so the rows compare the error of the decoded action in the data's units: the mean
    absolute error of the greedy and the expected-value decode on the validation episodes,
    each the mean over seeds with its 95% Student-t interval; the tokenizer's round-trip
    error on the same steps (``round_trip_floor``: what binning alone costs, the error of a
    model that always predicted the right bin); each decode's error above that floor, taken
    per seed within each run; and the greedy error minus ``reference``'s, paired by seed within
    the same configuration, encoding and mask (``pairs``: seeds on both sides). One row per
    (configuration apart from the tokenizer, tokenizer with its settings where runs of one
    tokenizer differ in them, pos, and mask unless every run is causal). The validation loss
    is there for each tokenizer's own curve, never to compare rows.
    """
    cols = ["config", "tokenizer", "pos", "mask", "seeds", "greedy_error_mean",
            "greedy_error_ci95", "expected_error_mean", "expected_error_ci95", "round_trip_floor",
            "greedy_above_floor_mean", "greedy_above_floor_ci95", "expected_above_floor_mean",
            "expected_above_floor_ci95", f"diff_vs_{reference}", f"diff_vs_{reference}_ci95",
            "pairs", f"diff_vs_{reference}_per_seed", "val_loss_mean", "val_loss_ci95"]
    models = tokenizer_models(runs)
    if models.empty:
        return pd.DataFrame(columns=cols)
    models = models.assign(
        above_greedy=models["action_error_greedy"] - models["action_error_round_trip"],
        above_expected=models["action_error_expected"] - models["action_error_round_trip"])
    masks = set(models["mask"].astype(str))
    keys = ["config", "tokenizer", "pos"] + (["mask"] if masks != {"causal"} else [])
    rows = []
    for values, group in models.groupby(keys, sort=True):
        where = dict(zip(keys, values))
        greedy = _per_seed(group, "action_error_greedy")
        row = {**where, "seeds": len(greedy.dropna())}
        for name, col in (("greedy_error", "action_error_greedy"),
                          ("expected_error", "action_error_expected"),
                          ("greedy_above_floor", "above_greedy"),
                          ("expected_above_floor", "above_expected")):
            m = mean_ci(_per_seed(group, col))
            row[f"{name}_mean"], row[f"{name}_ci95"] = m[0], m[2]
            if name == "expected_error":
                row["round_trip_floor"] = mean_ci(_per_seed(group, "action_error_round_trip"))[0]
        same = models[np.logical_and.reduce([models[k] == v for k, v in where.items()
                                             if k != "tokenizer"])]
        ref = _per_seed(same[same["tokenizer"] == reference], "action_error_greedy")
        paired = greedy.index.intersection(ref.index)
        d = (mean_ci((greedy[paired] - ref[paired]).tolist()) if where["tokenizer"] != reference
             else (math.nan, math.nan, math.nan, math.nan))  # the reference itself
        row.update({f"diff_vs_{reference}": d[0], f"diff_vs_{reference}_ci95": d[2],
                    "pairs": d[3], f"diff_vs_{reference}_per_seed": (
                        # significant digits: errors in the data's units can be 1e-4
                        per_seed_text(greedy[paired] - ref[paired], fmt="+.4g")
                        if where["tokenizer"] != reference else "")})
        loss = mean_ci(_per_seed(group, "val_action_loss"))
        row["val_loss_mean"], row["val_loss_ci95"] = loss[0], loss[2]
        rows.append(row)
    return pd.DataFrame(rows, columns=[c for c in cols if c != "mask" or "mask" in keys])


def tokenizer_markdown(tok: pd.DataFrame) -> str:
    """The tokenizer table in Markdown, with three significant digits of its smallest
    round-trip floor: errors in a dataset's own units can be 1e-4 (the arm's joint changes),
    which the other tables' 4 decimals would show as 0.0002 or 0.0000. ``pairs`` is a count
    (a float column only because the reference rows have none)."""
    if len(tok) and "pairs" in tok:
        tok = tok.assign(pairs=pd.Series([int(v) if pd.notna(v) else None for v in tok["pairs"]],
                                         index=tok.index, dtype=object))
    return to_markdown(tok, digits=decimals(*tok["round_trip_floor"]) + 1 if len(tok) else 4)


def status_table(runs) -> pd.DataFrame:
    """Jobs that did not complete, with what is known of why."""
    bad = runs[runs["status"] != "completed"]
    return bad[["job", "status", "config", "pos", "mask", "cache", "seed", "tokens",
                "diverged_step", "error", "path"]].reset_index(drop=True)


def cell_text(v, digits: int = 4, missing: str = "–", text=str) -> str:
    """One table cell: floats with `digits` decimals and, from 10,000 on, as whole numbers (never
    fewer digits than the value has); NaN, inf and None as `missing`; anything else through `text`."""
    if isinstance(v, (float, np.floating)):
        return missing if not np.isfinite(v) else f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
    return missing if v is None else text(v)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    if df.empty:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell_text(v, digits) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


