"""The small commands: python -m vla_ablate.data, .sample, .visualize and analysis --format mdx.

The fast tests call the commands' functions in-process; the slow ones run each command in a
subprocess on the shared smoke sweep (tests/conftest.py) and feed each one bad input.
"""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, SMOKE, run_cli
from vla_ablate import trained
from vla_ablate.data import generate_dataset, load_dataset, process, split_indices
from vla_ablate.errors import CommandError
from vla_ablate.training.checkpoint import load_model_from_checkpoint


def run_module(module, *args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


class Payload:
    """A pickle that creates ``marker`` when unpickled by an unrestricted loader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_files(tmp_path):
    marker = tmp_path / "pwned"
    plain = tmp_path / "crafted.pt"
    plain.write_bytes(pickle.dumps({"format": "vla-ablate-checkpoint", "model": Payload(marker)}))
    zipped = tmp_path / "crafted_zip.pt"
    torch.save({"model": Payload(marker)}, zipped)  # torch's own container, same payload
    return marker, [plain, zipped]


# ------------------------------------------------------------------------------ fast


def test_token_decoding_follows_the_process():
    # token = 32 * octant + bin; octant = 4*(dx>0) + 2*(dy>0) + (dz>0)
    assert process.decode_token(32 * 5 + 7) == (5, 7)
    assert process.direction(5) == "+x-y+z" and process.direction(0) == "-x-y-z"
    assert process.direction(7) == "+x+y+z"
    lo, hi = (float(v) for v in process.distance_range(7).split("-"))
    assert lo == pytest.approx(7 * 3 / 31, abs=0.005) and hi == pytest.approx(8 * 3 / 31, abs=0.005)
    assert process.distance_range(31) == ">=3.00"
    assert process.describe_token(165).split() == ["165", "o5", "+x-y+z", "b5",
                                                    process.distance_range(5)]
    assert "approximate" in process.TOKEN_NOTE


def test_crafted_pickle_never_runs_in_the_loader(tmp_path):
    marker, files = crafted_files(tmp_path)
    for path in files:
        with pytest.raises(CommandError, match="refusing to load .*it names .io.open."):
            trained.load_checkpoint_file(path)
    assert not marker.exists()


def test_non_checkpoints_are_named(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CommandError, match="not a vla-ablate checkpoint"):
        trained.load_checkpoint_file(text)
    tensors = tmp_path / "tensors.pt"
    torch.save({"weights": torch.zeros(3)}, tensors)
    with pytest.raises(CommandError, match="not a vla-ablate checkpoint"):
        trained.load_checkpoint_file(tensors)
    with pytest.raises(CommandError, match="no such checkpoint"):
        trained.load_checkpoint_file(tmp_path / "missing.pt")
    with pytest.raises(CommandError, match="folder without a checkpoint"):
        trained.load_checkpoint_file(tmp_path)


def test_argument_errors_are_one_line(capsys):
    from vla_ablate import sample
    from vla_ablate.data import __main__ as data_cli

    for main, argv in [(data_cli.main, ["--num_trajectories", "abc"]),
                       (data_cli.main, ["--seq_length", "0"]),
                       (sample.main, ["x.pt", "--temperature", "-1"]),
                       (sample.main, ["x.pt", "--top-k", "2.5"])]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: argument --"), err


def test_mdx_survives_missing_and_renamed_columns(tmp_path):
    from analysis.mdx import write_mdx

    made = {"positional": pd.DataFrame({"pos": ["rope"], "val_loss_avg": [2.0]}),  # renamed
            "mask_audit": pd.DataFrame(), "kv_cache": pd.DataFrame(), "status": pd.DataFrame()}
    page = write_mdx(tmp_path, made, {}, student='A "B" {C}', date="2026-02-01")
    text = page.read_text()
    assert page.name == "a-b-c.mdx"
    assert text.startswith('---\ntitle: "Scratch-1 Submission: A \\"B\\" {C}"\n')
    assert "## The Audit: Removing the Causal Mask" in text and "n/a" in text


# ------------------------------------------------------------------------------ slow


def models_of(sweep):
    return {p.name.split("-seed")[0]: p / "checkpoints" / "last.pt"
            for p in (sweep / "models").iterdir()}


def smoke_validation():
    """Validation tokens of the smoke config (data/default + debug/smoke)."""
    actions = generate_dataset(96, 12, 42)["actions"]
    return actions[split_indices(96, 0.9)[1]]


@pytest.mark.slow
def test_data_command_writes_the_course_pickle_and_a_run_reads_it(tmp_path):
    out = tmp_path / "data" / "trajectories.pkl"
    proc = run_module("vla_ablate.data", "--num_trajectories", 40, "--seq_length", 9, "--seed",
                      5, "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "generating 40 trajectories" in proc.stderr  # the progress bar
    with open(out, "rb") as fh:  # the course's format: a plain pickle of torch tensors
        raw = pickle.load(fh)
    assert set(raw) == {"states", "actions"}
    assert raw["states"].dtype == torch.float32 and raw["states"].shape == (40, 9, 10)
    assert raw["actions"].dtype == torch.int64 and raw["actions"].shape == (40, 9)
    expected = generate_dataset(40, 9, 5)
    assert torch.equal(raw["actions"], expected["actions"])
    assert torch.equal(load_dataset(out)["states"], expected["states"])  # the safe loader
    run_dir = tmp_path / "run"
    run_cli([*SMOKE, f"data.path={out}", f"hydra.run.dir={run_dir}", "eval.enabled=false"],
            cwd=tmp_path)
    summary = (run_dir / "summary.json").read_text()
    assert '"status": "completed"' in summary


@pytest.mark.slow
def test_sample_prints_decoded_tokens_and_true_continuation_loss(smoke_sweep):
    sweep, _ = smoke_sweep
    ckpt = models_of(sweep)["rope-causal"]
    proc = run_module("vla_ablate.sample", ckpt, "--prompt-len", 4, "--num-samples", 2,
                      "--top-k", 10, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "approximate" in out and "pos=rope, mask=causal" in out
    truth = smoke_validation()[0]
    model = load_model_from_checkpoint(ckpt).eval()
    greedy = model.generate(truth[None, :4], 8, top_k=1)[0, 4:]
    rows = [line.split("|") for line in out.splitlines() if re.match(r"\s*\d+ \|", line)]
    assert [int(r[0]) for r in rows] == list(range(4, 12))
    losses = []
    for row, t in zip(rows, range(4, 12)):
        true_cell, loss, greedy_cell = row[1].split(), float(row[2]), row[3].split()
        assert int(true_cell[0]) == truth[t]
        assert true_cell[1:4] == [f"o{int(truth[t]) // 32}",
                                  process.direction(int(truth[t]) // 32),
                                  f"b{int(truth[t]) % 32}"]
        assert int(greedy_cell[0]) == greedy[t - 4]
        assert len(row) == 6  # step, true, loss, greedy, two samples
        losses.append(loss)
    logits, _ = model(truth[None, :-1])
    tf = torch.nn.functional.cross_entropy(logits[0, 3:], truth[4:], reduction="none")
    assert losses == pytest.approx(tf.tolist(), abs=2e-3)  # causal: prefix-only = teacher-forced
    mean = float(re.search(r"mean loss ([\d.]+) nats over 8 tokens", out).group(1))
    assert mean == pytest.approx(np.mean(losses), abs=2e-3)
    # a job folder of the sweep names its shared model through summary.json
    job = next(p.parent for p in sorted(sweep.glob("*/summary.json")))
    assert run_module("vla_ablate.sample", job, "--num-samples", 0).returncode == 0


@pytest.mark.slow
def test_visualize_writes_attention_maps_and_loss_curve(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    for mask in ("causal", "none"):
        out = tmp_path / mask
        proc = run_module("vla_ablate.visualize", models_of(sweep)[f"rope-{mask}"], "--out", out,
                          "--trajectory", 1)
        assert proc.returncode == 0, proc.stderr
        assert (out / "attention_maps.png").stat().st_size > 5000
        assert (out / "loss_curve.png").stat().st_size > 5000
        with np.load(out / "attention_maps.npz") as npz:
            assert np.array_equal(npz["tokens"], smoke_validation()[1].numpy())
            layers = [npz[f"layer_{i}"] for i in range(2)]
        for layer in layers:
            assert layer.shape == (4, 12, 12)
            assert np.allclose(layer.sum(-1), 1, atol=1e-4)
            future = np.triu(layer, k=1).sum()
            assert (future == 0) if mask == "causal" else (future > 0.1)


@pytest.mark.slow
def test_each_run_folder_holds_attention_weights_and_the_grid_is_drawn_from_them(
        smoke_sweep, tmp_path, monkeypatch):
    from analysis import load_runs, plots

    sweep, _ = smoke_sweep
    runs = load_runs(sweep)
    for path in runs["folder"]:  # where this machine reads the job (path: relative)
        maps = plots.load_attention(path)
        assert maps is not None and len(maps) == 2 and maps[0].shape == (4, 12, 12)

    def no_pasting(*_):
        raise AssertionError("pasted a rendered PNG instead of drawing the maps")

    with monkeypatch.context() as m:
        m.setattr(plots, "imread", no_pasting)
        assert plots.attention_grid(runs, tmp_path / "grid.png").stat().st_size > 20000
    # folders written before attention_maps.npz existed still get a figure
    old = tmp_path / "old"
    jobs = [runs[runs["mask"] == mask]["job"].iloc[0] for mask in ("causal", "none")]
    for job in jobs:
        (old / job).mkdir(parents=True)
        (old / job / "attention_maps.png").write_bytes((sweep / job / "attention_maps.png")
                                                       .read_bytes())
    legacy = runs[runs["job"].isin(jobs)].assign(path=lambda d: str(old) + "/" + d["job"])
    assert plots.attention_grid(legacy, tmp_path / "legacy.png").exists()


@pytest.mark.slow
def test_analysis_writes_the_course_mdx_page(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    out = tmp_path / "report"
    proc = run_module("analysis", sweep, "--out", out, "--format", "mdx", "--student",
                      "Ada Lovelace", "--date", "2026-02-01")
    assert proc.returncode == 0, proc.stderr
    page = (out / "ada-lovelace.mdx").read_text()
    assert page.startswith('---\ntitle: "Scratch-1 Submission: Ada Lovelace"\n'
                           'student: "Ada Lovelace"\ndate: "2026-02-01"\n---\n')
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert headings == ["# Scratch-1: The Transformer Backbone", "## Loss Curve",
                        "## Attention Visualization", "## The Audit: Removing the Causal Mask",
                        '### Why the Model "Cheats"', "## Mastery: KV-Caching",
                        "## Mastery: RoPE vs Sinusoidal", "## How these numbers were made"]
    images = re.findall(r"!\[[^\]]*\]\(\./images/([^)]+)\)", page)
    assert {"loss_curve.png", "attention_maps.png"} <= set(images)
    for name in images:
        assert (out / "images" / name).stat().st_size > 5000, name
    # the numbers are the sweep's
    positional = pd.read_csv(out / "positional.csv").set_index("pos")
    assert f"{positional.loc['rope', 'val_loss_mean']:.4f}" in page
    assert f"{positional.loc['sinusoidal', 'diff_vs_rope']:.4f}" in page
    audit = pd.read_csv(out / "mask_audit.csv")
    none = audit[audit["mask"] == "none"]
    assert f"{none['val_loss_prefix_only'].mean():.4f}" in page
    kv = pd.read_csv(out / "kv_cache.csv")
    fixed = kv[kv["batch_size"] == kv["batch_size"].min()].sort_values("new_tokens").iloc[-1]
    assert f"{fixed['speedup_median']:.2f}x faster" in page  # the fixed cell, not the best
    assert f"{kv['speedup_median'].min():.2f}x-{kv['speedup_median'].max():.2f}x" in page
    assert "2/2 causal models" in page
    # MDX reads { and < as code: outside inline code there must be none
    prose = re.sub(r"`[^`]*`", "", page.split("---\n", 2)[2])
    assert not re.search(r"(?<!\\)[{}<]", prose)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["vla_ablate.sample", "vla_ablate.visualize"])
def test_checkpoint_commands_reject_bad_input_in_one_line(command, tmp_path):
    out = ["--out", tmp_path / "vis"] if command.endswith("visualize") else []
    missing = run_module(command, tmp_path / "missing.pt", *out)
    assert_one_line_error(missing, "no such checkpoint")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert_one_line_error(run_module(command, text, *out), "not a vla-ablate checkpoint")
    marker, files = crafted_files(tmp_path)
    for path in files:
        assert_one_line_error(run_module(command, path, *out), "refusing to load",
                              "'io.open'")
    assert not marker.exists()  # the payload never ran
    assert_one_line_error(run_module(command, text, "--trajectory", "-1", *out),
                          "--trajectory")
    assert not (tmp_path / "vis").exists()


@pytest.mark.slow
def test_data_and_analysis_reject_bad_input_in_one_line(tmp_path):
    assert_one_line_error(run_module("vla_ablate.data", "--num_trajectories", "ten",
                                     "--output", tmp_path / "d.pkl"), "--num_trajectories")
    assert_one_line_error(run_module("vla_ablate.data", "--seq_length", "-5",
                                     "--output", tmp_path / "d.pkl"), "--seq_length")
    assert not (tmp_path / "d.pkl").exists()
    assert_one_line_error(run_module("analysis", tmp_path, "--target-loss", "low"),
                          "--target-loss")
    assert_one_line_error(run_module("analysis", tmp_path, "--format", "pdf"), "--format")
    assert_one_line_error(run_module("analysis", tmp_path / "missing", "--format", "mdx"),
                          "no such sweep folder")


def test_check_cache_runs_a_jobs_kv_check_again_on_its_model(smoke_sweep, tmp_path):
    sweep, _ = smoke_sweep
    jobs = {}
    for path in sorted(sweep.glob("*/summary.json")):
        s = json.loads(path.read_text())
        jobs.setdefault(s["mask"], (path.parent, s))
    job, summary = jobs["causal"]
    recorded = summary["kv_cache"]
    proc = run_module("vla_ablate.check_cache", job, "--precision", "fp32",
                      "--precision", recorded["precision"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fp32: cached decoding matches the full pass")
    assert any(line.startswith(f"{recorded['precision']}: cached decoding matches")
               for line in lines[1:])
    assert "greedy decodes: identical" in proc.stdout
    # the same check as the job's, on the same inputs: what the job recorded, in its precision
    from vla_ablate.check_cache import check_job

    (again,) = check_job(job, [recorded["precision"]])
    assert again["recorded"] == {**recorded["consistency"], "device": summary["device"]}
    assert again["matches"] is True and again["max_logit_diff"] < again["tolerance"]
    # a job whose sweep cached no dataset and was run from elsewhere (a relative model_dir)
    copy = tmp_path / "elsewhere" / job.name
    shutil.copytree(job, copy)
    shutil.copytree(sweep / "models", copy.parent / "models")
    config = yaml.safe_load((copy / ".hydra" / "config.yaml").read_text())
    config["data"]["cache_dir"] = None
    (copy / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    moved = json.loads((copy / "summary.json").read_text())
    moved["model_dir"] = f"sweep/models/{moved['model_key']}"
    (copy / "summary.json").write_text(json.dumps(moved))
    proc = run_module("vla_ablate.check_cache", copy, "--precision", "fp32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fp32: cached decoding matches the full pass")
    unmasked, _ = jobs["none"]
    proc = run_module("vla_ablate.check_cache", unmasked)
    assert proc.returncode == 1 and "does NOT match" in proc.stdout
    assert "by construction" in proc.stdout and "near-tie" not in proc.stdout
    assert_one_line_error(run_module("vla_ablate.check_cache", tmp_path), "not a job folder")
    (copy / ".hydra" / "config.yaml").write_text("model: [unclosed")
    assert_one_line_error(run_module("vla_ablate.check_cache", copy), "config.yaml")


def test_check_cache_describes_an_unmasked_model_whose_greedy_decodes_part():
    """Whether an unmasked model's cached and full greedy decodes part depends on the host's
    rounding: make them part on purpose and check the command describes it (it crashed)."""
    from vla_ablate import evaluate
    from vla_ablate.check_cache import describe
    from vla_ablate.model.transformer import DecoderOnlyTransformer

    def parting(causal):
        torch.manual_seed(0)
        model = DecoderOnlyTransformer(dim=32, num_layers=1, num_heads=2, ff_hidden_dim=64,
                                       max_seq_len=32, dropout=0.0, causal=causal)
        generate = model.generate

        def parting_generate(*args, use_cache=None, **kwargs):
            out = generate(*args, use_cache=use_cache, **kwargs)
            if use_cache:  # the cached decode picks another last token
                out = out.clone()
                out[0, -1] = (out[0, -1] + 1) % 256
            return out

        model.generate = parting_generate
        prompts = torch.randint(0, 256, (2, 5))
        return evaluate.kv_cache_consistency(model, prompts, 6, torch.device("cpu"))

    result = parting(causal=False)
    assert result["greedy_tokens_match"] is False and result["matches"] is False
    text = describe(result)
    assert text.startswith("fp32: cached decoding does NOT match the full pass")
    assert "greedy decodes part" in text and "by construction" in text
    # a causal model's parting is still scored: a near-tie or beyond the tolerance
    causal = parting(causal=True)
    assert "first_difference" in causal
    assert ("a near-tie" in describe(causal)) != ("beyond the tolerance" in describe(causal))
