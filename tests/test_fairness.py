"""Fair comparisons: equal footing at initialisation, position shift, paired timing, the data
each seed trains on, and the analysis keyed by training configuration (fast: no subprocess)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_model import SMALL, small_model

from analysis import load_runs
from analysis.report import build_report
from analysis.tables import censored_median, kv_cache, median_ci, positional, steps_to_reach
from conftest import compose_cfg
from vla_ablate import evaluate
from vla_ablate.data import generate_dataset, save_dataset
from vla_ablate.model import POSITIONAL_ENCODINGS, DecoderOnlyTransformer
from vla_ablate.model.positions import PositionalEncoding
from vla_ablate.pipeline import load_data
from vla_ablate.training.losses import token_losses
from vla_ablate.training.schedule import BatchSource

CPU = torch.device("cpu")
ADDITIVE = [name for name, cls in sorted(POSITIONAL_ENCODINGS.items())
            if cls.add_to_embedding is not PositionalEncoding.add_to_embedding]


def first_block_input(model, tokens, positions):
    with torch.no_grad():
        return model.pos_encoding.add_to_embedding(model.token_embedding(tokens), positions)


@pytest.mark.parametrize("pos", ADDITIVE)
@pytest.mark.parametrize("dim", [32, 256])
def test_moving_a_token_weighs_like_swapping_it_at_initialisation(pos, dim):
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(256, dim, 1, 4, 2 * dim, 200, 0.0, pos=pos)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (4000,), generator=gen)
    others = (tokens + torch.randint(1, 256, (4000,), generator=gen)) % 256
    where = torch.randint(0, 199, (4000,), generator=gen)
    base = first_block_input(model, tokens, where)
    moved = (first_block_input(model, tokens, where + 1) - base).pow(2).mean().sqrt()
    swapped = (first_block_input(model, others, where) - base).pow(2).mean().sqrt()
    # measured 0.994-1.017 over seeds 0-2; an amplitude without its sqrt(2) gives 0.71
    assert 0.9 < (moved / swapped).item() < 1.1


def test_unit_sinusoidal_table_is_the_handicap_the_test_catches():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(pos="sinusoidal", pos_amplitude=1.0)
    tokens = torch.randint(0, 256, (2000,))
    where = torch.randint(0, 199, (2000,))
    base = first_block_input(model, tokens, where)
    moved = (first_block_input(model, tokens, where + 1) - base).pow(2).mean().sqrt()
    swapped = (first_block_input(model, (tokens + 1) % 256, where) - base).pow(2).mean().sqrt()
    assert (moved / swapped).item() > 3


# ------------------------------------------------------------------ position shift


@pytest.fixture(scope="module")
def val_actions():
    return generate_dataset(6, 16, seed=0)["actions"]


@pytest.mark.parametrize("pos", ["rope", "alibi", "none"])
def test_position_shift_leaves_relative_encodings_unchanged(pos, val_actions):
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**SMALL, pos=pos).eval()
    out = evaluate.position_shift(model, val_actions, [10, 40], CPU)
    assert out["loss_shift_0"] == pytest.approx(token_losses(model, val_actions, CPU).mean().item(),
                                                abs=1e-5)
    assert abs(out["delta_shift_10"]) < 1e-5 and abs(out["delta_shift_40"]) < 1e-5


@pytest.mark.parametrize("pos", ["sinusoidal", "learned"])
def test_position_shift_moves_absolute_encodings(pos, val_actions):
    out = evaluate.position_shift(small_model(pos), val_actions, [40], CPU)
    assert abs(out["delta_shift_40"]) > 1e-3


def test_extrapolation_scores_only_the_unseen_positions():
    model = small_model("sinusoidal")
    out = evaluate.extrapolation(model, 0, 8, [2], 4, CPU)
    assert set(out) == {"loss_1x", "loss_2x_beyond"}
    from vla_ablate.data import derived_seed

    long = generate_dataset(4, 16, derived_seed(0, "extrapolation", 2), progress=False)["actions"]
    losses = token_losses(model, long, CPU)
    assert out["loss_2x_beyond"] == pytest.approx(losses[:, 7:].mean().item(), abs=1e-6)
    assert out["loss_2x_beyond"] != pytest.approx(losses.mean().item(), abs=1e-4)


def test_mask_audit_names_are_the_same_everywhere(val_actions):
    audit = evaluate.mask_audit(small_model(causal=False), val_actions, val_actions, CPU, 4)
    from analysis.tables import AUDIT_FIGURES

    assert set(audit) == set(AUDIT_FIGURES)


# ------------------------------------------------------------------ paired timing


def test_kv_speed_times_balanced_pairs_after_an_untimed_warm_up(monkeypatch, val_actions):
    """A fake clock: each generate call takes the seconds listed for its side, in call order;
    the first call of each side (the warm-up) is cold and slow and must not be timed, nor the
    untimed run (50 s) before a pair's second side."""
    model = small_model()
    now, calls = [0.0], []
    cost = {True: [100.0, 1.0, 50.0, 2.0, 1.0, 50.0, 1.0],
            False: [100.0, 50.0, 3.0, 10.0, 50.0, 5.0, 4.0]}

    def fake_generate(x, n, top_k=None, use_cache=None, **rollout):
        calls.append((n, use_cache))
        now[0] += cost[use_cache].pop(0)
        return x

    monkeypatch.setattr(model, "generate", fake_generate)
    (row,) = evaluate.paired_generation_speed(model, val_actions[:, :4], [2], [5], 4, CPU,
                                              clock=lambda: now[0])
    # warm-up at the cell's own length (the cached side last), then on-off, off-on, on-off,
    # off-on (ABBA), each pair's second side after an untimed run of its own: every timed run
    # follows a run of its own side
    on, off = True, False
    assert calls == [(5, c) for c in (off, on, on, off, off, off, on, on, on, off, off,
                                      off, on, on)]
    assert [p["order"] for p in row["pairs"]] == ["on-off", "off-on", "on-off", "off-on"]
    assert [(p["cache_on_s"], p["cache_off_s"]) for p in row["pairs"]] == [
        (1.0, 3.0), (2.0, 10.0), (1.0, 5.0), (1.0, 4.0)]
    assert row["speedup"] == 4.5  # the median of the pairs' off/on ratios 3, 5, 5, 4
    assert (row["speedup_min"], row["speedup_max"]) == (3.0, 5.0)
    assert (row["cache_on_s"], row["cache_off_s"]) == (1.0, 4.5)
    assert row["tokens_per_s_cache_on"] == 10.0 and row["repeats"] == 4


def test_greedy_decodes_parting_at_a_near_tie_match_and_at_a_wrong_token_do_not(monkeypatch):
    """A cached decode that picks the full pass's runner-up where the two logits lie within the
    tolerance is a rounding tie; one that picks a token far below the best is an error."""
    model = small_model()
    torch.manual_seed(1)
    prompts = torch.randint(0, 256, (3, 4))
    plain = model.generate(prompts, 10, top_k=1, use_cache=False)
    with torch.no_grad():
        full = model(plain)[0]
    row, pos = 1, 9  # a sampled slot of row 1
    ranked = full[row, pos - 1].argsort(descending=True)
    assert ranked[0] == plain[row, pos]
    real_generate = model.generate

    def cached_picks(token):
        def generate(x, n, **kw):
            out = real_generate(x, n, **kw).clone()
            if kw.get("use_cache"):
                out[row, pos] = token  # the step's pick; the tokens after it are not compared
            return out
        return generate

    gap = (full[row, pos - 1, ranked[0]] - full[row, pos - 1, ranked[1]]).item()
    assert gap > 0
    monkeypatch.setattr(model, "generate", cached_picks(ranked[1]))
    monkeypatch.setitem(evaluate.LOGIT_TOLERANCE, "fp32", 2 * gap)
    tie = evaluate.kv_cache_consistency(model, prompts, 10, CPU)
    assert tie["greedy_tokens_match"] is False and tie["greedy_tie"] is True
    assert tie["matches"] is True
    assert tie["first_difference"]["rows"] == [row]
    assert tie["first_difference"]["position"] == pos
    assert tie["first_difference"]["largest_logit_gap"] == pytest.approx(gap, rel=1e-4)
    monkeypatch.setitem(evaluate.LOGIT_TOLERANCE, "fp32", gap / 2)  # the same gap, beyond it
    beyond = evaluate.kv_cache_consistency(model, prompts, 10, CPU)
    assert beyond["greedy_tie"] is False and beyond["matches"] is False
    monkeypatch.setitem(evaluate.LOGIT_TOLERANCE, "fp32", 1e-3)
    monkeypatch.setattr(model, "generate", cached_picks(ranked[-1]))  # the worst token
    wrong = evaluate.kv_cache_consistency(model, prompts, 10, CPU)
    assert wrong["matches"] is False and wrong["greedy_tie"] is False
    assert wrong["first_difference"]["largest_logit_gap"] > 1e-3


def test_first_greedy_difference_scores_each_rows_first_parting_in_both_passes():
    plain = torch.tensor([[5, 1, 2, 3, 0, 0], [5, 1, 2, 3, 0, 0], [5, 1, 2, 3, 0, 0]])
    cached = plain.clone()
    cached[0, 4], cached[0, 5] = 1, 2  # row 0 parts at 4 (what follows differs too)
    cached[2, 3] = 0  # row 2 parts at 3, earlier
    full = torch.zeros(3, 6, 300)
    full[0, 3, 0], full[0, 3, 1] = 2.0, 1.9  # row 0: the full pass prefers 0 by 0.1
    full[2, 2, 3], full[2, 2, 0] = 1.0, 0.8
    full[:, :, 299] = 50.0  # beyond ``below``: a state token, never sampled
    cached_pass = full.clone()
    cached_pass[0, 3, 1] = 2.3  # the cached pass prefers token 1 by 0.3
    d = evaluate.first_greedy_difference(full, cached_pass, plain, cached, below=256)
    assert d["rows"] == [0, 2] and (d["row"], d["position"]) == (2, 3)
    assert d["largest_logit_gap"] == pytest.approx(0.3)


def test_bf16_generation_model_decodes_like_its_full_pass(val_actions):
    gen = evaluate.generation_model(small_model(), "bf16")
    assert gen.lm_head.weight.dtype == torch.bfloat16
    report = evaluate.kv_cache_consistency(gen, val_actions[:3, :4], 10, CPU)
    assert report["precision"] == "bf16" and report["matches"] is True


# ------------------------------------------------------------------ the data each seed sees


def data_cfg(tmp_path, *over):
    return compose_cfg(["debug=smoke", f"data.cache_dir={tmp_path}", *over])


def test_training_trajectories_vary_with_seed_validation_does_not(tmp_path):
    a_train, a_val, a_fresh = load_data(data_cfg(tmp_path, "seed=1"))
    b_train, b_val, b_fresh = load_data(data_cfg(tmp_path, "seed=2"))
    assert torch.equal(a_val, b_val)
    assert not torch.equal(a_train, b_train)
    assert not torch.equal(a_fresh(1), b_fresh(1)) and not torch.equal(a_fresh(1), a_fresh(2))
    c_train, _, _ = load_data(data_cfg(tmp_path, "seed=1", "data.vary_with_seed=false"))
    d_train, _, _ = load_data(data_cfg(tmp_path, "seed=2", "data.vary_with_seed=false"))
    assert torch.equal(c_train, d_train)


def test_a_data_file_is_used_for_every_epoch(tmp_path, caplog):
    data = generate_dataset(40, 12, seed=5)
    save_dataset(data, tmp_path / "mine.npz")
    cfg = data_cfg(tmp_path, f"data.path={tmp_path / 'mine.npz'}", "train.batch_size=8")
    with caplog.at_level("INFO", logger="vla_ablate"):
        train_actions, val_actions, fresh = load_data(cfg)
    assert fresh is None
    assert "in every epoch" in caplog.text
    batches = BatchSource(train_actions, 8, seed=0, fresh=fresh)
    rows = {tuple(r.tolist()) for r in data["actions"][:36]}
    for step in range(0, 5 * batches.steps_per_epoch):  # five epochs
        assert all(tuple(r.tolist()) in rows for r in batches.batch(step))


# ------------------------------------------------------------------ analysis


def fake_job(folder, *, pos, seed, steps, val_loss, shift=0.0, speedups=(3.0,), mask="causal",
             consistency=None):
    """A completed job folder in the run format, trained with ``train.steps=steps``."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "data": {"seed": 42, "vary_with_seed": True, "path": None},
              "model": {"dim": 32}, "pos": {"name": pos}, "mask": {"name": mask},
              "train": {"steps": steps}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {**config, "cache": {"enabled": True}}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
    summary = {"status": "completed", "pos": pos, "mask": mask, "cache": "on", "seed": seed,
               "val_loss": val_loss, "val_perplexity": float(np.exp(val_loss)), "steps": steps,
               "model_key": f"{pos}-{mask}-{seed}-{steps}", "training_config": config,
               "position_shift": {"loss_shift_0": val_loss, "loss_shift_50": val_loss + shift,
                                  "delta_shift_50": shift},
               "kv_cache": {"precision": "fp32", "concurrent_jobs": 1, "speed": [
                   {"batch_size": 1, "new_tokens": 50, "speedup": s, "speedup_min": s,
                    "speedup_max": s, "tokens_per_s_cache_on": 100.0 * s,
                    "tokens_per_s_cache_off": 100.0} for s in speedups[:1]],
                   "consistency": consistency or {"matches": True, "max_logit_diff": 0.0}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    records = [{"step": s, "split": "val_subset", "loss": 3.0 - s / 100} for s in range(20, steps + 1, 20)]
    (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")


def two_sweeps(tmp_path):
    """Two sweeps sharing seeds 1 and 2, trained for 30 and 60 steps."""
    a, b = tmp_path / "A", tmp_path / "B"
    for sweep, steps, offset in ((a, 30, 0.0), (b, 60, -0.5)):
        for i, (pos, seed) in enumerate([(p, s) for p in ("rope", "sinusoidal") for s in (1, 2)]):
            loss = 2.0 + offset + (0.1 if pos == "sinusoidal" else 0.0) + 0.01 * seed
            fake_job(sweep / str(i), pos=pos, seed=seed, steps=steps, val_loss=loss,
                     speedups=(2.0 + i,))
    return a, b


def test_two_sweeps_sharing_seeds_give_one_row_per_training_config(tmp_path):
    a, b = two_sweeps(tmp_path)
    runs = load_runs([a, b])
    assert set(runs["config"]) == {"train.steps=30", "train.steps=60"}
    table = positional(runs, pd.DataFrame(columns=["step", "split", "loss", "sweep", "job"]))
    assert len(table) == 4
    row = table.set_index(["config", "pos"]).loc[("train.steps=60", "sinusoidal")]
    assert row["seeds"] == 2 and row["pairs"] == 2
    assert row["diff_vs_rope"] == pytest.approx(0.1)
    assert row["val_loss_ci95"] > 0 and row["diff_vs_rope_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert row["delta_shift_50"] == 0.0


def test_pairs_count_only_seeds_present_on_both_sides(tmp_path):
    fake_job(tmp_path / "S" / "0", pos="rope", seed=1, steps=30, val_loss=2.0)
    for i, seed in enumerate((1, 2, 3)):
        fake_job(tmp_path / "S" / str(i + 1), pos="sinusoidal", seed=seed, steps=30,
                 val_loss=2.1 + 0.01 * seed)
    table = positional(load_runs(tmp_path / "S"),
                       pd.DataFrame(columns=["step", "split", "loss", "sweep", "job"]))
    sin = table.set_index("pos").loc["sinusoidal"]
    assert sin["seeds"] == 3 and sin["pairs"] == 1


def test_steps_to_target_is_resolved_by_the_subset_and_counts_misses():
    metrics = pd.DataFrame(
        [{"sweep": "s", "job": j, "split": "val_subset", "step": st, "loss": 3.0 - st / k}
         for j, k in (("a", 100), ("b", 50), ("c", 1e9)) for st in range(20, 201, 20)]
        + [{"sweep": "s", "job": "a", "split": "val", "step": 140, "loss": 1.0}])
    reached = steps_to_reach(metrics, 1.8)
    assert reached[("s", "a")] == 120 and reached[("s", "b")] == 60
    assert ("s", "c") not in reached
    assert censored_median([120, 60, np.nan]) == 120  # the miss counts as "later than any"
    assert np.isnan(censored_median([120, np.nan, np.nan]))


def test_kv_table_is_a_median_over_models_with_an_interval(tmp_path):
    a, b = two_sweeps(tmp_path)
    runs = load_runs([a, b])
    from analysis import load_speed

    table = kv_cache(runs, load_speed([a, b]))  # trained differently: never pooled
    assert list(table["config"]) == ["train.steps=30", "train.steps=60"]
    assert (table["models"] == 4).all() and table["speedup_ci95_low"].isna().all()
    c = tmp_path / "C"  # 8 models of one configuration: a median with a bootstrap interval
    for i in range(8):
        fake_job(c / str(i), pos=("rope", "sinusoidal")[i % 2], seed=i // 2 + 1, steps=30,
                 val_loss=2.0, speedups=(2.0 + i % 4,))
    (row,) = kv_cache(load_runs(c), load_speed(c)).itertuples()
    assert row.models == 8 and row.speedup_median == pytest.approx(3.5)
    assert row.speedup_ci95_low <= row.speedup_median <= row.speedup_ci95_high
    assert (row.speedup_min, row.speedup_max) == (2.0, 5.0)
    assert median_ci([1.0])[1] != median_ci([1.0])[1]  # one model: no interval


def test_kv_table_counts_models_whose_decodes_parted_at_a_near_tie(tmp_path):
    checks = [{"matches": True, "max_logit_diff": 0.0, "greedy_tokens_match": True},
              {"matches": True, "max_logit_diff": 0.06, "greedy_tokens_match": False,
               "greedy_tie": True},
              {"matches": False, "max_logit_diff": 0.06, "greedy_tokens_match": False,
               "greedy_tie": False}]
    for i, check in enumerate(checks):
        fake_job(tmp_path / "S" / str(i), pos="rope", seed=i + 1, steps=30, val_loss=2.0,
                 consistency=check)
    from analysis import load_speed

    (row,) = kv_cache(load_runs(tmp_path / "S"), load_speed(tmp_path / "S")).itertuples()
    assert row.cached_decode_matched == (
        "2/3 causal models (1 with greedy decodes parting at a near-tie)")
    fake_job(tmp_path / "T" / "0", pos="rope", seed=1, steps=30, val_loss=2.0)  # no tie field
    (row,) = kv_cache(load_runs(tmp_path / "T"), load_speed(tmp_path / "T")).itertuples()
    assert row.cached_decode_matched == "1/1 causal models"


def test_report_on_two_sweeps_names_the_fixed_kv_cell_and_what_intervals_cover(tmp_path):
    a, b = two_sweeps(tmp_path)
    report = build_report([a, b], tmp_path / "out", log=lambda *_: None).read_text()
    assert "training trajectories" in report  # what the intervals cover
    for steps in (30, 60):  # one sentence per training configuration, never pooled
        assert f"KV cache (train.steps={steps}) at batch 1, 50 new tokens: 3.50x" in report
    assert "(train.steps=60)" in report
    assert (tmp_path / "out" / "position_shift.png").exists()


# ------------------------------------------------------------------ precision


def test_auto_precision_follows_the_hardware(monkeypatch):
    from vla_ablate import precision as P

    monkeypatch.setattr(P, "cpu_bf16_native", lambda: (True, "the CPU has AMX"))
    assert P.resolve_precision("auto", CPU) == ("bf16", "the CPU has AMX")
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: (False, "the CPU has neither"))
    chosen, why = P.resolve_precision("auto", CPU)
    assert chosen == "fp32" and "emulated" in why
    assert P.resolve_precision("fp32", CPU)[0] == "fp32"
    with pytest.raises(ValueError, match="CUDA"):
        P.resolve_precision("fp16", CPU)


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_generation_with_alibi_biases(causal, val_actions):
    gen = evaluate.generation_model(small_model("alibi", causal=causal), "bf16")
    report = evaluate.kv_cache_consistency(gen, val_actions[:2, :4], 8, CPU)
    assert report["precision"] == "bf16"
    assert report["matches"] is causal  # no mask: different by construction, but it runs
    rows = evaluate.paired_generation_speed(gen, val_actions[:, :4], [1], [4], 1, CPU)
    assert rows[0]["speedup"] > 0


def test_steps_to_target_uses_each_jobs_own_split():
    old = [{"sweep": "s", "job": "old", "split": "val", "step": st, "loss": 3.0 - st / 100}
           for st in (100, 200)]  # a job from before the validation slice existed
    new = [{"sweep": "s", "job": "new", "split": "val_subset", "step": st, "loss": 3.0 - st / 50}
           for st in range(20, 201, 20)]
    reached = steps_to_reach(pd.DataFrame(old + new), 1.5)
    assert reached[("s", "old")] == 200 and reached[("s", "new")] == 80
