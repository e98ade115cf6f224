"""``data=lerobot``: runs, sweeps and every evaluation on small LeRobot datasets written with
pyarrow as LeRobot writes them (both layouts, a video feature that must never be opened, v3.0
files of several episodes); the split, the tokenizer file, the action error, bad input, and the
course's path left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_cli_tools import assert_one_line_error, run_module

from analysis.collect import config_labels
from conftest import SMOKE, compose_cfg, run_cli
from vla_ablate import evaluate, pipeline
from vla_ablate import job as job_module
from vla_ablate.config import model_key, resolve_data_path, training_config, validate
from vla_ablate.data.lerobot import read_lerobot, write_lerobot
from vla_ablate.data.robot import RobotData, robot_layout
from vla_ablate.data.tokenizer import Tokenizers
from vla_ablate.data.tokens import ACTION, TokenLayout
from vla_ablate.errors import ConfigError, DataError
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.model.linear import Linear
from vla_ablate.runfolder import BINDING, MODELS, SUMMARY, TOKENIZER

WINDOW = ["data.window=8"]


def robot_episodes(n=20, d=2, k=2, seed=0, lengths=(14, 31)):
    """Episodes a model can learn something from: states drift, each action is the next step's
    change of the state plus noise."""
    rng = np.random.default_rng(seed)
    actions, states = [], []
    for t in rng.integers(*lengths, size=n):
        s = np.cumsum(rng.normal(0, 0.1, size=(t + 1, k)), axis=0)
        a = np.repeat(np.diff(s, axis=0)[:, :1], d, axis=1) + rng.normal(0, 0.01, size=(t, d))
        actions.append(a.astype(np.float32))
        states.append(s[:-1].astype(np.float32))
    return actions, states


def dataset(root: Path, version="v3.0", **kw) -> Path:
    actions, states = robot_episodes(**kw)
    return write_lerobot(root, actions, states, fps=10, version=version, episodes_per_file=6,
                         action_names=[f"joint{i}" for i in range(actions[0].shape[1])],
                         state_names=[f"pos{i}" for i in range(states[0].shape[1])],
                         video_keys=["observation.images.wrist"])


def read_summary(folder: Path) -> dict:
    return json.loads((folder / SUMMARY).read_text())


def check_action_error(summary: dict, dims: list[str]):
    """The summary keys the analysis reads, exactly."""
    err = summary["action_error"]
    assert set(err) == {"greedy", "expected", "round_trip", "dims", "episodes", "steps"}
    assert err["dims"] == dims and err["episodes"] >= 1 and err["steps"] >= 1
    for key in ("greedy", "expected", "round_trip"):
        assert set(err[key]) == {"mean", "per_dim"} and len(err[key]["per_dim"]) == len(dims)
        assert err[key]["mean"] == pytest.approx(np.mean(err[key]["per_dim"]))
        assert all(np.isfinite(err[key]["per_dim"])) and min(err[key]["per_dim"]) >= 0
    # binning alone loses far less than a 30-step model
    assert err["round_trip"]["mean"] < err["greedy"]["mean"]


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def state_action_run(tmp_path_factory):
    """One debug=smoke run of tokens=state_action on a v2.1 dataset (a video feature listed)."""
    tmp = tmp_path_factory.mktemp("lerobot_run")
    root = dataset(tmp / "robot-v21", version="v2.1")
    run = tmp / "run"
    proc = run_cli([*SMOKE, "data=lerobot", f"data.root={root}", *WINDOW, "tokens=state_action",
                    "tokenizer=quantile", f"hydra.run.dir={run}"], cwd=tmp)
    return root, run, proc


@pytest.mark.slow
def test_a_state_action_run_on_a_v21_dataset_runs_every_evaluation(state_action_run):
    root, run, proc = state_action_run
    summary = read_summary(run)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["data"] == "lerobot" and summary["tokenizer"] == "quantile"
    assert summary["axes"]["tokenizer"] == "quantile" and summary["axes"]["tokens"] == "state_action"
    assert "20 episodes" in proc.stderr + proc.stdout  # the log says what was read
    check_action_error(summary, ["joint0", "joint1"])
    # 2 state tokens, then 2 action tokens a step; each value its own range of 256 ids
    args = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model_args"]
    assert args["vocab_size"] == 4 * 256 and args["max_seq_len"] == 4 * 64
    assert summary["mask_audit"]["leakage"] == 0.0  # causal: later steps change nothing before
    assert summary["position_shift"]["delta_shift_12"] == pytest.approx(0, abs=1e-5)  # RoPE
    kv = summary["kv_cache"]
    assert kv["consistency"]["matches"] and kv["generated_per_step"] == 2
    # eval.gen_new_tokens counts steps; each makes D = 2 tokens, and the rates count tokens
    assert [(r["batch_size"], r["new_steps"], r["new_tokens"]) for r in kv["speed"]] == [
        (1, 4, 8), (1, 8, 16), (2, 4, 8), (2, 8, 16)]
    for r in kv["speed"]:
        assert r["tokens_per_s_cache_on"] == pytest.approx(
            r["batch_size"] * r["new_tokens"] / r["cache_on_s"])
    extra = summary["extrapolation"]
    assert {"loss_1x", "loss_2x_beyond"} <= set(extra)  # 16-step windows exist, 32-step ones not
    assert extra["skipped_4x"] == "no validation episode has 32 steps"
    assert all(isinstance(v, (int, float, str)) for v in extra.values())  # runs.csv cells
    maps = np.load(run / "attention_maps.npz")
    assert maps["layer_0"].shape == (4, 8, 8)  # over steps
    assert maps["tokens"].shape == (8, 2)  # each step's action tokens
    tokenizers = Tokenizers.load(run / TOKENIZER)
    assert tokenizers.kind == "quantile" and tokenizers.state_names == ["pos0", "pos1"]
    assert tokenizers.dataset == {"root": str(root.resolve()), "repo_id": None}
    # fitted on the training episodes alone, in the run's split
    episodes = read_lerobot(root)
    layout = robot_layout(2, ["pos0", "pos1"], 256)
    fresh = RobotData.build(episodes, layout, 8, 0.9, 42, 42, "quantile")
    assert fresh.tokenizers.same_as(tokenizers)


@pytest.mark.slow
def test_sample_reads_the_saved_tokenizer(state_action_run):
    _, run, _ = state_action_run
    proc = run_module("vla_ablate.sample", run, "--prompt-len", 3, "--new-tokens", 4,
                      "--num-samples", 1)
    assert proc.returncode == 0, proc.stderr
    assert "tokenized by" in proc.stdout and "(quantile, 256 bins)" in proc.stdout
    assert "2 action tokens (joint0, joint1) after 2 given state tokens" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.lstrip()[:1].isdigit()]
    assert len(rows) == 4 and rows[0].split("|")[0].strip() == "3"
    # the file is what decodes the tokens: other bins, other values
    saved = json.loads((run / TOKENIZER).read_text())
    moved = dict(saved, action=dict(saved["action"], edges=(np.asarray(
        saved["action"]["edges"]) + 100.0).tolist()))
    (run / TOKENIZER).write_text(json.dumps(moved))
    try:
        again = run_module("vla_ablate.sample", run, "--prompt-len", 3, "--new-tokens", 4,
                           "--num-samples", 0)
    finally:
        (run / TOKENIZER).write_text(json.dumps(saved))
    assert again.returncode == 0, again.stderr
    greedy = [line.split("|")[2] for line in again.stdout.splitlines()
              if line.lstrip()[:1].isdigit()]
    assert all("+99." in g or "+100." in g for g in greedy)


@pytest.mark.slow
def test_a_sweep_over_pos_mask_and_tokenizer_runs_end_to_end(tmp_path):
    root = dataset(tmp_path / "robot-v30")
    sweep = tmp_path / "sweep"
    run_cli(["-m", *SMOKE, "data=lerobot", f"data.root={root}", *WINDOW, "pos=rope,sinusoidal",
             "mask=causal,none", "tokenizer=uniform,quantile", f"hydra.sweep.dir={sweep}",
             "eval.gen_batch_sizes=[1]", "eval.gen_new_tokens=[4]"], cwd=tmp_path)
    summaries = [read_summary(p.parent) for p in sweep.glob(f"*/{SUMMARY}")]
    assert len(summaries) == 8 and all(s["status"] == "completed" for s in summaries)
    cells = {(s["pos"], s["mask"], s["tokenizer"]) for s in summaries}
    assert len(cells) == 8
    for s in summaries:
        check_action_error(s, ["joint0", "joint1"])
        folder = Path(s["model_dir"])
        assert folder.parent.name == MODELS
        assert Tokenizers.load(folder / TOKENIZER).kind == s["tokenizer"]
        assert s["training_config"]["tokenizer"] == {"name": s["tokenizer"], "bins": 256}
        # two action tokens a step: the comparable figure leaves out a_0 (whose second token
        # is predictable from its first), so it is not the whole loss, and it is the last
        # validation record's action loss
        records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        last_val = [r for r in records if r["split"] == "val"][-1]
        assert s["val_action_loss"] != s["val_loss"]
        assert s["val_action_loss"] == pytest.approx(last_val["action_loss"])
    # one tokenizer, one floor: the round trip depends on the bins, not on the model
    for kind in ("uniform", "quantile"):
        floors = {json.dumps(s["action_error"]["round_trip"]) for s in summaries
                  if s["tokenizer"] == kind}
        assert len(floors) == 1
    assert len({s["model_key"] for s in summaries}) == 8


# --------------------------------------------------------------------------- data and split


def test_the_split_never_puts_an_episode_on_both_sides(tmp_path):
    root = dataset(tmp_path / "d", n=30, lengths=(3, 40))
    episodes = read_lerobot(root)
    layout = robot_layout(2, None, 256)
    robot = RobotData.build(episodes, layout, 8, 0.8, data_seed=3, seed=1, kind="uniform")
    assert not set(robot.train) & set(robot.val)
    assert sorted([*robot.train, *robot.val]) == list(range(30))

    def owner(seq):  # the one episode whose token sequence holds this window
        found = {e for e, full in enumerate(robot.sequences)
                 for s in range(0, len(full) - len(seq) + 1, layout.per_step)
                 if torch.equal(full[s : s + len(seq)], seq)}
        assert len(found) >= 1
        return found

    for epoch in (0, 1):
        for seq in robot.train_windows(epoch)[:40]:
            assert owner(seq) & set(robot.train.tolist())
    for seq in robot.val_windows():
        assert owner(seq) & set(robot.val.tolist())
    # each epoch the same number of windows at fresh offsets; short episodes give none
    lengths = robot.lengths(robot.train)
    assert len(robot.train_windows(0)) == len(robot.train_windows(1)) == sum(
        n // 8 for n in lengths)
    assert not torch.equal(robot.train_windows(0), robot.train_windows(1))
    assert robot.skipped()[0] == sum(n < 8 for n in lengths)
    # the tokenizer never sees validation frames
    changed = read_lerobot(root)
    for e in robot.val:
        changed.actions[e] = changed.actions[e] * 50
    again = RobotData.build(changed, layout, 8, 0.8, data_seed=3, seed=1, kind="uniform")
    assert again.tokenizers.same_as(robot.tokenizers)


def test_continuous_layout_gives_each_value_its_own_ids():
    layout = TokenLayout(state=("x", "y", "z"), bins=16, actions=2, action_bins=16,
                         continuous=True)
    assert layout.per_step == 5 and layout.vocab_size == 5 * 16
    assert [layout.action_range(i) for i in range(2)] == [range(0, 16), range(16, 32)]
    assert layout.action_ranges() == [(0, 16), (16, 32)]
    assert layout.state_range(0) == range(32, 48)
    states = torch.randint(0, 16, (2, 3, 3))
    actions = torch.randint(0, 16, (2, 3, 2))
    seqs = layout.step_sequences(states, actions)
    steps = seqs.view(2, 3, 5)
    assert torch.equal(steps[..., :3] - 32 - torch.arange(3) * 16, states)
    assert torch.equal(steps[..., 3:] - torch.arange(2) * 16, actions)
    assert torch.equal(layout.actions_of(seqs), steps[..., 3:])
    targets = layout.action_targets(15)  # the targets at positions 1..14
    assert targets.nonzero().flatten().add(1).tolist() == [8, 9, 13, 14]  # steps 1, 2
    loss_action = TokenLayout(state=("x",), bins=16, loss="action", actions=2, action_bins=16,
                              continuous=True)
    assert loss_action.objective_targets(6).tolist() == [True, True, False, True, True]
    assert layout.step_attention(torch.rand(2, 15, 15)).shape == (2, 3, 3)
    # the course's layouts are the same objects as before
    assert ACTION.vocab_size == 256 and ACTION.action_targets(10) is None
    course = TokenLayout(state=("ee_x", "ee_y"), bins=128)
    assert course.state_range(1) == range(384, 512)


def test_generation_samples_each_action_dimension_from_its_own_ids():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=5 * 16, dim=32, num_layers=2, num_heads=4,
                                   ff_hidden_dim=64, max_seq_len=80, dropout=0.0).eval()
    ranges = [(0, 16), (16, 32)]
    prompt = torch.randint(0, 80, (3, 10))
    given = torch.randint(32, 80, (3, 6, 3))
    cached = model.generate(prompt, 6, top_k=1, use_cache=True, given=given, step_ranges=ranges)
    plain = model.generate(prompt, 6, top_k=1, use_cache=False, given=given, step_ranges=ranges)
    assert torch.equal(cached, plain) and cached.shape == (3, 10 + 6 * 5)
    steps = cached[:, 10:].view(3, 6, 5)
    assert torch.equal(steps[..., :3], given)
    assert (steps[..., 3] < 16).all() and ((steps[..., 4] >= 16) & (steps[..., 4] < 32)).all()
    sampled = model.generate(prompt, 6, temperature=2.0, given=given, step_ranges=ranges)
    steps = sampled[:, 10:].view(3, 6, 5)
    assert (steps[..., 3] < 16).all() and ((steps[..., 4] >= 16) & (steps[..., 4] < 32)).all()
    check = evaluate.kv_cache_consistency(model, prompt, 6, torch.device("cpu"), given=given,
                                          step_ranges=ranges)
    assert check["matches"] and check["max_logit_diff"] < 1e-4
    # no state tokens: D sampled tokens a step, nothing given
    alone = model.generate(prompt, 4, top_k=1, step_ranges=ranges)
    assert alone.shape == (3, 18) and (alone[:, 10::2] < 16).all()


class _Oracle(torch.nn.Module):
    """A 'model' whose every next-token logit is the true token (it reads the answers)."""

    def __init__(self, truth: torch.Tensor, vocab: int):
        super().__init__()
        self.truth, self.vocab = truth, vocab
        self.lm_head = Linear(vocab, vocab)  # the identity: hidden states are the logits
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(vocab))

    def hidden_states(self, x, input_pos=None):
        prefix = self.truth[:, :-1]
        rows = [int((prefix == row).all(1).nonzero()[0]) for row in x]
        nxt = self.truth[rows, 1:]
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * 60.0


@pytest.mark.parametrize("tokens", ["action", "state_action"])
def test_the_action_error_of_a_perfect_predictor_is_the_round_trip_floor(tmp_path, tokens):
    root = dataset(tmp_path / "d", d=3)
    episodes = read_lerobot(root)
    layout = robot_layout(3, ["pos0", "pos1"] if tokens == "state_action" else None, 256)
    robot = RobotData.build(episodes, layout, 8, 0.7, 42, 42, "quantile")
    oracle = _Oracle(robot.val_windows(), layout.vocab_size)
    err = evaluate.action_error(oracle, robot, torch.device("cpu"), batch_size=3)
    assert err["greedy"]["per_dim"] == pytest.approx(err["round_trip"]["per_dim"], abs=1e-12)
    assert err["expected"]["per_dim"] == pytest.approx(err["round_trip"]["per_dim"], rel=1e-6)
    windows = len(robot.val_rows(8))
    assert err["steps"] == windows * 7 and err["dims"] == ["joint0", "joint1", "joint2"]
    assert err["episodes"] == len({e for e, _ in robot.val_rows(8)})
    # the floor is the tokenizer's own error on those frames (steps 1..7 of each window)
    frames = robot.val_actions()[:, 1:]
    assert err["round_trip"]["per_dim"] == pytest.approx(
        robot.tokenizers.action.round_trip_error(frames).tolist())


# --------------------------------------------------------------------------- config


def robot_cfg(root, *extra):
    cfg = compose_cfg([*SMOKE, "data=lerobot", f"data.root={root}", *WINDOW, *extra])
    resolve_data_path(cfg)
    return cfg


def test_the_course_config_is_unchanged():
    # the model key every default run of the course's data was made with before the recipe
    # changed (issue #35): the recipe of then, train=cosine_2400, still gives it
    assert model_key(compose_cfg(["train=cosine_2400"])) == "rope-causal-seed42-65c2c2f0ef"
    cfg = compose_cfg([])
    # and the default recipe's (issue #35; docs/benchmarks.md's default run trained it)
    assert model_key(cfg) == "rope-causal-seed42-ed4e266a1b"
    training = training_config(cfg)
    assert "tokenizer" not in training and "tokens" not in training
    assert not {"name", "root", "repo_id", "window", "action_key", "state_key",
                "total_episodes", "total_frames", "codebase_version"} & set(training["data"])
    with pytest.raises(ConfigError, match=r"^tokenizer=quantile applies to data=lerobot"):
        validate(compose_cfg(["tokenizer=quantile"]))


def test_data_lerobot_defaults_to_the_uniform_tokenizer(tmp_path):
    root = dataset(tmp_path / "d")
    cfg = robot_cfg(root)
    layout = validate(cfg)
    assert layout.actions == 2 and layout.state == () and layout.vocab_size == 512
    training = training_config(cfg)
    assert training["tokenizer"] == {"name": "uniform", "bins": 256}
    assert training["data"]["root"] == str(root) and "num_trajectories" not in training["data"]
    assert model_key(cfg) != model_key(robot_cfg(root, "tokenizer=quantile"))
    assert model_key(cfg) == model_key(robot_cfg(root, "tokenizer=uniform"))


def test_the_model_key_follows_the_datasets_contents(tmp_path):
    """A dataset changed in place (more episodes) splits its episodes anew: former training
    episodes can land in validation, so its models must not be reused."""
    root = dataset(tmp_path / "d")
    cfg = robot_cfg(root)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    data = training_config(cfg)["data"]
    assert {k: data[k] for k in ("codebase_version", "total_episodes", "total_frames")} == {
        k: info[k] for k in ("codebase_version", "total_episodes", "total_frames")}
    before = model_key(cfg)
    info_path.write_text(json.dumps(info))
    assert model_key(cfg) == before  # the same contents, the same model
    for key in ("total_episodes", "total_frames"):
        info_path.write_text(json.dumps({**info, key: info[key] + 5}))
        assert model_key(cfg) != before, key
    info_path.write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    assert model_key(cfg) != before


def test_the_state_column_is_part_of_the_key_only_where_states_are_read(tmp_path):
    root = dataset(tmp_path / "d")
    action = robot_cfg(root, "tokens=action")
    assert "state_key" not in training_config(action)["data"]
    assert model_key(action) == model_key(robot_cfg(root, "tokens=action",
                                                    "data.state_key=observation.other"))
    assert model_key(action) == model_key(robot_cfg(root, "tokens=action", "data.state_key=null"))
    states = robot_cfg(root, "tokens=state_action")
    assert training_config(states)["data"]["state_key"] == "observation.state"
    assert model_key(states) != model_key(robot_cfg(root, "tokens=state_action",
                                                    "data.state_key=observation.other"))
    # the token-layout table pairs the two layouts on one dataset: the state column is part of
    # the layout there, not a difference of configuration
    labels = config_labels([training_config(action), training_config(states)], with_tokens=False)
    assert labels[0] == labels[1]


def test_a_hub_dataset_is_fetched_into_the_data_cache(tmp_path, monkeypatch):
    root = dataset(tmp_path / "cache" / "copy")
    calls = []

    def fetch(repo_id, cache_dir, log=print):
        calls.append((repo_id, Path(cache_dir)))
        return root

    monkeypatch.setattr(job_module, "fetch", fetch)
    cfg = compose_cfg([*SMOKE, "data=lerobot", "data.repo_id=lerobot/pusht", *WINDOW,
                       f"data.cache_dir={tmp_path / 'cache'}"])
    resolve_data_path(cfg)
    assert calls == [] and cfg.data.root is None  # the config layer downloads nothing
    job_module.fetch_dataset(cfg)
    assert calls == [("lerobot/pusht", tmp_path / "cache")] and cfg.data.root == str(root)
    validate(cfg)
    # bound to the dataset's name, not to where this machine's cache keeps it
    assert training_config(cfg)["data"]["root"] is None
    assert training_config(cfg)["data"]["repo_id"] == "lerobot/pusht"


def test_without_a_network_the_hub_is_one_line(monkeypatch):
    def offline(repo_id, cache_dir, log=print):
        raise DataError(f"cannot reach the Hugging Face Hub to fetch {repo_id} (no network?)")

    monkeypatch.setattr(job_module, "fetch", offline)
    cfg = compose_cfg(["data=lerobot", "data.repo_id=lerobot/pusht"])
    resolve_data_path(cfg)
    with pytest.raises(ConfigError, match="cannot reach the Hugging Face Hub"):
        job_module.fetch_dataset(cfg)


def break_dataset(root: Path, case: str) -> list[str]:
    """Damage ``root`` as ``case`` says; the overrides the case needs."""
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    if case == "no info":
        info_path.unlink()
        return []
    if case == "unknown version":
        info["codebase_version"] = "v4.0"
    elif case == "no action column":
        info["features"].pop("action")
    elif case == "string actions":
        info["features"]["action"]["dtype"] = "string"
    elif case in ("nan", "inf", "other width"):
        files = sorted((root / "data").rglob("*.parquet"))
        table = pq.read_table(files[-1])
        values = np.stack(table.column("action").to_numpy(zero_copy_only=False)).astype(
            np.float32)
        if case == "other width":  # one file's frames a value wider than the others'
            values = np.concatenate([values, values[:, :1]], axis=1)
        else:
            values[3, 1] = np.nan if case == "nan" else np.inf
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
        pq.write_table(table.set_column(table.column_names.index("action"), "action", column),
                       files[-1])
    elif case == "all short":  # the longest episode has 30 steps
        return ["data.window=32", "model.max_seq_len=160"]
    info_path.write_text(json.dumps(info))
    return []


BAD = [
    ("no info", "is not a LeRobot dataset (no meta/info.json)"),
    ("unknown version", "codebase_version 'v4.0' is not one this reader knows"),
    ("no action column", "no column 'action'"),
    ("string actions", "column 'action' holds 'string', not numbers"),
    ("nan", "action holds NaN or infinite values in 1 frames"),
    ("inf", "action holds NaN or infinite values in 1 frames"),
    ("other width", "action has 2 values per frame in some files and 3 in others"),
    ("all short", "every episode is shorter than data.window=32 steps"),
]


@pytest.mark.parametrize("case, message", BAD, ids=[c for c, _ in BAD])
def test_bad_datasets_are_one_line_config_errors(tmp_path, case, message):
    root = dataset(tmp_path / "d")
    extra = break_dataset(root, case)
    with pytest.raises(ConfigError) as err:
        cfg = robot_cfg(root, *extra)
        layout = validate(cfg)
        pipeline.read_robot(cfg, layout)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["data=lerobot"], "data=lerobot needs data.root=DIR (a local dataset) or data.repo_id"),
    (["data=lerobot", "data.root=/no/such/dataset"],
     "data.root does not exist or is not a folder: /no/such/dataset"),
])
def test_a_missing_root_is_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(robot_cfg_from(overrides))


def robot_cfg_from(overrides):
    cfg = compose_cfg([*SMOKE, *overrides])
    resolve_data_path(cfg)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("case", ["nan", "all short"])
def test_bad_input_exits_2_before_the_folder_is_bound(tmp_path, case):
    root = dataset(tmp_path / "d")
    extra = break_dataset(root, case)
    run = tmp_path / "run"
    proc = run_cli([*SMOKE, "data=lerobot", f"data.root={root}", *WINDOW, *extra,
                    f"hydra.run.dir={run}"], cwd=tmp_path, check=False)
    assert_one_line_error(proc, dict(BAD)[case])
    assert not (run / BINDING).exists() and not (run / "checkpoints").exists()


@pytest.mark.slow
def test_check_cache_reads_the_dataset_and_visualize_refuses_in_one_line(state_action_run, tmp_path):
    _, run, _ = state_action_run
    proc = run_module("vla_ablate.check_cache", run)
    assert proc.returncode == 0, proc.stderr
    assert "cached decoding matches the full pass" in proc.stdout
    assert "greedy decodes: identical" in proc.stdout
    refused = run_module("vla_ablate.visualize", run, "--out", tmp_path / "v.png")
    assert_one_line_error(refused, "was trained on a LeRobot dataset (data=lerobot)")


def test_evaluations_read_the_tokenizer_saved_beside_the_model(tmp_path):
    root = dataset(tmp_path / "d")
    layout = robot_layout(2, None, 256)
    robot = RobotData.build(read_lerobot(root), layout, 8, 0.9, 42, 42, "uniform")
    assert pipeline.model_robot_data(robot, tmp_path) is robot  # no file yet: as fitted
    other = RobotData.build(read_lerobot(root), layout, 8, 0.9, 42, 42, "quantile").tokenizers
    other.save(tmp_path / TOKENIZER)
    used = pipeline.model_robot_data(robot, tmp_path)
    assert used.tokenizers.same_as(other) and not used.tokenizers.same_as(robot.tokenizers)
    assert np.array_equal(used.train, robot.train) and np.array_equal(used.val, robot.val)
    expected = other.action.encode(robot.episodes.actions[0]) + np.arange(2) * 256
    assert torch.equal(used.sequences[0], torch.as_tensor(expected).flatten())
    robot.tokenizers.save(tmp_path / TOKENIZER)
    assert pipeline.model_robot_data(robot, tmp_path) is robot


def test_the_action_loss_of_d_action_tokens_leaves_out_step_0():
    """tokens=action with D > 1: a_0's dimensions 1..D-1 are targets of the objective but not
    of the comparable action loss (a_1 .. a_{T-1}, every dimension)."""
    from vla_ablate.training.losses import validation_losses

    layout = TokenLayout(bins=8, actions=2, action_bins=8, continuous=True)
    assert not layout.all_action_targets and ACTION.all_action_targets
    torch.manual_seed(0)
    seqs = layout.step_sequences(None, torch.randint(0, 8, (4, 6, 2)))  # (4, 12)
    model = DecoderOnlyTransformer(vocab_size=layout.vocab_size, dim=16, num_layers=1,
                                   num_heads=2, ff_hidden_dim=32, max_seq_len=16, dropout=0.0)
    objective, action = validation_losses(model, seqs, torch.device("cpu"), layout)
    with torch.no_grad():
        logits, _ = model(seqs[:, :-1])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), seqs[:, 1:], reduction="none")
    assert objective == pytest.approx(ce.mean().item(), rel=1e-6)
    assert action == pytest.approx(ce[:, 1:].mean().item(), rel=1e-6)  # target 0 is a_0[1]
    assert action != pytest.approx(objective, rel=1e-6)


def test_extrapolation_on_episodes_writes_one_scalar_per_key(tmp_path):
    """A factor no validation episode is long enough for is ``skipped_<f>x`` (its reason), not
    a dict under a bare ``skipped`` that runs.csv would hold as one cell."""
    from analysis.collect import _scalars

    root = dataset(tmp_path / "d", lengths=(14, 20))
    robot = RobotData.build(read_lerobot(root), robot_layout(2, None, 16), 8, 0.7, 42, 42,
                            "uniform")
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=robot.layout.vocab_size, dim=16, num_layers=1,
                                   num_heads=2, ff_hidden_dim=32, max_seq_len=64, dropout=0.0,
                                   pos="rope")
    extra = evaluate.extrapolation_windows(model, robot, [2, 4], 4, torch.device("cpu"))
    assert extra["skipped_4x"] == "no validation episode has 32 steps"
    assert {"loss_1x", "loss_2x_beyond", "windows_1x", "windows_2x"} <= set(extra)
    assert all(isinstance(v, (int, float, str)) for v in extra.values())
    assert _scalars({"a": 1.0, "b": "why", "c": {"4x": "x"}, "d": [1], "e": None}) == {
        "a": 1.0, "b": "why", "e": None}


def test_speed_rows_count_tokens_where_a_step_is_d_tokens():
    pairs = [{"order": "on-off", "cache_on_s": 0.5, "cache_off_s": 1.0, "speedup": 2.0}]
    course = evaluate._speed_row(2, 8, pairs, True)
    assert "new_steps" not in course and course["new_tokens"] == 8  # the course's keys, as before
    assert course["tokens_per_s_cache_on"] == 2 * 8 / 0.5
    row = evaluate._speed_row(2, 8, pairs, True, per_step=3)
    assert row["new_steps"] == 8 and row["new_tokens"] == 24
    assert row["tokens_per_s_cache_on"] == 2 * 24 / 0.5 and row["tokens_per_s_cache_off"] == 48
    assert set(row) - set(course) == {"new_steps"}


@pytest.mark.parametrize("tokens", ["action", "state_action"])
def test_the_action_error_equals_the_full_vocabulary_computation(tmp_path, tokens):
    """Each dimension's logits from its own slice of the head give what slicing the full
    vocabulary's logits gave."""
    root = dataset(tmp_path / "d", d=3)
    layout = robot_layout(3, ["pos0", "pos1"] if tokens == "state_action" else None, 16)
    robot = RobotData.build(read_lerobot(root), layout, 8, 0.7, 42, 42, "quantile")
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(vocab_size=layout.vocab_size, dim=16, num_layers=1,
                                   num_heads=2, ff_hidden_dim=32, max_seq_len=64, dropout=0.0)
    # the computation before: (B, (T - 1) * D, V) logits, then each dimension's ids
    seqs, truth = robot.val_windows(), robot.val_actions()[:, 1:]
    P, S, D, T = layout.per_step, len(layout.state), 3, 8
    rows = torch.tensor([t * P + S + i - 1 for t in range(1, T) for i in range(D)])
    with torch.no_grad():
        logits = model.lm_head(model.hidden_states(seqs[:, :-1])[:, rows]).unflatten(1, (T - 1, D))
    own = torch.stack([logits[..., i, i * 16 : (i + 1) * 16] for i in range(D)], dim=2)

    def full_vocabulary(hidden):
        raise AssertionError(f"full-vocabulary logits for hidden states {tuple(hidden.shape)}")

    model.lm_head.forward = full_vocabulary  # never built now
    err = evaluate.action_error(model, robot, torch.device("cpu"), batch_size=3)
    tok = robot.tokenizers.action
    greedy = np.abs(tok.decode(own.argmax(-1).numpy()) - truth).reshape(-1, D).mean(0)
    expected = (torch.softmax(own.double(), -1) * torch.as_tensor(tok.centers)).sum(-1).numpy()
    expected = np.abs(expected - truth).reshape(-1, D).mean(0)
    assert err["greedy"]["per_dim"] == pytest.approx(greedy.tolist(), rel=1e-12)
    assert err["expected"]["per_dim"] == pytest.approx(expected.tolist(), rel=1e-6)


@pytest.mark.parametrize("given", ["repo_id", "relative root"])
def test_a_trained_model_finds_its_dataset_from_the_tokenizer_file(tmp_path, given):
    """The run's .hydra/config.yaml holds data.root as given (null with data.repo_id, or
    relative); tokenizer.json holds the folder the job resolved, and the commands read that."""
    import yaml

    from vla_ablate.errors import CommandError
    from vla_ablate.trained import robot_data

    root = dataset(tmp_path / "cache" / "copy")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    data = {"root": None, "repo_id": "lerobot/pusht"} if given == "repo_id" else {
        "root": "cache/copy", "repo_id": None}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "seed": 42, "tokens": {"name": "action", "loss": "all"},
        "data": {**data, "window": 8, "train_split": 0.9, "seed": 42}}))
    layout = robot_layout(2, None, 256)
    fitted = RobotData.build(read_lerobot(root), layout, 8, 0.9, 42, 42, "uniform")
    fitted.tokenizers.dataset = {"root": str(root), "repo_id": data["repo_id"]}  # as read_robot
    fitted.tokenizers.save(run / TOKENIZER)
    robot, source = robot_data(run / "checkpoints" / "last.pt")
    assert str(root) in source and robot.tokenizers.same_as(fitted.tokenizers)
    assert np.array_equal(robot.val, fitted.val)
    assert all(torch.equal(a, b) for a, b in zip(robot.sequences, fitted.sequences))
    root.rename(tmp_path / "gone")
    with pytest.raises(CommandError) as err:
        robot_data(run / "checkpoints" / "last.pt")
    assert "not there any more" in str(err.value) and "\n" not in str(err.value)
    assert Tokenizers.load(run / TOKENIZER).dataset["root"] == str(root)
