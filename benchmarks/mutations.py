"""Do the tests catch the bugs they guard? Each mutation is applied to a copy of the code and the
test that guards it runs alone on that copy; a test that still passes guards nothing.

    python benchmarks/mutations.py [--only NAME ...] [--list]

Prints a table: mutation, test, whether the test failed (it should: "caught"). The repository
itself is never changed: the copy lives in a temporary folder, first on PYTHONPATH.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("vla_ablate", "analysis", "tests", "conf", "pyproject.toml")

# name -> (file, the text replaced, its replacement, the test run: file and -k expression)
MUTATIONS = {
    "prefix-only loss reads the full sequence": (
        "vla_ablate/evaluate.py",
        "            logits, _ = model(x[:, :t])\n"
        "        total += F.cross_entropy(logits[:, -1].float()",
        "            logits, _ = model(x)\n"
        "        total += F.cross_entropy(logits[:, t - 1].float()",
        "tests/test_evaluate.py", "prefix_only_loss"),
    "training draw depends on pos": (
        "vla_ablate/pipeline.py",
        'derived_seed(d.seed, "train", int(cfg.seed), epoch)',
        'derived_seed(d.seed, "train", int(cfg.seed), epoch, cfg.pos.name)',
        "tests/test_same_data.py", "same_tokens"),
    "batch order depends on pos": (
        "vla_ablate/pipeline.py",
        "cfg.train.batch_size,\n                                                   cfg.seed, fresh)",
        "cfg.train.batch_size,\n                                                   cfg.seed + len(cfg.pos.name), fresh)",
        "tests/test_same_data.py", "same_tokens"),
    "initial weights depend on pos": (
        "vla_ablate/pipeline.py",
        "    torch.manual_seed(cfg.seed)\n    return DecoderOnlyTransformer(**model_args)",
        "    torch.manual_seed(cfg.seed + len(cfg.pos.name))\n"
        "    return DecoderOnlyTransformer(**model_args)",
        "tests/test_same_data.py", "same_weights"),
    "KV ratio inverted (on/off)": (
        "vla_ablate/evaluate.py",
        '"speedup": times[False] / times[True]', '"speedup": times[True] / times[False]',
        "tests/test_fairness.py", "kv_speed"),
    "KV pairs always on-off": (
        "vla_ablate/evaluate.py", "r % 2 == 0, device, clock,", "True, device, clock,",
        "tests/test_fairness.py", "kv_speed"),
    "KV without the per-cell warm-up": (
        "vla_ablate/evaluate.py", "            if warm_each_cell:  # untimed",
        "            if False:  # untimed", "tests/test_fairness.py", "kv_speed"),
    "KV second side timed right after the other side": (
        "vla_ablate/evaluate.py", "if i and prime:  # untimed: the same side right before it",
        "if False:  # untimed: the same side right before it", "tests/test_fairness.py",
        "kv_speed"),
    "sinusoidal amplitude without sqrt(2)": (
        "vla_ablate/model/positions/sinusoidal.py", "token_std * math.sqrt(2) / one_step_rms",
        "token_std / one_step_rms", "tests/test_fairness.py", "moving_a_token and sinusoidal"),
    "sinusoidal amplitude x2.5": (
        "vla_ablate/model/positions/sinusoidal.py", "token_std * math.sqrt(2) / one_step_rms",
        "2.5 * token_std * math.sqrt(2) / one_step_rms", "tests/test_fairness.py",
        "moving_a_token and sinusoidal"),
    "position shift moves nothing": (
        "vla_ablate/evaluate.py", "        start = layout.positions(k)\n",
        "        start = 0\n", "tests/test_fairness.py", "position_shift_moves"),
    "extrapolation scores every position": (
        "vla_ablate/evaluate.py", "losses[:, seq_length - 1 :].mean()", "losses.mean()",
        "tests/test_fairness.py", "extrapolation"),
    "leakage changes no token": (
        "vla_ablate/evaluate.py", "    changed[:, half:] = torch.randint(",
        "    changed[:, half:half] = torch.randint(", "tests/test_evaluate.py",
        "separate_the_masks"),
    "cheating gap's sign flipped": (
        "vla_ablate/evaluate.py", '"cheating_gap": honest - tf_val', '"cheating_gap": tf_val - honest',
        "tests/test_evaluate.py", "separate_the_masks"),
    "paired difference reversed (RoPE minus variant)": (
        "analysis/tables.py", "mean_ci((own[paired] - ref_loss[paired]).tolist())\n        row",
        "mean_ci((ref_loss[paired] - own[paired]).tolist())\n        row",
        "tests/test_fairness.py", "two_sweeps_sharing_seeds"),
    "t quantile replaced by the normal 1.96": (
        "analysis/tables.py", "float(stats.t.ppf(0.975, n - 1))", "1.96",
        "tests/test_analysis.py", "student_t"),
    "sign count counts the wrong side": (
        "analysis/common.py", "sum(1 for v in values if v * sign > 0)",
        "sum(1 for v in values if v * sign < 0)", "tests/test_analysis.py", "sign_count"),
}


def run_one(name, mutation, workdir: Path) -> tuple[str, str]:
    """(the test, its verdict) for one mutation applied to a fresh copy in ``workdir``."""
    path, old, new, test, expr = mutation
    copy = workdir / name.replace(" ", "_").replace("/", "_")
    for item in COPIED:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / item)
    target = copy / path
    text = target.read_text()
    if text.count(old) != 1:
        return f"{test} -k '{expr}'", "NOT APPLIED (the code changed: update the mutation)"
    target.write_text(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{copy / 'tests'}",
           "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-x", test, "-k", expr], cwd=copy, env=env, capture_output=True,
                          text=True)
    shutil.rmtree(copy, ignore_errors=True)
    verdict = {0: "survived", 1: "caught", 5: "NO TEST RAN"}.get(proc.returncode,
                                                                   f"error {proc.returncode}")
    return f"{test} -k '{expr}'", verdict


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="mutations whose name contains")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    chosen = {n: m for n, m in MUTATIONS.items()
              if not args.only or any(part in n for part in args.only)}
    if args.list:
        print("\n".join(chosen))
        return 0
    width = max(map(len, chosen))
    print(f"{'mutation':{width}}  {'test':62}  failed?")
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        for name, mutation in chosen.items():
            test, verdict = run_one(name, mutation, Path(tmp))
            survived += verdict != "caught"
            print(f"{name:{width}}  {test:62}  {verdict}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
