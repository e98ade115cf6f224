"""The report's figures say what they show: drawn from small made-up frames, in-process."""

import colorsys

import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from analysis import plots
from analysis.report_md import varied


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, in order (they save them and return the path)."""
    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def audit_runs():
    """Two encodings far apart (rope ~1, sinusoidal ~3), two seeds each, both masks; the
    unmasked models look better teacher-forced and worse prefix-only."""
    rows = []
    for pos, base in (("rope", 1.0), ("sinusoidal", 3.0)):
        for seed in (1, 2):
            for mask, tf, po in (("causal", 0.0, 0.0), ("none", -0.5, 0.4)):
                rows.append({"status": "completed", "pos": pos, "mask": mask, "seed": seed,
                             "config": "default", "model_key": f"{pos}-{mask}-{seed}",
                             "val_loss_teacher_forced": base + tf + 0.01 * seed,
                             "val_loss_prefix_only": base + po + 0.01 * seed})
    return pd.DataFrame(rows)


def test_mask_plot_shows_both_losses_labelled(drawn, tmp_path):
    assert plots.mask_losses(audit_runs(), tmp_path / "mask.png").stat().st_size > 5000
    fig = drawn[-1]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(label.startswith("teacher-forced") for label in labels)
    assert any(label.startswith("prefix-only") for label in labels)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["pos=rope", "pos=sinusoidal"]  # one panel per encoding
    assert "over seeds within one encoding" in fig._suptitle.get_text()


def test_mask_plot_intervals_are_over_seeds_of_one_encoding(drawn, tmp_path):
    """Pooling the encodings would stretch rope's interval towards sinusoidal's losses."""
    plots.mask_losses(audit_runs(), tmp_path / "mask.png")
    rope = drawn[-1].axes[0]
    ys = [y for line in rope.get_lines() for y in line.get_ydata() if y == y]
    assert ys and max(ys) < 2.0  # every bar and interval of rope's panel near rope's losses


def test_kv_speed_colours_batch_sizes_in_high_contrast(drawn, tmp_path):
    speed = pd.DataFrame([{"job": f"j{m}", "model_key": f"m{m}", "batch_size": b,
                           "new_tokens": n, "speedup": 1.0 + m + b}
                          for m in range(3) for b in (1, 2, 8) for n in (4, 8)])
    plots.kv_speed(speed, tmp_path / "kv.png")
    colours = {tuple(round(c, 3) for c in to_rgb(face))
               for coll in drawn[-1].axes[0].collections for face in coll.get_facecolors()}
    assert len(colours) == 3  # one per batch size
    for rgb in colours:  # none washed out: batch size 1 was pale pink (lightness ~0.9)
        assert colorsys.rgb_to_hls(*rgb)[1] < 0.75, rgb
    labels = [t.get_text() for t in drawn[-1].axes[0].get_legend().get_texts()]
    assert labels == ["1", "2", "8"]


def test_loss_curves_say_what_the_band_is_over(drawn, tmp_path):
    metrics = pd.DataFrame([{"split": "val", "step": s, "loss": 3.0 - 0.1 * s + 0.01 * seed,
                             "pos": pos, "mask": "causal", "seed": seed, "config": "default",
                             "model_key": f"{pos}{seed}"}
                            for pos in ("rope", "learned") for seed in (1, 2, 3)
                            for s in (1, 2, 3)])
    plots.loss_curves(metrics, "pos", tmp_path / "pos.png", mask="causal")
    assert "95% CI over seeds" in drawn[-1].axes[0].get_title()
    assert "n=3 seeds" in drawn[-1].axes[0].get_title()


def test_only_axes_the_sweep_varied():
    runs = pd.DataFrame({"pos": ["rope", "sinusoidal"], "mask": ["causal", "causal"],
                         "tokens": ["action", None]})
    assert varied(runs, "pos") and not varied(runs, "mask") and not varied(runs, "tokens")
    assert varied(runs.assign(tokens=["action", "state_action"]), "tokens")
    assert not varied(runs.drop(columns="tokens"), "tokens")
