"""LeRobot-format datasets: both layouts read back, bad input as one line, tokenizers fitted on
the training episodes only, episodes never split across training and validation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_ablate.data.lerobot import read_lerobot, write_lerobot
from vla_ablate.data.process import generate_continuous
from vla_ablate.data.tokenizer import BinTokenizer, fit_tokenizers, split_episodes, windows
from vla_ablate.errors import DataError


def episodes(n=7, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, size=n)
    actions = [rng.normal(size=(t, d)).astype(np.float32) for t in lengths]
    states = [rng.normal(size=(t, k)).astype(np.float32) for t in lengths]
    return actions, states


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_both_layouts_read_back_every_episode_in_order(tmp_path, version):
    actions, states = episodes()
    root = write_lerobot(tmp_path / version, actions, states, fps=15, version=version,
                         episodes_per_file=3, video_keys=["observation.images.top"])
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.top"]["dtype"] == "video"  # never opened
    if version == "v3.0":  # several episodes per file, as v3.0 packs them
        files = sorted((root / "data").rglob("*.parquet"))
        assert len(files) == 3 and pq.read_table(files[0]).num_rows == sum(map(len, actions[:3]))
    else:
        assert len(list((root / "data").rglob("episode_*.parquet"))) == len(actions)
    got = read_lerobot(root)
    assert got.version == version and got.fps == 15 and got.frames == sum(map(len, actions))
    assert len(got.actions) == len(actions)
    for a, b in zip(got.actions, actions):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.states, states):
        np.testing.assert_array_equal(a, b)
    assert got.action_names == ["a0", "a1", "a2"]


def test_rows_out_of_order_are_put_back_in_episode_and_frame_order(tmp_path):
    actions, states = episodes(n=3)
    root = write_lerobot(tmp_path / "d", actions, states, fps=10)
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    pq.write_table(table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows))),
                   path)
    got = read_lerobot(root)
    for a, b in zip(got.actions, actions):
        np.testing.assert_array_equal(a, b)


def break_column(root, column, values):
    path = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(table, path)


@pytest.mark.parametrize("case, message", [
    ("no info", "not a LeRobot dataset (no meta/info.json)"),
    ("unknown version", "codebase_version 'v9.9' is not one this reader knows"),
    ("missing column", "no column 'action'"),
    ("strings", "holds 'string', not numbers"),
    ("nan", "NaN or infinite values in 1 frames"),
    ("ragged", "has frames of 2 and 4 values"),
])
def test_bad_datasets_are_one_line_errors(tmp_path, case, message):
    actions, states = episodes(n=2)
    root = write_lerobot(tmp_path / "d", actions, states, fps=10)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    if case == "no info":
        info_path.unlink()
    elif case == "unknown version":
        info["codebase_version"] = "v9.9"
    elif case == "missing column":
        info["features"].pop("action")
    elif case == "strings":
        info["features"]["action"]["dtype"] = "string"
    elif case == "nan":
        bad = np.concatenate(actions)
        bad[4, 1] = np.nan
        offsets = pa.array(np.arange(0, bad.size + 1, 3, dtype=np.int32))
        break_column(root, "action", pa.ListArray.from_arrays(offsets, pa.array(bad.ravel())))
    elif case == "ragged":
        flat = np.concatenate(actions).ravel()
        n = len(flat) // 3
        offsets = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
        offsets[1] = 2  # one frame of 2 values, the next of 4... lengths differ
        break_column(root, "action", pa.ListArray.from_arrays(pa.array(offsets),
                                                              pa.array(flat[: 3 * n])))
    if case != "no info":
        info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_lerobot(root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["uniform", "quantile"])
def test_a_round_trip_is_within_half_a_bin_inside_the_fitted_range(kind):
    rng = np.random.default_rng(3)
    values = np.stack([rng.normal(size=5000), rng.exponential(size=5000),
                       rng.uniform(-2, 2, size=5000)], axis=1)
    tok = BinTokenizer.fit(values, kind, bins=256)
    tokens = tok.encode(values)
    assert tokens.min() >= 0 and tokens.max() <= 255 and tokens.shape == values.shape
    back = tok.decode(tokens)
    half = (tok.edges[:, 1:] - tok.edges[:, :-1]) / 2  # (D, bins)
    inside = (values >= tok.edges[:, 0]) & (values <= tok.edges[:, -1])
    allowed = half[np.arange(3), tokens] + 1e-9
    assert (np.abs(back - values)[inside] <= allowed[inside]).all()
    assert inside.mean() > (0.97 if kind == "uniform" else 0.999)
    assert (tok.round_trip_error(values) < 0.02 * values.std(0)).all()
    if kind == "quantile":  # equal mass: every bin holds about 1/256 of the frames
        counts = np.bincount(tokens[:, 0], minlength=256)
        assert counts.min() >= 10 and counts.max() <= 30


def test_uniform_bins_span_the_1st_to_99th_percentile():
    values = np.linspace(0, 100, 10001)[:, None]
    tok = BinTokenizer.fit(values, "uniform", bins=256)
    assert tok.edges[0, 0] == pytest.approx(1.0) and tok.edges[0, -1] == pytest.approx(99.0)
    assert tok.encode(np.array([[-50.0], [500.0]])).ravel().tolist() == [0, 255]


def test_tokenizers_are_fitted_on_training_episodes_only(tmp_path):
    actions, states = episodes(n=10)
    train, val = split_episodes(len(actions), 0.8, seed=4)
    before = fit_tokenizers(actions, states, train, "quantile")
    changed_a = [a * 100 if i in set(val) else a for i, a in enumerate(actions)]
    changed_s = [s - 50 if i in set(val) else s for i, s in enumerate(states)]
    after = fit_tokenizers(changed_a, changed_s, train, "quantile")
    np.testing.assert_array_equal(before[0].edges, after[0].edges)
    np.testing.assert_array_equal(before[1].edges, after[1].edges)
    tok = before[0]
    tok.save(tmp_path / "tokenizer.json")
    again = BinTokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == "quantile" and np.array_equal(again.edges, tok.edges)


def test_the_split_never_puts_an_episode_on_both_sides():
    for n, seed in [(2, 0), (10, 1), (101, 7)]:
        train, val = split_episodes(n, 0.9, seed)
        assert not set(train) & set(val) and sorted([*train, *val]) == list(range(n))
        assert len(val) >= 1 and len(train) >= 1
    assert np.array_equal(split_episodes(50, 0.9, 3)[1], split_episodes(50, 0.9, 3)[1])
    assert not np.array_equal(split_episodes(50, 0.9, 3)[1], split_episodes(50, 0.9, 4)[1])
    with pytest.raises(ValueError, match="need 2 or more"):
        split_episodes(1, 0.9, 0)


def test_windows_stay_inside_one_episode_and_skip_short_ones():
    rng = np.random.default_rng(0)
    lengths = [3, 10, 25, 8]
    rows = windows(lengths, 8, rng)
    assert sorted(set(rows[:, 0].tolist())) == [1, 2, 3]  # the 3-frame episode gives none
    assert np.bincount(rows[:, 0], minlength=4).tolist() == [0, 1, 3, 1]
    assert all(0 <= s <= lengths[e] - 8 for e, s in rows)
    assert not np.array_equal(rows, windows(lengths, 8, rng))  # fresh offsets each epoch


def test_the_synthetic_arm_exports_as_a_lerobot_dataset(tmp_path):
    from test_cli_tools import run_module

    out = tmp_path / "arm"
    proc = run_module("vla_ablate.data", "--format", "lerobot", "--output", out,
                      "--num_trajectories", 12, "--seq_length", 9, "--seed", 5)
    assert proc.returncode == 0, proc.stderr
    assert "LeRobot v3.0 dataset of 12 episodes" in proc.stdout
    got = read_lerobot(out)
    data = generate_continuous(12, 9, 5)
    assert len(got.actions) == 12 and got.actions[0].shape == (9, 7)
    np.testing.assert_array_equal(np.stack(got.states), data["states"].numpy())
    np.testing.assert_array_equal(np.stack(got.actions), data["deltas"].numpy())
    # the continuous action is the joint change the state shows at the next step
    q = np.stack(got.states)[..., :7]
    np.testing.assert_allclose(q[:, 1:] - q[:, :-1], np.stack(got.actions)[:, :-1], atol=1e-5)
    again = run_module("vla_ablate.data", "--format", "lerobot", "--output", out)
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def test_quantile_bins_give_a_repeated_value_its_own_bin():
    """A binary gripper (0 and 1, each on many frames) round-trips exactly with quantile bins;
    so does a point mass far from 0 (~1e8), where a fixed spread of the edges would vanish,
    beside continuous values there, still within half a bin."""
    rng = np.random.default_rng(5)
    n = 4000
    gripper = (rng.uniform(size=n) < 0.3).astype(np.float64)
    big = np.where(rng.uniform(size=n) < 0.4, 1e8, 1e8 + rng.uniform(0, 100, size=n))
    smooth = rng.normal(size=n)
    values = np.stack([gripper, big, smooth], axis=1)
    tok = BinTokenizer.fit(values, "quantile", bins=256)
    back = tok.decode(tok.encode(values))
    assert np.array_equal(back[:, 0], gripper)  # 1.0 decodes to 1.0, 0.0 to 0.0
    mass = values[:, 1] == 1e8
    assert np.array_equal(back[mass, 1], values[mass, 1])
    tokens = tok.encode(values)
    half = (tok.edges[:, 1:] - tok.edges[:, :-1]) / 2
    allowed = half[np.arange(3), tokens] + 1e-6
    assert (np.abs(back - values)[:, 1:] <= allowed[:, 1:]).all()
    # a value between the two masses still falls in a bin of width
    assert tok.encode(np.array([[0.5, 1e8 + 50, 0.0]]))[0, 0] not in set(tokens[:, 0])
