"""The trajectory process: shapes, ranges, determinism, statistics, files and safe loading."""

import os
import pickle

import numpy as np
import pytest
import torch

from vla_ablate import data as D
from vla_ablate.data import process

L = np.array([0.3, 0.3, 0.25, 0.25, 0.2, 0.15, 0.1])


def reference_process(num_trajectories, seq_length, seed):
    """An independent, per-trajectory, per-step statement of the course's process."""
    rng = np.random.default_rng(seed)
    actions = np.zeros((num_trajectories, seq_length), dtype=np.int64)
    for n in range(num_trajectories):
        q = rng.uniform(-np.pi / 2, np.pi / 2, 7)
        target = rng.uniform(-1.5, 1.5, 3)
        for t in range(seq_length):
            ee = np.array([
                sum(L[i] * np.cos(q[i]) for i in range(7)),
                sum(L[i] * np.sin(q[i]) for i in range(7)),
                sum(L[i] * np.sin(q[i]) for i in range(3)),
            ])
            e = target - ee
            m = np.sqrt((e ** 2).sum())
            if m > 1e-6:
                o = 4 * (e[0] > 0) + 2 * (e[1] > 0) + (e[2] > 0)
            else:
                o = 0
            b = int(np.floor(min(max(m / 3, 0), 1) * 31))
            u = rng.integers(-2, 3)
            actions[n, t] = min(max(32 * o + b + u, 0), 255)
            d = np.zeros(7)
            if m > 1e-6:
                d[:3] = 0.05 * e
                d[3:] = 0.02 * np.max(np.abs(e))
            d = d + 0.02 * rng.standard_normal(7)
            d = np.clip(d, -0.15, 0.15)
            q = np.clip(q + d, -np.pi, np.pi)
    return actions


def test_shapes_dtypes_ranges():
    ds = D.generate_dataset(200, 30, seed=1)
    s, a = ds["states"], ds["actions"]
    assert s.shape == (200, 30, 10) and s.dtype == torch.float32
    assert a.shape == (200, 30) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() <= 255
    q = s[..., :7]
    assert q[:, 0].abs().max() <= np.pi / 2  # start joints ~ U(-pi/2, pi/2)
    assert q.abs().max() <= np.pi + 1e-6
    ee = torch.from_numpy(D.forward_kinematics_7dof(q.double().numpy())).float()
    assert torch.allclose(ee, s[..., 7:], atol=1e-5)  # state = [q, FK(q)]


def test_same_seed_same_data_other_seed_differs():
    a = D.generate_dataset(50, 20, seed=3)
    b = D.generate_dataset(50, 20, seed=3)
    c = D.generate_dataset(50, 20, seed=4)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["states"], b["states"])
    assert not torch.equal(a["actions"], c["actions"])


def test_forward_kinematics_formula():
    q = np.zeros(7)
    assert np.allclose(D.forward_kinematics_7dof(q), [L.sum(), 0.0, 0.0])
    q = np.full(7, np.pi / 2)
    assert np.allclose(D.forward_kinematics_7dof(q), [0.0, L.sum(), L[:3].sum()])


def test_generate_trajectory_course_signature():
    rng = np.random.default_rng(0)
    states, actions = D.generate_trajectory(np.zeros(7), np.array([0.5, 0.5, 0.5]), 25, rng=rng)
    assert states.shape == (25, 10) and actions.shape == (25,)
    assert np.allclose(states[0, :7], 0.0)


def _stats(actions):
    """Token histogram (32 bins of 8 tokens), per-step change histogram, per-step means."""
    a = np.asarray(actions)
    hist = np.bincount((a // 8).ravel(), minlength=32) / a.size
    change = np.diff(a, axis=1)
    change_hist = np.bincount(np.clip(change, -40, 40).ravel() + 40, minlength=81) / change.size
    return hist, change_hist, a.mean(axis=0)


def _distances(a, b):
    (h1, c1, m1), (h2, c2, m2) = _stats(a), _stats(b)
    return 0.5 * np.abs(h1 - h2).sum(), 0.5 * np.abs(c1 - c2).sum(), np.abs(m1 - m2).max()


def test_statistics_match_independent_per_step_statement():
    """Seeds are fixed, so the thresholds are deterministic; each also rejects a wrong process."""
    ref = reference_process(1000, 30, seed=12)
    ours = D.generate_dataset(5000, 30, seed=11)["actions"].numpy()
    tv_tokens, tv_changes, mean_gap = _distances(ours, ref)
    assert tv_tokens < 0.08 and tv_changes < 0.013 and mean_gap < 8
    # the same checks catch a process with shifted tokens ...
    shifted = _distances(np.clip(ours + 8, 0, 255), ref)
    assert shifted[0] > 0.08 and shifted[2] > 8
    # ... and one with three times the joint noise
    rng = np.random.default_rng(3)
    start = rng.uniform(-np.pi / 2, np.pi / 2, (5000, 7))
    _, noisy = process._simulate(start, rng.uniform(-1.5, 1.5, (5000, 3)), 30, 0.06, rng)
    assert _distances(noisy, ref)[1] > 0.013


def test_token_noise_is_uniform_on_five_values():
    """Reconstruct u = a - (32 o + b) from the states and check its distribution."""
    ds = D.generate_dataset(500, 20, seed=5)
    s, a = ds["states"].double().numpy(), ds["actions"].numpy()
    rng = np.random.default_rng(5)
    rng.uniform(size=(500, 7))
    targets = rng.uniform(-1.5, 1.5, size=(500, 3))
    e = targets[:, None, :] - s[..., 7:]
    m = np.linalg.norm(e, axis=-1)
    o = 4 * (e[..., 0] > 0) + 2 * (e[..., 1] > 0) + (e[..., 2] > 0)
    b = np.floor(np.clip(m / 3, 0, 1) * 31)
    base = 32 * o + b
    inside = (base >= 2) & (base <= 253)
    u = (a - base)[inside]
    values, counts = np.unique(u, return_counts=True)
    assert list(values) == [-2, -1, 0, 1, 2]
    assert np.allclose(counts / counts.sum(), 0.2, atol=0.02)


def test_split_is_disjoint_and_deterministic():
    tr, va = D.split_indices(100, 0.9)
    assert len(tr) == 90 and len(va) == 10
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert set(tr.tolist()) | set(va.tolist()) == set(range(100))
    with pytest.raises(ValueError, match="empty"):
        D.split_indices(3, 0.1)


def test_create_dataloaders_batches():
    ds = D.generate_dataset(100, 10, seed=0)
    train, val = D.create_dataloaders(ds, batch_size=16, train_split=0.9)
    states, actions = next(iter(train))
    assert states.shape == (16, 10, 10) and actions.shape == (16, 10)
    assert sum(len(b[1]) for b in val) == 10
    val_rows = {tuple(r.tolist()) for b in val for r in b[1]}
    train_rows = {tuple(r.tolist()) for b in train for r in b[1]}
    assert val_rows.isdisjoint(train_rows)


def test_cache_roundtrip_and_corrupt_cache_regenerates(tmp_path):
    msgs = []
    a = D.load_or_generate(tmp_path, 40, 12, 7, log=msgs.append)
    path = D.cache_path(tmp_path, 40, 12, 7)
    assert path.exists()
    b = D.load_or_generate(tmp_path, 40, 12, 7, log=msgs.append)
    assert torch.equal(a["actions"], b["actions"]) and not msgs
    path.write_bytes(path.read_bytes()[:100])  # truncated file
    c = D.load_or_generate(tmp_path, 40, 12, 7, log=msgs.append)
    assert torch.equal(a["actions"], c["actions"])
    assert msgs and "regenerating" in msgs[0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("keys", [("states", "actions"), ("trajectories", "tokenized")])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_course_pickle_loads(tmp_path, keys, kind):
    ds = D.generate_dataset(20, 8, seed=0)
    conv = (lambda t: t.numpy()) if kind == "numpy" else (lambda t: t)
    path = tmp_path / "trajectories.pkl"
    with open(path, "wb") as fh:
        pickle.dump({keys[0]: conv(ds["states"]), keys[1]: conv(ds["actions"])}, fh)
    loaded = D.load_dataset(path)
    assert torch.equal(loaded["actions"], ds["actions"])
    assert torch.allclose(loaded["states"], ds["states"])


def test_torch_save_and_npz_load(tmp_path):
    ds = D.generate_dataset(20, 8, seed=0)
    torch.save({"states": ds["states"], "actions": ds["actions"]}, tmp_path / "d.pt")
    assert torch.equal(D.load_dataset(tmp_path / "d.pt")["actions"], ds["actions"])
    D.save_dataset(ds, tmp_path / "d.npz")
    assert torch.equal(D.load_dataset(tmp_path / "d.npz")["actions"], ds["actions"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_payload_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"states": _Payload(marker), "actions": np.zeros((2, 3))}, fh)
    with pytest.raises(D.DataError, match="refusing to load .*'posix.system'"):
        D.load_dataset(path)
    assert not marker.exists()


def test_malicious_torch_storage_payload_refused(tmp_path):
    """A pickle whose tensor storage bytes hold a full pickle payload is also refused."""
    import io

    marker = tmp_path / "pwned2"
    inner = io.BytesIO()
    torch.save(_Payload(marker), inner, _use_new_zipfile_serialization=False)

    class Storage:
        def __reduce__(self):
            import torch.storage

            return (torch.storage._load_from_bytes, (inner.getvalue(),))

    path = tmp_path / "evil2.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"states": Storage(), "actions": np.zeros((2, 3))}, fh)
    with pytest.raises(D.DataError):
        D.load_dataset(path)
    assert not marker.exists()


def test_missing_corrupt_and_wrong_files_one_line(tmp_path):
    cases = {
        "missing": tmp_path / "nope.pkl",
        "corrupt": tmp_path / "corrupt.pkl",
        "badzip": tmp_path / "bad.npz",
        "wrongkeys": tmp_path / "keys.pkl",
    }
    cases["corrupt"].write_bytes(b"\x80\x04garbage")
    cases["badzip"].write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with open(cases["wrongkeys"], "wb") as fh:
        pickle.dump({"x": np.zeros(3)}, fh)
    for name, path in cases.items():
        with pytest.raises(D.DataError) as info:
            D.load_dataset(path)
        assert "\n" not in str(info.value), name
        assert str(path) in str(info.value), name
