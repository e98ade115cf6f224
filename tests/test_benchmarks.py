"""The benchmark scripts run and print their tables (tiny sizes; no timing is asserted)."""

import re
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
                "--repeats", "2", "--dtypes", "fp32", "bf16")  # both attention paths by default
    for path in ("ours, cache on", "ours, cache off"):
        assert out.count(path) == 16  # 2 dtypes x 2 attention paths x 2 batch sizes x 2 lengths
    assert out.count("cache on / off =") == 16
    assert out.count("  bf16, ") == 8 and out.count(" sdpa, batch") == 8
    assert "attention: manual, sdpa" in out and "Llama" not in out


def test_generation_benchmark_pairs_attention_with_llama():
    """Each of our attention paths is compared with Llama's of the same kind, never across."""
    pytest.importorskip("transformers")
    out = bench("generation.py", "--batch-sizes", "1", "--new-tokens", "3", "--repeats", "3",
                "--dtypes", "bf16", "--attn-impls", "manual", "sdpa")
    assert "ours manual vs Llama eager, ours sdpa vs Llama sdpa" in out
    # "Llama (eager), cache on" then the attention column
    table = [line.split() for line in out.splitlines() if line.startswith("Llama (")]
    assert sorted((cols[1], cols[4]) for cols in table) == [("(eager),", "manual"),
                                                            ("(sdpa),", "sdpa")]
    assert out.count("ours cached / Llama cached =") == 2
    # and paired by repeat (the two sides alternate): the median and range of the ratios
    assert len(re.findall(r"paired by repeat: median [\d.]+x, [\d.]+-[\d.]+\)", out)) == 2


def test_train_throughput_benchmark():
    out = bench("train_throughput.py", "--rounds", "1", "--steps", "1", "--batch-size", "4",
                "--seq-len", "12", "--precisions", "fp32", "bf16")
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(.+?)\s{2,}(fp32|bf16)\s+([\d,.]+)\s+[\d,]+\s+\S+\s+([\d.]+)x", line)
        if m:
            rows[(m.group(1).strip(), m.group(2))] = (float(m.group(3).replace(",", "")),
                                                      float(m.group(4)))
    names = ("ours (attn_impl=manual)", "ours (attn_impl=sdpa)", "reference (SDPA, nn.RMSNorm)")
    assert set(rows) == {(n, p) for n in names for p in ("fp32", "bf16")}
    ref_rate = rows[("reference (SDPA, nn.RMSNorm)", "fp32")][0]
    for rate, ratio in rows.values():  # every ratio is against the fp32 reference's rate
        assert ratio == pytest.approx(rate / ref_rate, rel=0.02, abs=0.01)
    assert "MFU" in out


def test_optimizer_step_and_data_regime_benchmarks():
    # a quarter-width, two-block model: the script's whole path in seconds, even where bf16 is
    # emulated (torch.optim.Muon's step of the assignment's model takes ~17 s on an AVX2 host)
    out = bench("optimizer_step.py", "--rounds", "1", "--dim", "64", "--layers", "2")
    assert re.search(r"torch.optim.Muon time / Float32Muon = [\d.]+x", out)
    diff = float(re.search(r"first update: ([\d.]+)", out).group(1))
    assert diff < 0.2  # the two implementations compute the same update up to bf16 rounding
    out = bench("data_regime.py", "--trajectories", "50", "--length", "200")
    assert out.count("%") == 12 and "150-199" in out


def fake_run(folder, losses, batch_size):
    """A run folder with validation records every 100 steps (a minute apart) and its config."""
    import json

    folder.mkdir(parents=True)
    lines = [json.dumps({"step": 100 * (i + 1), "split": "val", "loss": loss,
                         "elapsed_s": 60.0 * (i + 1)}) for i, loss in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(
        f"train:\n  batch_size: {batch_size}\ndata:\n  seq_length: 50\n")
    return folder


def test_loss_curve_reports_crossings_and_compares_runs(tmp_path):
    a = fake_run(tmp_path / "a", [2.1, 1.99, 1.95], 64)
    b = fake_run(tmp_path / "b", [2.0, 1.93, 1.89], 32)
    out = bench("loss_curve.py", str(a), "--out", str(tmp_path / "a.png"))
    assert "val loss <= 2: step 200, minute 2.0" in out
    assert "val loss <= 1.9: not reached" in out
    out = bench("loss_curve.py", "--compare", f"adam={a}", f"other={b}",
                "--out", str(tmp_path / "cmp.png"))
    assert "adam (" in out and "other (" in out
    assert "step   300  minute   3.0  val 1.8900" in out
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loss_curve.py"),
                           "--compare", str(a)], capture_output=True, text=True)
    assert proc.returncode == 2 and "LABEL=RUN_DIR" in proc.stderr


def test_linear_layout_benchmark():
    out = bench("linear_layout.py", "--rounds", "2", "--repeats", "2", "--tokens", "8")
    assert out.count("(out, in): F.linear") == 2 and out.count("(in, out): x @ W") == 2
    assert "1 token, forward (decoding)" in out and "8 tokens, forward + backward" in out
    assert "17.0 MB of fp32 weights" in out  # the 21 matrices of the model
    out = bench("linear_layout.py", "--rounds", "1", "--repeats", "1", "--tokens", "4",
                "--dtype", "bf16")
    assert "8.5 MB of bf16 weights" in out and out.count("(in, out): x @ W") == 2


def test_profile_decode_lists_the_operators():
    out = bench("profile_decode.py", "--new-tokens", "3", "--rows", "5")
    assert "bf16 weights and KV cache, 3 new tokens at batch 1" in out
    assert "Self CPU time total" in out and out.count("aten::") >= 5


def test_lerobot_read_benchmark():
    out = bench("lerobot_read.py", "--frames", "2000", "--episodes", "20", "--repeats", "1")
    assert "| read_lerobot (pyarrow, needed columns) | 2,000 | 20 |" in out
    assert "ratio read_lerobot / baseline:" in out and "goal: under 5 s" in out


def test_every_mutation_still_applies_to_the_code():
    """benchmarks/mutations.py finds each text it mutates exactly once: a mutation that no
    longer applies would report nothing about its test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutations", ROOT / "benchmarks" / "mutations.py")
    mutations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutations)
    for name, (path, old, _new, test, _expr) in mutations.MUTATIONS.items():
        assert (ROOT / path).read_text().count(old) == 1, name
        assert (ROOT / test).is_file(), name


def test_kv_order_thirds():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kv_order", ROOT / "benchmarks" / "kv_order.py")
    kv_order = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kv_order)
    first, last, apart = kv_order.thirds([9.0, 2.0, 2.0, 2.0, 2.0, 2.2])
    assert (first, last) == (5.5, 2.1) and apart == pytest.approx(1 - 2.1 / 5.5)


def test_recipe_pairs_pairs_by_seed_at_the_steps_asked(tmp_path):
    import json
    import math

    from scipy import stats

    def runs(name, finals, at_600):
        for seed, (final, mid) in enumerate(zip(finals, at_600), 1):
            job = tmp_path / name / f"seed={seed}"
            job.mkdir(parents=True)
            (job / "summary.json").write_text(json.dumps(
                {"status": "completed", "seed": seed, "val_loss": final}))
            rows = [{"step": 600, "split": "val", "loss": mid},
                    {"step": 600, "split": "val_subset", "loss": 0.0},
                    {"step": 1200, "split": "val", "loss": final}]
            (job / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))

    runs("a", [1.90, 1.91, 1.89], [1.95, 1.96, 1.94])
    runs("b", [1.92, 1.92, 1.92], [1.93, 1.97, 1.92])
    out = bench("recipe_pairs.py", f"new={tmp_path / 'a'}", f"old={tmp_path / 'b'}")
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # differences -0.02, -0.01, -0.03
    assert f"(n = 3 pairs, df = 2): -0.0200 ± {half:.4f} nats" in out
    assert "new lower in 3 of 3 seeds" in out
    # at the steps asked: new's step 600 against old's step 1200 (from metrics.jsonl)
    out = bench("recipe_pairs.py", f"new={tmp_path / 'a'}", f"old={tmp_path / 'b'}",
                "--step", "600", "1200")
    assert "| new | 600 | 3 | 1: 1.9500, 2: 1.9600, 3: 1.9400 |" in out
    assert "(n = 3 pairs, df = 2): +0.0300 ± " in out and "new lower in 0 of 3 seeds" in out


def test_recipe_pairs_reads_a_committed_studys_metrics_csv(tmp_path):
    """A side given as an analysis metrics.csv: rows narrowed by --where, a seed's loss at the
    step asked or its last; cache on and off (one model) count once, two curves are an error."""
    import csv
    import json

    header = ["step", "split", "loss", "job", "pos", "mask", "cache", "seed", "status"]
    rows = []
    for pos, base in (("rope", 1.90), ("sinusoidal", 1.80)):
        for seed in (1, 2):
            for cache in ("on", "off"):
                job = f"cache={cache},pos={pos},seed={seed}"
                for step, loss in ((600, base + 0.05 + seed / 100), (1200, base + seed / 100)):
                    rows.append([step, "val", loss, job, pos, "causal", cache, seed, "completed"])
                rows.append([1200, "val_subset", 0.0, job, pos, "causal", cache, seed,
                             "completed"])
    table = tmp_path / "metrics.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    for seed, final in ((1, 1.905), (2, 1.915)):
        job = tmp_path / "new" / f"seed={seed}"
        job.mkdir(parents=True)
        (job / "summary.json").write_text(json.dumps(
            {"status": "completed", "seed": seed, "val_loss": final}))
    out = bench("recipe_pairs.py", f"new={tmp_path / 'new'}", f"old={table}",
                "--where", "pos=rope", "mask=causal")
    assert "| old | final | 2 | 1: 1.9100, 2: 1.9200 |" in out
    assert "(n = 2 pairs, df = 1): -0.0050 ± " in out and "new lower in 2 of 2 seeds" in out
    out = bench("recipe_pairs.py", f"late={table}", f"early={table}",
                "--where", "pos=sinusoidal", "--step", "1200", "600")
    assert "| late | 1200 | 2 | 1: 1.8100, 2: 1.8200 |" in out
    assert "| early | 600 | 2 | 1: 1.8600, 2: 1.8700 |" in out
    # both encodings at once: two curves for a seed
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe_pairs.py"),
                           f"new={tmp_path / 'new'}", f"old={table}"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "narrow it with --where" in proc.stderr
    # --where applies to a metrics.csv side only, and only as KEY=VALUE
    for sides, where, message in (
            ([f"new={tmp_path / 'new'}", f"old={tmp_path / 'new'}"], ["pos=rope"],
             "neither side is one"),
            ([f"new={tmp_path / 'new'}", f"old={table}"], ["pos"], "takes KEY=VALUE")):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe_pairs.py"),
                               *sides, "--where", *where], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr
