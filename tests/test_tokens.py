"""The token layouts (``tokens`` group): state tokens beside action tokens."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from conftest import SMOKE, built_once, compose_cfg, run_cli
from vla_ablate.config import ConfigError, model_key, training_config, validate
from vla_ablate.data import VOCAB_SIZE, generate_dataset
from vla_ablate.data.process import _simulate
from vla_ablate.data.tokens import ACTION, STATE_RANGES, TokenLayout, layout_from_config
from vla_ablate.factory import build_model
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.pipeline import load_data
from vla_ablate.training.losses import validation_losses

EE = TokenLayout(state=("ee_x", "ee_y", "ee_z"), bins=128)


def small_data(n=16, t=10, seed=3):
    return generate_dataset(n, t, seed, progress=False)


def test_vocabulary_ranges_never_overlap():
    for layout in (EE, TokenLayout(state=("q0", "q3", "ee_z"), bins=7),
                   TokenLayout(state=tuple(STATE_RANGES), bins=2)):
        ranges = [set(range(VOCAB_SIZE))] + [set(layout.state_range(j))
                                             for j in range(len(layout.state))]
        assert sum(map(len, ranges)) == len(set().union(*ranges)) == layout.vocab_size
        # and every quantised value lands in its own value's range, even far outside the reach
        states = torch.randn(64, 5, 10, dtype=torch.float64) * 4
        ids = layout.state_ids(states)
        for j in range(len(layout.state)):
            assert ids[..., j].min() >= layout.state_range(j).start
            assert ids[..., j].max() < layout.state_range(j).stop


def test_quantisation_round_trips_within_a_bin():
    states = small_data(64, 20)["states"].double()
    for layout in (EE, TokenLayout(state=("q1", "q5"), bins=16)):
        centres = layout.state_values(layout.state_ids(states))
        idx = [list(STATE_RANGES).index(s) for s in layout.state]
        width = torch.tensor([(STATE_RANGES[s][1] - STATE_RANGES[s][0]) / layout.bins
                              for s in layout.state], dtype=torch.float64)
        err = (centres - states[..., idx]).abs()
        assert (err <= width / 2 + 1e-9).all()
        assert (err > 0).any()  # a real quantisation, not the identity


class _NoiseOnly:
    """A generator whose token noise is fixed to ``u`` while every other draw stays the same."""

    def __init__(self, seed, u):
        self.rng, self.u = np.random.default_rng(seed), u

    def integers(self, low, high, size):
        self.rng.integers(low, high, size=size)  # consume the stream as the real draw does
        return np.full(size, self.u)

    def standard_normal(self, shape):
        return self.rng.standard_normal(shape)


def test_a_state_token_never_leaks_its_steps_action():
    rng = np.random.default_rng(0)
    start = rng.uniform(-1.5, 1.5, size=(32, 7))
    targets = rng.uniform(-1.5, 1.5, size=(32, 3))
    low = _simulate(start, targets, 15, 0.02, _NoiseOnly(1, -2))
    high = _simulate(start, targets, 15, 0.02, _NoiseOnly(1, 2))
    # the action tokens differ (their noise), the states - and so the state tokens - do not
    assert not torch.equal(torch.from_numpy(low[1]), torch.from_numpy(high[1]))
    assert np.array_equal(low[0], high[0])
    seq_low = EE.sequences(torch.from_numpy(low[0]), torch.from_numpy(low[1]))
    seq_high = EE.sequences(torch.from_numpy(high[0]), torch.from_numpy(high[1]))
    is_state = torch.ones(seq_low.shape[1], dtype=torch.bool)
    is_state[EE.per_step - 1 :: EE.per_step] = False
    assert torch.equal(seq_low[:, is_state], seq_high[:, is_state])
    # and in the sequence a step's state comes right before its own action, never after it
    steps = seq_low.unflatten(1, (15, EE.per_step))
    assert torch.equal(steps[..., :3], EE.state_ids(torch.from_numpy(low[0])))
    assert torch.equal(steps[..., 3], torch.from_numpy(low[1]))
    assert (steps[..., :3] >= VOCAB_SIZE).all() and (steps[..., 3] < VOCAB_SIZE).all()


def test_action_layout_is_todays_sequence_and_config():
    data = small_data()
    assert ACTION.sequences(data["states"], data["actions"]) is data["actions"]
    x = data["actions"]
    assert torch.equal(ACTION.train_targets(x), x[:, 1:])
    assert ACTION.action_targets(x.shape[1]) is None and ACTION.objective_targets(10) is None
    cfg = compose_cfg(SMOKE + ["data.cache_dir=/tmp/unused"])
    older = compose_cfg(SMOKE + ["data.cache_dir=/tmp/unused"])
    with open_dict(older):
        del older["tokens"]  # a config from before the tokens group
    assert training_config(cfg) == training_config(older)
    assert model_key(cfg) == model_key(older)  # so folders and shared models stay valid
    assert layout_from_config(older) is ACTION
    assert build_model(cfg).model_args == build_model(older).model_args


def test_state_action_config_builds_the_model_and_binds_the_folder():
    cfg = compose_cfg(SMOKE + ["tokens=state_action"])
    layout = layout_from_config(cfg)
    assert layout.state == ("ee_x", "ee_y", "ee_z") and layout.per_step == 4
    args = build_model(cfg).model_args
    assert args["vocab_size"] == VOCAB_SIZE + 3 * layout.bins
    assert args["max_seq_len"] == 4 * cfg.model.max_seq_len  # max_seq_len counts steps
    assert training_config(cfg)["tokens"]["name"] == "state_action"
    assert model_key(cfg) != model_key(compose_cfg(SMOKE))


@pytest.mark.parametrize("override, message", [
    ("tokens.state=[ee_w]", "unknown state value"),
    ("tokens.state=[ee_x,ee_x]", "names a value twice"),
    ("tokens.state=[]", "at least one state value"),
    ("tokens.bins=1", "tokens.bins must be >= 2"),
    ("tokens.loss=states", "tokens.loss must be all or action"),
    ("model.max_seq_len=40", "48 steps, beyond model.max_seq_len"),  # counted in steps
])
def test_bad_token_settings_are_one_line(override, message):
    cfg = compose_cfg(SMOKE + ["tokens=state_action", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_action_tokens_in_the_state_layout_and_their_loss():
    data = small_data(8, 6)
    seqs = EE.sequences(data["states"], data["actions"])
    assert seqs.shape == (8, 24)
    select = EE.action_targets(24)
    # the targets a_1 .. a_5: the same action tokens action mode predicts
    assert torch.equal(seqs[:, 1:][:, select], data["actions"][:, 1:])
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=EE.vocab_size, dim=32, num_layers=1, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=32, dropout=0.0)
    objective, action = validation_losses(model, seqs, torch.device("cpu"), EE)
    logits, _ = model(seqs[:, :-1])
    ce = F.cross_entropy(logits.transpose(1, 2), seqs[:, 1:], reduction="none")
    assert objective == pytest.approx(ce.mean().item(), rel=1e-6)
    assert action == pytest.approx(ce[:, select].mean().item(), rel=1e-6)
    # loss=action trains on every action token (a_0 too) and ignores the state tokens
    only = TokenLayout(state=EE.state, bins=EE.bins, loss="action")
    targets = only.train_targets(seqs)
    assert (targets[:, only.objective_targets(24)] < VOCAB_SIZE).all()
    assert (targets[:, ~only.objective_targets(24)] == -1).all()
    assert int(only.objective_targets(24).sum()) == 6


def test_tokens_action_val_loss_is_the_plain_next_token_loss(tmp_path):
    """Not circular: the run's val_loss against cross-entropy recomputed from its checkpoint on
    the validation split rebuilt from the data seed, without the layout code."""
    from vla_ablate.data import split_indices
    from vla_ablate.training.checkpoint import load_model_from_checkpoint

    run = tmp_path / "run"
    run_cli([*SMOKE, "train.precision=fp32", "eval.enabled=false", f"hydra.run.dir={run}",
             f"data.cache_dir={tmp_path / 'ds'}"], cwd=tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_action_loss"] == summary["val_loss"]
    model = load_model_from_checkpoint(run / "checkpoints" / "last.pt").eval()
    actions = generate_dataset(96, 12, 42, progress=False)["actions"]
    val = actions[split_indices(96, 0.9)[1]]
    with torch.no_grad():
        logits, _ = model(val[:, :-1])
    plain = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), val[:, 1:].reshape(-1))
    assert summary["val_loss"] == pytest.approx(plain.item(), abs=1e-6)


@pytest.mark.parametrize("pos", ["rope", "sinusoidal", "learned", "alibi", "none"])
@pytest.mark.parametrize("attn_impl", ["manual", "sdpa"])
def test_chunked_cached_rollout_matches_the_full_pass(pos, attn_impl):
    from vla_ablate.evaluate import kv_cache_consistency

    torch.manual_seed(1)
    model = DecoderOnlyTransformer(vocab_size=EE.vocab_size, dim=32, num_layers=2, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=64, dropout=0.0, pos=pos,
                                   attn_impl=attn_impl).eval()
    data = small_data(2, 8)
    seqs = EE.sequences(data["states"], data["actions"])
    given = EE.given(data["states"])
    # the rollout's cached path: the prompt and s_0, then [a_t, s_{t+1}] chunks at their offsets
    chunks = [seqs[:, :7]] + [seqs[:, p : p + 4] for p in range(7, 31, 4)]
    model.setup_cache(2, 32)
    try:
        start, cached = 0, []
        for chunk in chunks:
            positions = torch.arange(start, start + chunk.shape[1])
            cached.append(model(chunk, input_pos=positions)[0])
            start += chunk.shape[1]
    finally:
        model.clear_cache()
    full, _ = model(seqs[:, :31])
    assert (torch.cat(cached, dim=1) - full).abs().max() < 1e-4
    result = kv_cache_consistency(model, seqs[:, :4], 7, torch.device("cpu"), given=given[:, 1:])
    assert result["matches"], result


def test_rollouts_generate_action_tokens_only():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=EE.vocab_size, dim=32, num_layers=1, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=64, dropout=0.0).eval()
    with torch.no_grad():  # make state ids the likeliest next tokens everywhere
        model.lm_head.weight[:, VOCAB_SIZE:] += 5.0
    data = small_data(2, 6)
    seqs = EE.sequences(data["states"], data["actions"])
    free = model.generate(seqs[:, :4], 5, top_k=1, given=EE.given(data["states"])[:, 1:])
    assert (EE.actions_of(free[:, 4:].unflatten(1, (5, 4))) >= VOCAB_SIZE).any()
    kept = model.generate(seqs[:, :4], 5, top_k=1, given=EE.given(data["states"])[:, 1:],
                          sample_below=VOCAB_SIZE)
    assert (kept[:, 4:].unflatten(1, (5, 4))[..., 3] < VOCAB_SIZE).all()


def test_step_counted_masks_and_maps():
    # the extrapolation's unseen actions: (factor - 1) x T of them, in both layouts
    for layout in (ACTION, EE):
        mask = layout.action_targets(layout.positions(4 * 12), from_step=12)
        assert int(mask.sum()) == 3 * 12
    maps = torch.rand(2, 24, 24)  # 6 steps of 4 tokens
    steps = EE.step_attention(maps)
    assert steps.shape == (2, 6, 6)
    assert torch.allclose(steps[:, 1, 0], maps[:, 6, 0:4].sum(-1))  # row: s_1[z] predicts a_1
    assert ACTION.step_attention(maps) is maps


def test_position_shifts_are_checked_in_positions():
    # smoke: 12 steps, max_seq_len 64 steps; with state tokens the last step's states are inputs
    for shift, ok_action, ok_state in ((52, True, True), (53, True, False), (54, False, False)):
        for tokens, ok in (("action", ok_action), ("state_action", ok_state)):
            cfg = compose_cfg(SMOKE + [f"tokens={tokens}", f"eval.position_shifts=[{shift}]"])
            if ok:
                validate(cfg)
            else:
                with pytest.raises(ConfigError, match="eval.position_shifts need steps up to"):
                    validate(cfg)
    # and the largest valid shift evaluates
    from vla_ablate.evaluate import position_shift

    model = DecoderOnlyTransformer(vocab_size=EE.vocab_size, dim=32, num_layers=1, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=4 * 64, dropout=0.0)
    data = small_data(2, 12)
    seqs = EE.sequences(data["states"], data["actions"])
    assert "delta_shift_52" in position_shift(model, seqs, [52], torch.device("cpu"), layout=EE)
    with pytest.raises(ValueError, match="beyond max_seq_len"):
        position_shift(model, seqs, [53], torch.device("cpu"), layout=EE)


def test_token_table_keeps_layout_variants_apart():
    import pandas as pd

    from analysis.collect import tokens_labels
    from analysis.tables import token_layouts

    configs = [{}, {"tokens": {"name": "state_action", "bins": 128, "loss": "all"}},
               {"tokens": {"name": "state_action", "bins": 128, "loss": "action"}}]
    labels = tokens_labels(configs)
    assert labels == ["action", "state_action(loss=all)", "state_action(loss=action)"]
    rows = [{"status": "completed", "mask": "causal", "pos": "rope", "config": "c",
             "config_without_tokens": "default", "model_key": f"{label}-{seed}", "path": "p",
             "seed": seed, "tokens": label, "val_action_loss": base + 0.01 * seed}
            for label, base in zip(labels, (2.0, 1.8, 1.9)) for seed in (1, 2, 3)]
    table = token_layouts(pd.DataFrame(rows)).set_index("tokens")
    assert list(table["seeds"]) == [3, 3, 3]
    assert table.loc["state_action(loss=all)", "diff_vs_action"] == pytest.approx(-0.2)
    assert table.loc["state_action(loss=action)", "diff_vs_action"] == pytest.approx(-0.1)


def test_rollout_is_given_states_and_cached_equals_uncached():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=EE.vocab_size, dim=32, num_layers=2, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=64, dropout=0.0).eval()
    data = small_data(3, 9)
    seqs = EE.sequences(data["states"], data["actions"])
    prompt, given = seqs[:, :8], EE.given(data["states"])[:, 2:]  # 2 steps, then 7 to roll out
    cached = model.generate(prompt, 7, top_k=1, use_cache=True, given=given)
    plain = model.generate(prompt, 7, top_k=1, use_cache=False, given=given)
    assert torch.equal(cached, plain) and cached.shape == (3, 8 + 7 * 4)
    steps = cached[:, 8:].unflatten(1, (7, 4))
    assert torch.equal(steps[..., :3], given)  # the states come from the data
    assert not torch.equal(steps[..., 3], data["actions"][:, 2:])  # the actions are the model's
    with pytest.raises(ValueError, match="expected"):
        model.generate(prompt, 6, given=given)


def test_load_data_builds_the_layouts_sequences(tmp_path):
    cfg = compose_cfg(SMOKE + ["tokens=state_action", f"data.cache_dir={tmp_path}"])
    train, val, fresh = load_data(cfg)
    assert train.shape[1] == val.shape[1] == 4 * cfg.data.seq_length
    assert fresh is not None and fresh(1).shape == train.shape
    assert (val[:, 3::4] < VOCAB_SIZE).all() and (val[:, 0::4] >= VOCAB_SIZE).all()


@pytest.fixture(scope="module")
def token_sweep(tmp_path_factory):
    """A smoke sweep over tokens x 2 seeds (RoPE, causal), analysed."""
    def build(root):
        run_cli(["-m", *SMOKE, "tokens=action,state_action", "seed=1,2",
                 f"hydra.sweep.dir={root / 'sweep'}", f"data.cache_dir={root / 'datasets'}"],
                cwd=root)

    return built_once(tmp_path_factory, "token_sweep", build) / "sweep"


def test_every_evaluation_runs_in_the_state_layout(token_sweep):
    summaries = {}
    for path in token_sweep.glob("*/summary.json"):
        s = json.loads(path.read_text())
        summaries[(s["tokens"], s["seed"])] = (s, path.parent)
    assert len(summaries) == 4 and all(s["status"] == "completed" for s, _ in summaries.values())
    for (tokens, _), (s, folder) in summaries.items():
        assert math.isfinite(s["val_action_loss"])
        if tokens == "action":
            assert s["val_action_loss"] == s["val_loss"]  # bit for bit
        else:
            assert s["val_action_loss"] != s["val_loss"]  # states are scored in val_loss
        audit = s["mask_audit"]
        assert audit["leakage"] < 1e-4 and abs(audit["cheating_gap"]) < 1e-3  # causal
        assert {"loss_shift_12", "delta_shift_36"} <= set(s["position_shift"])
        assert {"loss_1x", "loss_2x_beyond", "loss_4x_beyond"} == set(s["extrapolation"])
        kv = s["kv_cache"]
        assert kv["consistency"]["matches"], kv["consistency"]
        assert {(r["batch_size"], r["new_tokens"]) for r in kv["speed"]} == {
            (1, 4), (1, 8), (2, 4), (2, 8)}
        maps = np.load(folder / "attention_maps.npz")
        assert maps["layer_0"].shape[-2:] == (12, 12)  # over steps in both layouts
        assert (maps["tokens"] < VOCAB_SIZE).all()  # the trajectory's actions
        # the audit and the unshifted position evaluation score the same targets
        assert s["position_shift"]["loss_shift_0"] == pytest.approx(
            audit["val_loss_teacher_forced"], abs=1e-4)
    state = summaries[("state_action", 1)][0]
    records = [json.loads(line) for line in
               (summaries[("state_action", 1)][1] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert val[-1]["action_loss"] == state["val_action_loss"]
    log = (summaries[("state_action", 1)][1] / "vla_ablate.log").read_text()  # progress=false
    assert (f"step 30/30: val loss {val[-1]['loss']:.4f} "
            f"(action tokens {val[-1]['action_loss']:.4f})") in log


def test_analysis_gains_the_token_table_and_plot(token_sweep, tmp_path):
    from analysis.report import build_report

    out = tmp_path / "report"
    build_report([token_sweep], out, log=lambda *_: None)
    table = __import__("pandas").read_csv(out / "tokens.csv")
    assert set(table["tokens"]) == {"action", "state_action"}
    assert (table["seeds"] == 2).all()
    row = table[table["tokens"] == "state_action"].iloc[0]
    assert row["pairs"] == 2 and np.isfinite(row["diff_vs_action_ci95"])
    runs = __import__("pandas").read_csv(out / "runs.csv")
    sa = runs[runs["tokens"] == "state_action"].drop_duplicates("model_key")
    ac = runs[runs["tokens"] == "action"].drop_duplicates("model_key")
    paired = sa.set_index("seed")["val_action_loss"] - ac.set_index("seed")["val_action_loss"]
    assert row["diff_vs_action"] == pytest.approx(paired.mean())
    assert (out / "tokens.png").stat().st_size > 0
    kv = __import__("pandas").read_csv(out / "kv_cache.csv")
    assert set(kv["tokens"]) == {"action", "state_action"}  # different workloads, own rows
    report = (out / "report.md").read_text()
    assert "## Token layouts" in report and "ln 5 = 1.609" in report
    assert "State tokens (state_action, pos=rope" in report
    # the course's page shows the action-token models of a mixed sweep
    build_report([token_sweep], tmp_path / "mdx", log=lambda *_: None, mdx={"student": "x"})
    page = next((tmp_path / "mdx").glob("*.mdx")).read_text()
    assert "tokens.bins" not in page and "state_action" not in page


def test_action_mode_refuses_state_values():
    cfg = compose_cfg(SMOKE + ["tokens.state=[ee_x]"])
    with pytest.raises(ConfigError, match="applies to tokens=state_action"):
        validate(cfg)


def test_course_commands_refuse_a_state_action_checkpoint(token_sweep):
    from vla_ablate.errors import CommandError
    from vla_ablate.trained import load_checkpoint_file

    folder = next(p.parent for p in token_sweep.glob("*/summary.json")
                  if json.loads(p.read_text())["tokens"] == "state_action")
    with pytest.raises(CommandError, match="tokens=state_action, vocabulary 640"):
        load_checkpoint_file(folder)


def test_check_cache_runs_a_state_action_jobs_rollout_check_again(token_sweep):
    from vla_ablate.check_cache import check_job

    folder = next(p.parent for p in sorted(token_sweep.glob("*/summary.json"))
                  if json.loads(p.read_text())["tokens"] == "state_action")
    recorded = json.loads((folder / "summary.json").read_text())["kv_cache"]
    fp32, own = check_job(folder, ["fp32", recorded["precision"]])
    assert fp32["precision"] == "fp32" and fp32["matches"] is True
    assert fp32["max_logit_diff"] < 1e-3
    # the job's own check, on the job's rollout (its prompts and given states), again
    assert own["recorded"]["max_logit_diff"] == recorded["consistency"]["max_logit_diff"]
    assert own["matches"] is True and own["max_logit_diff"] < own["tolerance"]
