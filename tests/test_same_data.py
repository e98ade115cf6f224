"""RoPE against sinusoidal is fair only if both see the same data and start alike: at one seed,
the same training and validation tokens, the same batch at every step (a fresh epoch
included), and the same initial weights in every parameter they share."""

import pytest
import torch

from conftest import compose_cfg
from vla_ablate.config import layout_of
from vla_ablate.factory import model_args_from_config
from vla_ablate.pipeline import initial_model, training_data


def _data(tmp_path, pos, *over):
    cfg = compose_cfg(["debug=smoke", f"pos={pos}", f"data.cache_dir={tmp_path}", "seed=3",
                       *over])
    return cfg, training_data(cfg, layout_of(cfg))


@pytest.mark.parametrize("fresh", [True, False])
def test_rope_and_sinusoidal_see_the_same_tokens_at_every_step(tmp_path, fresh):
    over = [f"data.fresh_per_epoch={fresh}"]
    _, (rope_train, rope_val, rope_batches) = _data(tmp_path, "rope", *over)
    _, (sin_train, sin_val, sin_batches) = _data(tmp_path, "sinusoidal", *over)
    assert torch.equal(rope_train, sin_train) and torch.equal(rope_val, sin_val)
    per_epoch = rope_batches.steps_per_epoch
    for step in (0, 1, per_epoch - 1, per_epoch, per_epoch + 1, 3 * per_epoch + 2):
        assert torch.equal(rope_batches.batch(step), sin_batches.batch(step)), step
    if fresh:  # a fresh epoch really is new trajectories, the same for both
        assert not torch.equal(rope_batches._epoch_actions, rope_train)


def test_rope_and_sinusoidal_start_from_the_same_weights(tmp_path):
    rope_cfg, _ = _data(tmp_path, "rope")
    sin_cfg, _ = _data(tmp_path, "sinusoidal")
    rope = dict(initial_model(rope_cfg, model_args_from_config(rope_cfg)).named_parameters())
    sin = dict(initial_model(sin_cfg, model_args_from_config(sin_cfg)).named_parameters())
    shared = set(rope) & set(sin)
    assert len(shared) >= len(rope) - 2  # at most the encodings' own parameters differ
    for name in sorted(shared):
        assert torch.equal(rope[name], sin[name]), name
