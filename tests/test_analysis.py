"""The analysis package on a real smoke sweep (marked slow: it needs the sweep)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import load_metrics, load_runs, load_speed
from analysis.mdx import _table as _mdx_table
from analysis.tables import mean_ci, to_markdown

pytestmark = pytest.mark.slow


def test_median_interval_needs_enough_models():
    from analysis.tables import MIN_BOOTSTRAP, median_ci

    few = median_ci([1.0, 2.0, 3.0, 4.0])
    assert few[0] == 2.5 and np.isnan(few[1]) and np.isnan(few[2])  # the range is no 95% CI
    many = median_ci(np.linspace(1.0, 2.0, 12))
    assert MIN_BOOTSTRAP <= 12 and many[1] < many[0] < many[2]


def test_config_labels_name_the_token_layout():
    from analysis.collect import config_labels

    configs = [{}, {"tokens": {"name": "state_action", "bins": 128}}]
    assert config_labels(configs) == ["tokens=action", "tokens=state_action"]
    assert config_labels(configs, with_tokens=False) == ["default", "default"]


def test_tokenizer_settings_stay_out_of_the_pairing_label():
    from analysis.collect import config_labels, tokenizer_labels

    configs = [{"tokenizer": {"name": "uniform", "bins": 256}},
               {"tokenizer": {"name": "quantile", "bins": 256}},
               {"tokenizer": {"name": "uniform", "bins": 128}}]
    assert config_labels(configs, without=("tokenizer",)) == ["default"] * 3
    assert config_labels(configs)[1] == "tokenizer.bins=256,tokenizer.name=quantile"
    assert tokenizer_labels(configs, ["uniform", "quantile", "uniform"]) == [
        "uniform(tokenizer.bins=256)", "quantile", "uniform(tokenizer.bins=128)"]
    # a tokenizer kept as a key of another group is left out just the same
    nested = [{"tokens": {"name": "action", "tokenizer": t}, "data": {"tokenizer": t}}
              for t in ("uniform", "quantile")]
    assert config_labels(nested, without=("tokenizer",)) == ["default", "default"]


def test_mean_ci_uses_student_t():
    mean, std, half, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(1.0)
    assert half == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    assert mean_ci([5.0])[2] != mean_ci([5.0])[2]  # one seed: no interval (NaN)


def test_collect_gives_tidy_frames(smoke_sweep):
    sweep, _ = smoke_sweep
    runs = load_runs(sweep)
    assert len(runs) == 8 and set(runs["status"]) == {"completed"}
    assert set(runs["pos"]) == {"rope", "sinusoidal"} and set(runs["cache"]) == {"on", "off"}
    metrics = load_metrics(sweep)
    assert {"step", "split", "loss", "pos", "mask", "cache", "seed"} <= set(metrics)
    assert set(metrics["split"]) == {"train", "val", "val_subset"}
    speed = load_speed(sweep)
    assert {"speedup", "cache_on_s", "cache_off_s", "model_key"} <= set(speed)
    assert len(speed) == 8 * 4  # every job timed both sides for each (batch, length) cell


def run_analysis(*args):
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_tables_plots_and_report(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    out = tmp_path / "report"
    proc = run_analysis(sweep, "--out", out)
    assert proc.returncode == 0, proc.stderr
    positional = pd.read_csv(out / "positional.csv")
    assert list(positional["pos"]) == ["rope", "sinusoidal"]
    assert set(positional["config"]) == {"default"}
    assert {"val_loss_mean", "val_loss_std", "val_loss_ci95", "val_ppl_mean", "loss_1x_fresh",
            "loss_2x_beyond", "loss_4x_beyond", "delta_shift_12", "delta_shift_36",
            "diff_vs_rope", "diff_vs_rope_ci95", "pairs", "steps_to_2", "reached"} <= set(positional)
    assert positional.set_index("pos").loc["rope", "diff_vs_rope"] == 0
    audit = pd.read_csv(out / "mask_audit.csv")
    assert set(zip(audit["pos"], audit["mask"])) == {
        (p, m) for p in ("rope", "sinusoidal") for m in ("causal", "none")}
    from analysis.tables import AUDIT_FIGURES

    summary = json.loads(next(sweep.glob("*/summary.json")).read_text())
    assert set(summary["mask_audit"]) == set(AUDIT_FIGURES) <= set(audit)  # one name each
    runs = pd.read_csv(out / "runs.csv", dtype=str, keep_default_na=False)
    # paths relative to where the sweep lies: the sweep folder's name, then the job's
    commits = {f"{sweep.name}/{p.parent.name}": json.loads(p.read_text()).get("git_commit") or ""
               for p in sweep.glob("*/summary.json")}
    assert dict(zip(runs["path"], runs["git_commit"])) == commits  # which code made each row
    assert set(runs["sweep"]) == {sweep.name}
    assert all(str(sweep) not in text for text in runs["overrides"])
    assert "data.cache_dir=../datasets" in runs["overrides"].iloc[0]
    assert (audit[audit["mask"] == "causal"]["leakage"] < 1e-4).all()
    kv = pd.read_csv(out / "kv_cache.csv")
    assert set(zip(kv["batch_size"], kv["new_tokens"])) == {(1, 4), (1, 8), (2, 4), (2, 8)}
    assert kv["cached_decode_matched"].iloc[0] == "2/2 causal models"  # each model once
    assert (kv["models"] == 4).all()  # 8 jobs, 4 trained models
    # the median over models of each model's own paired ratio, from the summaries themselves
    per_model = {}
    for path in sweep.glob("*/summary.json"):
        s = json.loads(path.read_text())
        row = next(r for r in s["kv_cache"]["speed"] if (r["batch_size"], r["new_tokens"]) == (1, 8))
        per_model.setdefault(s["model_key"], []).append(row["speedup"])
    expected = float(np.median([np.median(v) for v in per_model.values()]))
    cell = kv.set_index(["batch_size", "new_tokens"]).loc[(1, 8)]
    assert cell["speedup_median"] == pytest.approx(expected)
    assert np.isnan(cell["speedup_ci95_low"])  # 4 models: no bootstrap interval, the range
    assert cell["speedup_min"] <= cell["speedup_median"] <= cell["speedup_max"]
    for name in ("positional", "mask_audit", "kv_cache"):
        assert (out / f"{name}.md").read_text().startswith("| ")
    for png in ("loss_by_pos.png", "loss_by_mask.png", "attention_grid.png", "kv_cache_speed.png",
                "position_shift.png"):
        assert (out / png).stat().st_size > 5000, png
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "Sinusoidal minus RoPE" in report
    assert "![Validation loss by mask: teacher-forced vs prefix-only](loss_by_mask.png)" in report
    assert "All jobs completed." in report
    # the sweep did not vary the token layout: no section and no figure comparing layouts
    assert "## Token layouts" not in report and not (out / "tokens.png").exists()


def test_report_made_again_from_its_tables_alone(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    first = tmp_path / "first"
    assert run_analysis(sweep, "--out", first).returncode == 0
    copy = tmp_path / "published"  # what a repository keeps: the report folder, no sweep
    shutil.copytree(first, copy)
    proc = run_analysis("--from-tables", copy)
    assert proc.returncode == 0, proc.stderr
    again_dir = copy / "regenerated"  # the published report itself is left as it was
    assert (copy / "report.md").read_bytes() == (first / "report.md").read_bytes()
    for name in ("positional.csv", "mask_audit.csv", "kv_cache.csv", "tokens.csv"):
        again, before = pd.read_csv(again_dir / name), pd.read_csv(first / name)
        pd.testing.assert_frame_equal(again, before, check_dtype=False)
    report = (again_dir / "report.md").read_text()
    assert "## Findings" in report and "Sinusoidal minus RoPE" in report
    assert (again_dir / "loss_by_pos.png").stat().st_size > 5000  # drawn again, from the tables
    runs = pd.read_csv(copy / "runs.csv")
    runs["job"] = [str(i) for i in range(len(runs))]  # numbered job folders (older sweeps)
    runs.to_csv(copy / "runs.csv", index=False)
    speed = pd.read_csv(copy / "speed.csv")
    speed["job"] = [str(dict(zip(pd.read_csv(first / "runs.csv")["job"], runs["job"]))[j])
                    for j in speed["job"]]
    speed.to_csv(copy / "speed.csv", index=False)
    assert run_analysis("--from-tables", copy, "--out", tmp_path / "numbered").returncode == 0
    bad = run_analysis("--from-tables", tmp_path)  # a folder that is not a report
    assert bad.returncode == 2 and "lacks runs.csv" in bad.stderr
    both = run_analysis(sweep, "--from-tables", copy)  # a merge of parts needs --out
    assert both.returncode == 2 and "--out" in both.stderr
    twice = run_analysis(sweep, "--from-tables", first, "--out", tmp_path / "twice")
    assert twice.returncode == 2 and "in two parts" in twice.stderr  # the same jobs again


def _as_part(sweep, dest, seed, precision=None):
    """A copy of ``sweep`` standing in for another part of a study: its jobs' seed set to
    ``seed`` (models keyed by it) and, with ``precision``, trained in another precision."""
    shutil.copytree(sweep, dest, ignore=shutil.ignore_patterns("models", "checkpoints"))
    for path in dest.glob("*/summary.json"):
        s = json.loads(path.read_text())
        s["seed"] = seed
        s["model_key"] = s["model_key"].replace("-seed", f"-part{seed}-seed")
        if precision:
            s["training_config"]["train"]["precision"] = precision
        path.write_text(json.dumps(s))
    return dest


def test_parts_merge_from_committed_tables(smoke_sweep, tmp_path):
    """A study run in parts on machines that keep nothing: an earlier part survives only as
    its committed tables, the new part as a sweep folder; the merged report pairs their seeds,
    and never pools rows trained in another precision."""
    sweep, _ = smoke_sweep
    part1 = tmp_path / "part1"  # the committed tables of part 1
    assert run_analysis(sweep, "--out", part1).returncode == 0
    one = pd.read_csv(part1 / "positional.csv").set_index("pos")
    assert set(one["seeds"]) == {1}
    part2 = _as_part(sweep, tmp_path / "part2", seed=2)
    merged = tmp_path / "merged"
    proc = run_analysis("--from-tables", part1, part2, "--out", merged)
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(merged / "runs.csv")
    base = int(pd.read_csv(part1 / "runs.csv")["seed"].iloc[0])  # the smoke sweep's seed
    assert len(runs) == 16 and set(runs["seed"]) == {base, 2}
    assert set(runs["config"]) == {"default"}
    pos = pd.read_csv(merged / "positional.csv").set_index("pos")
    assert list(pos["seeds"]) == [2, 2] and pos.loc["sinusoidal", "pairs"] == 2
    # part 2 repeats part 1's numbers, so the pair mean is part 1's single difference
    assert pos.loc["sinusoidal", "diff_vs_rope"] == pytest.approx(
        one.loc["sinusoidal", "diff_vs_rope"])
    assert pos.loc["sinusoidal", "val_loss_std"] == pytest.approx(0, abs=1e-12)
    metrics = pd.read_csv(merged / "metrics.csv")
    assert set(metrics["sweep"]) == {sweep.name, part2.name}
    assert (pd.read_csv(merged / "kv_cache.csv")["models"] == 8).all()
    # a third part trained in another precision (another host): labelled apart, never pooled
    other = "bf16" if json.loads(next(sweep.glob("*/summary.json")).read_text())[
        "training_config"]["train"]["precision"] == "fp32" else "fp32"
    part3 = _as_part(sweep, tmp_path / "part3", seed=3, precision=other)
    again = tmp_path / "merged3"
    twice = run_analysis("--from-tables", merged, "--from-tables", part1, "--out", again)
    assert twice.returncode == 2 and "in two parts" in twice.stderr  # part 1 is in both
    proc = run_analysis("--from-tables", part1, part2, part3, "--out", again)
    assert proc.returncode == 0, proc.stderr
    pos = pd.read_csv(again / "positional.csv")
    assert sorted(pos["config"].unique()) == sorted(
        [f"train.precision={p}" for p in ("fp32", "bf16")])
    seeds = pos.groupby("config")["seeds"].max().to_dict()
    assert seeds == {f"train.precision={other}": 1,
                     f"train.precision={'bf16' if other == 'fp32' else 'fp32'}": 2}
    runs = pd.read_csv(again / "runs.csv")
    for name in ("metrics.csv", "speed.csv"):  # every record carries its run's new labels
        frame = pd.read_csv(again / name)
        labels = [c for c in ("config", "pos", "tokens") if c in frame]
        assert "pos" in labels and (name == "speed.csv" or "config" in labels)
        frame = frame.merge(runs[["sweep", "job", *labels]], on=["sweep", "job"],
                            suffixes=("", "_run"))
        assert len(frame) and frame[labels].notna().all().all()
        for col in labels:
            assert (frame[col] == frame[f"{col}_run"]).all(), (name, col)
    kv = pd.read_csv(again / "kv_cache.csv")  # timings of unlike models are never pooled
    first = "bf16" if other == "fp32" else "fp32"
    assert kv.groupby("config")["models"].max().to_dict() == {
        f"train.precision={other}": 4, f"train.precision={first}": 8}
    assert "Made from the data files of the report folder(s)" in (again / "report.md").read_text()
    # another machine ran its part into the same sweep path: other jobs, kept apart, not refused
    tables3 = tmp_path / "tables3"
    assert run_analysis(part3, "--out", tables3).returncode == 0
    for name in ("runs.csv", "metrics.csv", "speed.csv"):
        frame = pd.read_csv(tables3 / name)
        frame["sweep"] = str(sweep)
        frame.to_csv(tables3 / name, index=False)
    (tables3 / "speed.csv").write_text("")  # and timed nothing; nor did part 1's copy below
    same_path = tmp_path / "same_path"
    untimed = tmp_path / "untimed"
    shutil.copytree(part1, untimed)
    (untimed / "speed.csv").write_text("")
    proc = run_analysis("--from-tables", untimed, "--from-tables", tables3, "--out", same_path)
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(same_path / "runs.csv")
    assert len(runs) == 16 and runs["sweep"].nunique() == 2
    assert pd.read_csv(same_path / "positional.csv")["seeds"].tolist() == [1, 1, 1, 1]
    assert pd.read_csv(same_path / "kv_cache.csv").empty
    inside = run_analysis("--from-tables", part1, part2, "--out", part1)  # over its input
    assert inside.returncode == 2 and "being read" in inside.stderr
    # tables from before the training_config column: alone they still make their report,
    # merged they are refused (their labels cannot be made comparable)
    old = tmp_path / "old"
    shutil.copytree(part1, old)
    pd.read_csv(old / "runs.csv").drop(columns=["training_config"]).to_csv(
        old / "runs.csv", index=False)
    assert run_analysis("--from-tables", old).returncode == 0
    for name in ("positional.csv", "mask_audit.csv", "kv_cache.csv"):  # the same report
        pd.testing.assert_frame_equal(pd.read_csv(old / "regenerated" / name),
                                      pd.read_csv(part1 / name), check_dtype=False)
    refused = run_analysis("--from-tables", old, part2, "--out", tmp_path / "refused")
    assert refused.returncode == 2 and "training_config" in refused.stderr


def test_default_out_dir_and_bad_folder(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("models", "checkpoints"))
    assert run_analysis(copy).returncode == 0
    assert (copy / "report" / "report.md").exists()
    bad = run_analysis(tmp_path / "missing")
    assert bad.returncode == 2 and bad.stderr.startswith("error: no such sweep folder")


def test_crashed_and_running_jobs_are_listed(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("models", "checkpoints"))
    jobs = sorted(p.parent for p in copy.glob("*/.hydra"))
    shutil.copytree(jobs[0] / ".hydra", copy / "8" / ".hydra")  # crashed before a summary
    shutil.copytree(jobs[1] / ".hydra", copy / "9" / ".hydra")
    running = json.loads((jobs[1] / "summary.json").read_text())
    running.update(status="running", pid=os.getpid(), host=os.uname().nodename)
    (copy / "9" / "summary.json").write_text(json.dumps(running))
    dead = dict(running, pid=2**22 + 12345)  # a pid that does not exist: crashed mid-run
    shutil.copytree(jobs[2] / ".hydra", copy / "10" / ".hydra")
    (copy / "10" / "summary.json").write_text(json.dumps(dead))
    (copy / "11").mkdir()
    (copy / "11" / ".hydra").mkdir()  # a job with a broken config folder
    (copy / "11" / "summary.json").write_text("{not json")
    proc = run_analysis(copy, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    status = pd.read_csv(tmp_path / "out" / "status.csv").set_index("job")["status"].to_dict()
    assert status == {8: "missing", 9: "running", 10: "crashed", 11: "missing"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "job 8 (missing)" in report and "job 9 (running)" in report
    assert "job 10 (crashed)" in report
    assert len(pd.read_csv(tmp_path / "out" / "positional.csv")) == 2  # still analysed


def test_running_job_is_labelled_by_its_resolved_config(smoke_sweep, tmp_path):
    """A job still running has no training config in its summary yet: its label comes from the
    binding it wrote at start (train.precision resolved), not from Hydra's "auto", so the
    completed jobs' labels do not change while a sweep is under way."""
    from analysis.collect import load_runs

    sweep, _ = smoke_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("models", "checkpoints"))
    job = sorted(p.parent for p in copy.glob("*/.hydra"))[0]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["training_config"]["train"]["precision"] in ("fp32", "bf16")  # resolved
    # a smoke run is too short for compile=auto on a CPU; on CUDA auto compiles any run
    assert summary["compiled"] is summary["device"].startswith("cuda")
    assert "precision: auto" in (job / ".hydra" / "config.yaml").read_text()  # Hydra's, unresolved
    binding = json.loads((job / "training_config.json").read_text())
    binding["training"]["seed"] = 7  # the seed is never part of the label
    (job / "training_config.json").write_text(json.dumps(binding))
    (job / "summary.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                  "host": os.uname().nodename}))
    runs = load_runs(copy)
    assert runs["config"].unique().tolist() == ["default"], runs[["job", "config"]]
    assert (runs.set_index("job").loc[job.name, "status"]) == "running"
    # unreadable: Hydra's file it is, unresolved (and without what only a run records, e.g.
    # train.muon_newton_schulz on a host without native bf16), so labelled apart
    (job / "training_config.json").write_text("{not json")
    labels = load_runs(copy).set_index("job")["config"]
    assert "train.precision=auto" in labels[job.name]
    assert all("train.precision=auto" not in v for k, v in labels.items() if k != job.name)
    (job / "training_config.json").write_text('["a list"]')
    assert "train.precision=auto" in load_runs(copy).set_index("job")["config"][job.name]


def test_to_markdown_formats():
    df = pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x", None]})
    assert to_markdown(df).splitlines() == ["| a | b |", "|---|---|", "| 1.2346 | x |",
                                            "| – | – |"]
    # a job's 21,348 s once printed as 2e+04 in a one-decimal table
    times = pd.DataFrame({"train_time_s": [5493.84, 21348.2, 123456789.0]})
    assert to_markdown(times, digits=1).splitlines()[2:] == ["| 5493.8 |", "| 21348 |",
                                                             "| 123456789 |"]
    assert _mdx_table(times, ["train_time_s"]).splitlines()[2:] == [
        "| 5493.8400 |", "| 21348 |", "| 123456789 |"]  # the course page's tables alike
    # ... which say n/a for a missing value and escape text that MDX would read as code
    assert _mdx_table(df, ["a", "b"]).splitlines()[2:] == ["| 1.2346 | x |", "| n/a | n/a |"]
    assert _mdx_table(pd.DataFrame({"b": ["{x}<y>"]}), ["b"]).splitlines()[2] == "| \\{x\\}&lt;y&gt; |"


def test_student_t_interval_uses_the_exact_quantile():
    from analysis.tables import mean_ci, t95

    mean, std, half, n = mean_ci([1.0, 2.0, 4.0])
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert half == pytest.approx(4.302652729749462 * std / 3 ** 0.5, rel=1e-12)  # t(0.975, 2)
    assert t95(33) == pytest.approx(2.036933343460101, rel=1e-12)  # not the normal's 1.96
    assert t95(1) != t95(1)  # one value: no interval


def test_stated_n_gives_n_df_the_seeds_and_a_sign_count():
    from analysis.common import sign_count, stated_n

    assert sign_count([-0.1, -0.2, 0.3], -0.1) == "2 of 3 seeds"
    assert sign_count([-0.1, -0.2, 0.3], 0.1) == "1 of 3 seeds"
    text = stated_n(-0.0031, 0.0011, "1: -0.00265; 2: -0.00335; 3: -0.00341")
    assert text == ("-0.0031 ± 0.0011 nats (95% Student-t interval over n = 3 paired seeds, "
                    "df = 2; per seed -0.00265, -0.00335, -0.00341; 3 of 3 seeds below zero)")
    five = "; ".join(f"{s}: {v}" for s, v in enumerate([0.1, 0.2, -0.1, 0.3, 0.2], 1))
    assert "seeds above zero" not in stated_n(0.14, 0.1, five)  # n >= 5: no sign count
    assert "df = 4" in stated_n(0.14, 0.1, five)


ABSOLUTE = re.compile(r"(^|[\s=,\"'`(\[:])/(work|root|home|tmp|Users)/")


def test_no_absolute_path_in_the_published_results():
    """A results folder reads the same on any machine: runs.csv's sweep and path, overrides,
    reports and READMEs name folders relative to the sweep, or by placeholders (SWEEP)."""
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    found = []
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".md", ".txt", ".json", ".yaml"):
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if ABSOLUTE.search(line):
                    found.append(f"{path.relative_to(results)}:{n}: {line[:80]}")
    assert not found, "\n".join(found[:10])


# --- the tokenizer table: runs on continuous actions (summary.json's action_error) ---------

SEED_EFFECT = {1: 0.0, 2: 0.05, 3: -0.03}  # shared by both tokenizers: pairing removes it
GREEDY = {("uniform", "rope"): 0.20, ("quantile", "rope"): 0.17,
          ("uniform", "sinusoidal"): 0.22, ("quantile", "sinusoidal"): 0.21}


def greedy_error(tokenizer, pos, mask, seed) -> float:
    """The fixture's greedy action error: a seed effect common to both tokenizers, and for
    quantile a small per-seed part of its own (the paired differences' spread)."""
    own = 0.001 * seed if tokenizer == "quantile" else 0.0
    return GREEDY[tokenizer, pos] + (0.1 if mask == "none" else 0.0) + SEED_EFFECT[seed] + own


def round_trip(tokenizer, seed) -> float:
    return 0.010 if tokenizer == "uniform" else 0.008 + 0.0005 * seed


def tokenizer_sweep(smoke_sweep, root: Path) -> Path:
    """Sweeps on continuous actions, made of the smoke sweep's real job folders (cache=on
    jobs): each summary gains what a run on LeRobot data writes (``data``, ``tokenizer``,
    ``action_error``), for 2 tokenizers x 3 seeds, with the errors of ``greedy_error``."""
    sweep, _ = smoke_sweep
    for tokenizer in ("uniform", "quantile"):
        for seed in (1, 2, 3):
            dest = root / f"{tokenizer}-seed{seed}"
            shutil.copytree(sweep, dest, ignore=shutil.ignore_patterns(
                "models", "checkpoints", "*cache=off*", "sweep_jobs.json"))
            for path in dest.glob("*/summary.json"):
                s = json.loads(path.read_text())
                greedy = greedy_error(tokenizer, s["pos"], s["mask"], seed)
                floor = round_trip(tokenizer, seed)
                s.update(seed=seed, data="lerobot", tokenizer=tokenizer,
                         model_key=f"{s['model_key']}-{tokenizer}-seed{seed}",
                         axes={**s["axes"], "seed": seed, "tokenizer": tokenizer})
                s["training_config"]["tokenizer"] = {"name": tokenizer, "bins": 256}
                s["action_error"] = {
                    "greedy": {"mean": greedy, "per_dim": [greedy * 0.5, greedy * 1.5]},
                    "expected": {"mean": greedy - 0.02,
                                 "per_dim": [greedy * 0.5 - 0.01, greedy * 1.5 - 0.03]},
                    "round_trip": {"mean": floor, "per_dim": [floor, floor]},
                    "dims": ["x", "y"], "episodes": 5, "steps": 120}
                path.write_text(json.dumps(s))
    return root


def t_half(values) -> float:
    """The 95% Student-t half-width of the mean of ``values``, by hand."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    return stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5


def test_tokenizer_table_from_the_summaries_action_error(smoke_sweep, tmp_path):
    sweeps = tokenizer_sweep(smoke_sweep, tmp_path / "sweeps")
    out = tmp_path / "report"
    proc = run_analysis(sweeps, "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "tokenizer.csv")
    assert len(table) == 2 * 2 * 2  # tokenizer x pos x mask (the sweep varied the mask)
    assert set(table["config"]) == {"default"}  # the tokenizer is a column, not a config
    assert (table["seeds"] == 3).all()
    row = table.set_index(["tokenizer", "pos", "mask"]).loc[("quantile", "rope", "causal")]
    greedy = [greedy_error("quantile", "rope", "causal", s) for s in (1, 2, 3)]
    floors = [round_trip("quantile", s) for s in (1, 2, 3)]
    assert row["greedy_error_mean"] == pytest.approx(np.mean(greedy))
    assert row["greedy_error_ci95"] == pytest.approx(t_half(greedy))  # spread by the seeds
    assert row["expected_error_mean"] == pytest.approx(np.mean(greedy) - 0.02)
    assert row["round_trip_floor"] == pytest.approx(np.mean(floors))
    above = [g - f for g, f in zip(greedy, floors)]  # per seed, within each run
    assert row["greedy_above_floor_mean"] == pytest.approx(np.mean(above))
    assert row["greedy_above_floor_ci95"] == pytest.approx(t_half(above))
    # paired by seed: the seed effect cancels, leaving -0.03 + 0.001 * seed
    diffs = [g - greedy_error("uniform", "rope", "causal", s) for g, s in zip(greedy, (1, 2, 3))]
    assert row["diff_vs_uniform"] == pytest.approx(-0.028)
    assert row["diff_vs_uniform_ci95"] == pytest.approx(t_half(diffs))
    assert row["diff_vs_uniform_ci95"] < 0.01 < t_half(greedy)  # unpaired, it would be wide
    assert row["pairs"] == 3
    assert row["diff_vs_uniform_per_seed"] == "1: -0.029; 2: -0.028; 3: -0.027"
    reference = table.set_index(["tokenizer", "pos", "mask"]).loc[("uniform", "rope", "causal")]
    assert np.isnan(reference["diff_vs_uniform"]) and np.isnan(reference["pairs"])
    runs = pd.read_csv(out / "runs.csv")
    losses = runs[(runs["tokenizer"] == "quantile") & (runs["pos"] == "rope")
                  & (runs["mask"] == "causal")].sort_values("seed")["val_action_loss"]
    assert row["val_loss_mean"] == pytest.approx(losses.mean())
    assert json.loads(runs["action_error_dims"].iloc[0]) == ["x", "y"]
    assert (out / "tokenizer.md").read_text().startswith("| config | tokenizer | pos | mask |")
    assert (out / "tokenizer.png").stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "## Action tokenizers (continuous actions)" in report
    assert "Cross-entropy is not comparable across tokenizers" in report
    assert "![Action error by tokenizer](tokenizer.png)" in report
    assert ("Quantile minus uniform tokenizer, greedy action error on the validation episodes "
            "(pos=rope): -0.0280 ± ") in report
    # made again from the report's own data files: the same table
    again = run_analysis("--from-tables", out, "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "tokenizer.csv"), table)


def test_tokenizer_table_pairs_only_seeds_on_both_sides(smoke_sweep, tmp_path):
    from analysis.collect import load_runs
    from analysis.tables import tokenizers

    sweeps = tokenizer_sweep(smoke_sweep, tmp_path / "sweeps")
    shutil.rmtree(sweeps / "uniform-seed3")  # uniform lacks seed 3: two pairs remain
    table = tokenizers(load_runs(sweeps)).set_index(["tokenizer", "pos", "mask"])
    row = table.loc[("quantile", "sinusoidal", "causal")]
    assert row["seeds"] == 3 and row["pairs"] == 2
    assert row["diff_vs_uniform"] == pytest.approx(-0.01 + 0.0015)  # seeds 1 and 2 only
    assert row["diff_vs_uniform_ci95"] == pytest.approx(t_half([-0.009, -0.008]))
    assert table.loc[("uniform", "rope", "none"), "seeds"] == 2


def test_course_sweeps_get_no_tokenizer_table(smoke_sweep, tmp_path):
    from analysis.collect import load_runs
    from analysis.tables import tokenizers

    sweep, _ = smoke_sweep
    runs = load_runs(sweep)
    assert not any(c.startswith("action_error") or c == "tokenizer" for c in runs)
    assert tokenizers(runs).empty
    out = tmp_path / "report"
    (out).mkdir()
    (out / "tokenizer.csv").write_text("left from an earlier report\n")
    assert run_analysis(sweep, "--out", out).returncode == 0
    assert not any((out / f"tokenizer.{ext}").exists() for ext in ("csv", "md", "png"))
    assert "tokenizer" not in (out / "report.md").read_text().lower()


def test_small_action_errors_keep_their_digits():
    """Errors in a dataset's own units can be 1e-4 (the arm's joint changes): the findings
    show two significant digits of them, never 0.0000."""
    from analysis.common import decimals
    from analysis.findings import _tokenizers

    assert decimals(0.0003) == 5 and decimals(0.5, 120.0) == 4 and decimals(0.0, float("nan")) == 4
    tok = pd.DataFrame([
        {"config": "default", "tokenizer": "quantile", "pos": "rope", "greedy_error_mean": 0.00123,
         "round_trip_floor": 0.00021, "greedy_above_floor_mean": 0.00102,
         "greedy_above_floor_ci95": 0.00004, "diff_vs_uniform": -0.00011,
         "diff_vs_uniform_ci95": 0.00003, "pairs": 3,
         "diff_vs_uniform_per_seed": "1: -0.0001; 2: -0.00012; 3: -0.00011"},
        {"config": "default", "tokenizer": "uniform", "pos": "rope", "greedy_error_mean": 0.00134,
         "round_trip_floor": 0.00033, "greedy_above_floor_mean": 0.00101,
         "greedy_above_floor_ci95": 0.00005, "diff_vs_uniform": np.nan,
         "diff_vs_uniform_ci95": np.nan, "pairs": np.nan, "diff_vs_uniform_per_seed": ""}])
    diff, above = _tokenizers(tok)
    assert "-0.000110 ± 0.000030 in the data's units" in diff and "quantile ahead" in diff
    assert "uniform, pos=rope: 0.001340 (0.001010 ± 0.000050 above the floor 0.000330)" in above


def test_the_published_study_regenerates_without_a_tokenizer_table(tmp_path):
    """The course's data has no action error: a published report made again from its tables
    gets no tokenizer table, section or figure, and its data files come back byte for byte."""
    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "2026-11-29"
    out = tmp_path / "again"
    proc = run_analysis("--from-tables", published, "--out", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("runs.csv", "metrics.csv", "speed.csv"):
        assert (out / name).read_bytes() == (published / name).read_bytes(), name
    assert not any(out.glob("tokenizer.*"))
    assert "tokenizer" not in (out / "report.md").read_text().lower()


def test_the_tokenizer_tables_pairs_are_counts():
    import pandas as pd

    from analysis import tables

    tok = pd.DataFrame({"tokenizer": ["quantile", "uniform"], "round_trip_floor": [2e-4, 3e-4],
                        "pairs": [3.0, float("nan")]})
    rows = tables.tokenizer_markdown(tok).splitlines()[2:]
    assert rows[0].endswith("| 3 |") and rows[1].endswith("| – |")
