"""The three tables: positional encodings, the mask audit and the KV cache."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# two-sided 95% Student-t quantiles, df = 1..30 (beyond: the normal 1.96)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(n: int) -> float:
    return math.nan if n < 2 else (_T95[n - 2] if n - 1 <= len(_T95) else 1.96)


def mean_ci(values) -> tuple[float, float, float, int]:
    """(mean, std, half-width of the 95% interval, n) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, 0
    std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), std, t95(len(v)) * std / math.sqrt(len(v)), len(v)


def trained_models(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model: jobs that differ only in ``cache`` share a model."""
    done = runs[runs["status"] == "completed"]
    key = done["model_key"].fillna(done["path"])
    return done.loc[~key.duplicated()]


def steps_to_reach(metrics: pd.DataFrame, target: float) -> pd.Series:
    """First logged step at which each job's validation loss is <= ``target`` (NaN: never)."""
    val = metrics[(metrics["split"] == "val") & (metrics["loss"] <= target)]
    return val.groupby(["sweep", "job"])["step"].min()


def positional(runs, metrics, target_loss=2.0, reference="rope") -> pd.DataFrame:
    """Each ``pos`` under the causal mask: val loss/perplexity over seeds, extrapolation, vs rope."""
    models = trained_models(runs)
    models = models[models["mask"] == "causal"]
    reached = steps_to_reach(metrics, target_loss)
    ref = models[models["pos"] == reference].set_index("seed")["val_loss"]
    rows = []
    for pos, group in models.groupby("pos", sort=True):
        loss = mean_ci(group["val_loss"])
        ppl = mean_ci(group["val_perplexity"])
        steps = [reached.get((r.sweep, r.job), math.nan) for r in group.itertuples()]
        row = {"pos": pos, "seeds": loss[3], "val_loss_mean": loss[0], "val_loss_std": loss[1],
               "val_loss_ci95": loss[2], "val_ppl_mean": ppl[0], "val_ppl_std": ppl[1],
               "val_ppl_ci95": ppl[2], f"steps_to_{target_loss:g}": _nanmean(steps),
               "reached_target": f"{sum(np.isfinite(steps))}/{len(steps)}"}
        for factor in (2, 4):
            col = f"extrap_loss_{factor}x"
            row[f"loss_{factor}x"] = mean_ci(group[col])[0] if col in group else math.nan
        # paired by seed: (this pos - reference) with its 95% interval
        diffs = [v - ref[s] for s, v in zip(group["seed"], group["val_loss"]) if s in ref.index]
        d = mean_ci(diffs)
        row[f"diff_vs_{reference}"], row[f"diff_vs_{reference}_ci95"] = d[0], d[2]
        rows.append(row)
    return pd.DataFrame(rows)


def mask_audit(runs) -> pd.DataFrame:
    """causal vs none, per pos: teacher-forced losses, the honest prefix-only loss, leakage."""
    models = trained_models(runs)
    cols = {"audit_teacher_forced_train_loss": "train_loss_teacher_forced",
            "audit_teacher_forced_val_loss": "val_loss_teacher_forced",
            "audit_prefix_only_val_loss": "val_loss_prefix_only",
            "audit_leakage": "leakage"}
    present = [c for c in cols if c in models]
    if models.empty or not present:
        return pd.DataFrame(columns=["pos", "mask", "seeds", *cols.values(), "cheating_gap"])
    table = (models.groupby(["pos", "mask"], sort=True)[present].mean().rename(columns=cols)
             .reset_index())
    table.insert(2, "seeds", models.groupby(["pos", "mask"], sort=True).size().values)
    if {"val_loss_prefix_only", "val_loss_teacher_forced"} <= set(table):
        table["cheating_gap"] = table["val_loss_prefix_only"] - table["val_loss_teacher_forced"]
    return table


def kv_cache(runs, speed) -> pd.DataFrame:
    """Cache on vs off: median tokens/s by batch size and length, speed-up, decode agreement."""
    cols = ["batch_size", "new_tokens", "tokens_per_s_cache_on", "tokens_per_s_cache_off",
            "speedup", "cached_decode_matched"]
    if speed.empty:
        return pd.DataFrame(columns=cols)
    ok = runs[runs["status"] == "completed"]
    speed = speed.merge(ok[["sweep", "job"]], on=["sweep", "job"])
    med = (speed.groupby(["batch_size", "new_tokens", "use_cache"])["tokens_per_s"].median()
           .unstack("use_cache"))
    table = pd.DataFrame({
        "tokens_per_s_cache_on": med.get(True, pd.Series(np.nan, index=med.index)),
        "tokens_per_s_cache_off": med.get(False, pd.Series(np.nan, index=med.index)),
    })
    table["speedup"] = table["tokens_per_s_cache_on"] / table["tokens_per_s_cache_off"]
    causal_on = ok[(ok["mask"] == "causal") & (ok["cache"] == "on")]["kv_matches"].dropna()
    table["cached_decode_matched"] = (f"{int(causal_on.sum())}/{len(causal_on)} causal runs"
                                      if len(causal_on) else "n/a")
    return table.reset_index()[cols]


def status_table(runs) -> pd.DataFrame:
    """Jobs that did not complete, with what is known of why."""
    bad = runs[runs["status"] != "completed"]
    return bad[["job", "status", "pos", "mask", "cache", "seed", "diverged_step", "error",
                "path"]].reset_index(drop=True)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    if df.empty:
        return "_(no rows)_\n"

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _nanmean(values):
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else math.nan
