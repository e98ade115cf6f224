"""hparams_search=recipe: an Optuna search over the recipe whose study resumes from its file."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, SMOKE, run_cli

pytestmark = pytest.mark.slow


def trials(db):
    import optuna

    study = optuna.load_study(study_name="recipe", storage=f"sqlite:///{db}")
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_recipe_search_minimises_val_loss_and_resumes(tmp_path):
    sweep = tmp_path / "search"
    args = ["hparams_search=recipe", *SMOKE, "hydra.sweeper.n_trials=2",
            "train.warmup_steps=choice(2,3)", "train.steps=choice(12,16)",
            "train.batch_size=choice(8,16)", f"hydra.sweep.dir={sweep}",
            f"data.cache_dir={tmp_path / 'ds'}"]
    run_cli(args, cwd=tmp_path)  # a sweep by itself: no -m
    first = trials(sweep / "optuna.db")
    assert len(first) == 2
    # every trial's value is its job's final validation loss
    losses = sorted(json.loads(p.read_text())["val_loss"] for p in sweep.glob("*/summary.json"))
    assert sorted(t.value for t in first) == pytest.approx(losses)
    for t in first:
        assert t.params["train.steps"] in (12, 16) and 1e-3 <= t.params["train.lr"] <= 1e-2
        assert t.params["train.schedule"] in ("cosine", "wsd")  # the preset's own space
    run_cli([*args[:2], "hydra.sweeper.n_trials=1", *args[3:]], cwd=tmp_path)
    assert len(trials(sweep / "optuna.db")) == 3  # the same study, continued
    # with new parameters: a resumed search does not draw the first launch's trials again
    resumed = trials(sweep / "optuna.db")[-1]
    assert all(resumed.params != t.params for t in first)
    # benchmarks/recipe_trials.py ranks them and finds the best trial's curve
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe_trials.py"),
                          str(sweep), "--csv", str(tmp_path / "trials.csv")],
                         capture_output=True, text=True, check=True).stdout
    best = min(trials(sweep / "optuna.db"), key=lambda t: t.value)
    assert "3 complete of 3 trials" in out
    assert f"best: trial {best.number}, val loss {best.value:.4f}, folder " in out
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("  step ")]
    assert steps and steps[-1] == str(best.params["train.steps"])
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].startswith(f"1,{best.number},COMPLETE,")
