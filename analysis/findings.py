"""report.md's findings: one sentence per fixed, pre-chosen cell of the tables, saying what its
numbers show (never a cell picked for looking best)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import tables
from analysis.common import (
    CHEATING_GAP,
    NOISE_FLOOR,
    decimals,
    difference_verdict,
    pm,
    stated_n,
)


def findings(made) -> list[str]:
    """Sentences stating what the numbers show, for fixed, pre-chosen cells only; ``made``:
    ``build_report``'s tables by name."""
    out = [*_positional(made["positional"]), *_mask_audit(made["mask_audit"]),
           *_token_layouts(made.get("tokens", pd.DataFrame())),
           *_tokenizers(made.get("tokenizer", pd.DataFrame())), *_kv_cache(made["kv_cache"])]
    status = made["status"]
    if not status.empty:
        listed = ", ".join(f"job {r.job} ({r.status})" for r in status.itertuples())
        out.append(f"Not completed: {listed}.")
    return out or ["No completed runs to compare yet."]


def _positional(pos) -> list[str]:
    """Per configuration: sinusoidal variants against RoPE, the position shift, and the loss
    at unseen positions."""
    out = []
    for config, rows in (pos.groupby("config", sort=True) if not pos.empty else []):
        rows = rows.set_index("pos")
        where = "" if config == "default" else f" ({config})"
        variants = ([p for p in rows.index if p.startswith("sinusoidal")]
                    if "rope" in rows.index else [])
        for variant in variants:
            r = rows.loc[variant]
            d, ci = r["diff_vs_rope"], r["diff_vs_rope_ci95"]
            if np.isfinite(d):
                winner = "RoPE" if d > 0 else variant
                seeds = stated_n(d, ci, r.get("diff_vs_rope_per_seed"))
                out.append(f"{variant.capitalize()} minus RoPE validation loss{where}: "
                           f"{seeds}, over {int(r['pairs'])} paired seed(s) ({winner} "
                           f"ahead); the difference is {difference_verdict(d, ci)}.")
        shifts = sorted((c for c in rows if c.startswith("delta_shift_")),
                        key=lambda c: int(c.rsplit("_", 1)[1]))
        if shifts:
            last = shifts[-1]
            k = last.rsplit("_", 1)[1]
            deltas = ", ".join(f"{name} {rows.loc[name, last]:+.4f}" for name in rows.index
                               if np.isfinite(rows.loc[name, last]))
            out.append(f"Position shift{where}: the validation trajectories moved {k} steps "
                       f"later change the loss by {deltas} nats (0 for an encoding that sees "
                       "relative positions only).")
        beyond = sorted(c for c in rows if c.endswith("x_beyond"))
        if beyond and "loss_1x_fresh" in rows:
            col = beyond[-1]
            text = ", ".join(f"{name} {rows.loc[name, col]:.3f} "
                             f"(vs {rows.loc[name, 'loss_1x_fresh']:.3f})"
                             for name in rows.index if np.isfinite(rows.loc[name, col]))
            out.append(f"Unseen positions of {col.split('_')[1]}-length trajectories{where} "
                       f"(new positions and a new data regime; in brackets fresh trajectories "
                       f"of the training length): {text}.")
    return out


def _mask_audit(audit) -> list[str]:
    """Per configuration and encoding with both masks: the unmasked model's teacher-forced
    against prefix-only loss, and whether the gap counts as cheating (``CHEATING_GAP``)."""
    out = []
    if audit.empty or not {"causal", "none"} <= set(audit["mask"]):
        return out
    for config, rows in audit.groupby("config", sort=True):
        if not {"causal", "none"} <= set(rows["mask"]):
            continue
        where = "" if config == "default" else f" ({config})"
        for pos, a in rows.groupby("pos", sort=True):  # one sentence per encoding
            a = a.set_index("mask")
            if not {"causal", "none"} <= set(a.index):
                continue
            tf = a.loc["none", "val_loss_teacher_forced"]
            honest = a.loc["none", "val_loss_prefix_only"]
            verdict = (
                "the unmasked model reads the next token from its input instead of "
                "predicting it, and that skill is useless when generating"
                if a.loc["none", "cheating_gap"] > CHEATING_GAP else
                f"the gap is below {CHEATING_GAP} nats, so this model has not learned to "
                "exploit the future (yet)")
            out.append(
                f"Without the causal mask (pos={pos}{where}) the teacher-forced validation "
                f"loss is {tf:.3f} (causal: {a.loc['causal', 'val_loss_teacher_forced']:.3f}); "
                f"when each position sees only its prefix it is {honest:.3f}: {verdict} "
                f"(leakage {a.loc['none', 'leakage']:.3g} vs "
                f"{a.loc['causal', 'leakage']:.3g}).")
    return out


def _token_layouts(tok) -> list[str]:
    """Each layout with state tokens against action tokens alone, and both against the noise
    floor ln 5."""
    out = []
    for row in (tok[tok["tokens"] != "action"].itertuples() if not tok.empty else []):
        where = "" if row.config == "default" else f", {row.config}"
        d, ci = row.diff_vs_action, row.diff_vs_action_ci95
        if not np.isfinite(d):
            continue
        verdict = ("larger than its 95% interval" if np.isfinite(ci) and abs(d) > ci else
                   "within its 95% interval: not resolved" if np.isfinite(ci) else
                   "from one seed, without an interval")
        ref = tok[(tok["config"] == row.config) & (tok["pos"] == row.pos)
                  & (tok["tokens"] == "action")]
        base = float(ref["val_action_loss_mean"].iloc[0]) if len(ref) else math.nan
        seeds = stated_n(d, ci, getattr(row, "diff_vs_action_per_seed", ""))
        out.append(
            f"State tokens ({row.tokens}, pos={row.pos}{where}) change the action tokens' "
            f"validation loss by {seeds}, over {int(row.pairs)} paired seed(s) "
            f"({verdict}): {row.val_action_loss_mean:.4f} vs {base:.4f} with action tokens "
            f"alone, {row.above_noise_floor:.4f} and {base - NOISE_FLOOR:.4f} above the "
            f"noise floor ln 5 = {NOISE_FLOOR:.3f}.")
    return out


def _tokenizers(tok, reference="uniform") -> list[str]:
    """Runs on continuous actions (causal mask where the sweep varied it): each tokenizer's
    greedy action error against ``reference``'s, paired by seed, and every row's error above
    its round-trip floor. Never the cross-entropy, which does not compare across tokenizers."""
    if tok.empty:
        return []
    if "mask" in tok and (tok["mask"] == "causal").any():
        tok = tok[tok["mask"] == "causal"]
    out = []
    for row in tok[tok["tokenizer"] != reference].itertuples():
        d, ci = getattr(row, f"diff_vs_{reference}"), getattr(row, f"diff_vs_{reference}_ci95")
        if not np.isfinite(d):
            continue
        where = "" if row.config == "default" else f", {row.config}"
        seeds = stated_n(d, ci, getattr(row, f"diff_vs_{reference}_per_seed"),
                         unit="in the data's units", digits=decimals(d, ci))
        ahead = reference if d > 0 else row.tokenizer
        out.append(f"{row.tokenizer.capitalize()} minus {reference} tokenizer, greedy action "
                   f"error on the validation episodes (pos={row.pos}{where}): {seeds}, over "
                   f"{int(row.pairs)} paired seed(s) ({ahead} ahead); the difference is "
                   f"{difference_verdict(d, ci)}.")
    digits = decimals(*tok["round_trip_floor"], *tok["greedy_above_floor_ci95"])
    above = "; ".join(
        f"{r.tokenizer}, pos={r.pos}{'' if r.config == 'default' else f', {r.config}'}: "
        f"{r.greedy_error_mean:.{digits}f} "
        f"({pm(r.greedy_above_floor_mean, r.greedy_above_floor_ci95, digits=digits)} above "
        f"the floor {r.round_trip_floor:.{digits}f})" for r in tok.itertuples())
    out.append(f"Greedy action error (mean absolute, in the data's units) and how far it sits "
               f"above the tokenizer's round-trip floor: {above}.")
    return out


def _kv_cache(kv) -> list[str]:
    """Per configuration, the speed-up at the fixed cell (``tables.fixed_cell``) and its range
    over all cells, of the action-token models where there are any."""
    out = []
    if "tokens" in kv and (kv["tokens"] == "action").any():  # the headline: action tokens
        kv = kv[kv["tokens"] == "action"]
    for config, cells in (kv.groupby("config", sort=True) if not kv.empty else []):
        if not cells["speedup_median"].notna().any():
            continue
        where = "" if config == "default" else f" ({config})"
        row = tables.fixed_cell(cells)
        out.append(
            f"KV cache{where} at batch {int(row['batch_size'])}, {int(row['new_tokens'])} new "
            f"tokens: {row['speedup_median']:.2f}x (per job: median of its pairs; median over "
            f"{int(row['models'])} model(s), {tables.speedup_spread(row)}, the timing "
            f"reproducibility of this host over {_jobs(row)} jobs); "
            f"across all cells the median speed-up ranges {cells['speedup_median'].min():.2f}x-"
            f"{cells['speedup_median'].max():.2f}x. Cached decoding matched the full pass in "
            f"{row['cached_decode_matched']}; without a causal mask the two differ by "
            "construction." + ("" if cells["timed_alone"].all() else
                               " Some timings ran beside other jobs and share their CPU."))
    return out


def _jobs(row) -> str:
    """The number of jobs behind a KV cell ("?" in tables from before the column)."""
    jobs = row.get("jobs") if hasattr(row, "get") else None
    return str(int(jobs)) if jobs is not None and np.isfinite(jobs) else "?"
