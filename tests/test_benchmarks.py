"""The benchmark scripts run and print their tables (tiny sizes; no timing is asserted)."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def bench(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_data_generation_benchmark():
    out = bench("data_generation.py", "--trajectories", "200", "--steps", "10", "--repeats", "2")
    assert "vectorised (median of 2)" in out and "per-step loop" in out
    assert "speed-up:" in out


def test_generation_benchmark():
    out = bench("generation.py", "--no-llama", "--batch-sizes", "1", "2", "--new-tokens", "3", "6",
                "--repeats", "2")
    for path in ("ours, cache on", "ours, cache off"):
        assert out.count(path) == 4
    assert out.count("cache on / off =") == 4


def test_train_throughput_benchmark():
    out = bench("train_throughput.py", "--rounds", "1", "--steps", "1", "--batch-size", "4",
                "--seq-len", "12")
    for name in ("ours (attn_impl=manual)", "ours (attn_impl=sdpa)", "reference (SDPA, nn.RMSNorm)"):
        assert name in out
    assert "MFU" in out and "1.00x" in out  # the reference against itself
