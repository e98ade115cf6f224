"""The per-run evaluations on a small random model."""

import pytest
import torch
import torch.nn.functional as F
from test_model import small_model

from vla_ablate import evaluate
from vla_ablate.data import generate_dataset
from vla_ablate.training.losses import mean_loss, token_losses

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def actions():
    return generate_dataset(12, 16, seed=0)["actions"]


def test_token_losses_average_to_the_models_own_loss(actions):
    model = small_model()
    losses = token_losses(model, actions, CPU, batch_size=5)  # batches of 5, 5 and 2
    assert losses.shape == (12, 15)
    _, loss = model(actions[:, :-1], actions[:, 1:])
    assert losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
    assert mean_loss(model, actions, CPU) == pytest.approx(loss.item(), abs=1e-5)


def test_prefix_only_loss_and_leakage_separate_the_masks(actions):
    causal = evaluate.mask_audit(small_model(), actions, actions, CPU, 6)
    assert causal["val_loss_prefix_only"] == pytest.approx(causal["val_loss_teacher_forced"],
                                                           abs=1e-5)
    assert causal["leakage"] < 1e-5
    unmasked = evaluate.mask_audit(small_model(causal=False), actions, actions, CPU, 6)
    assert unmasked["leakage"] > 1e-3
    assert abs(unmasked["cheating_gap"]) > 1e-4
    # prefix-only minus teacher-forced: positive when a model profits from seeing the future
    assert unmasked["cheating_gap"] == pytest.approx(
        unmasked["val_loss_prefix_only"] - unmasked["val_loss_teacher_forced"], abs=1e-12)


def test_mask_audit_in_bf16_keeps_a_causal_models_gap_at_zero(actions):
    causal = evaluate.mask_audit(small_model(), actions, actions, CPU, 6, precision="bf16")
    assert abs(causal["cheating_gap"]) < 1e-3 and causal["leakage"] == 0.0


def test_prefix_only_loss_runs_each_prefix_alone(actions):
    """Against an explicit per-prefix computation, on a model that reads the future."""
    model = small_model(causal=False).eval()
    x = actions[:3, :10]
    with torch.no_grad():
        expected = sum(F.cross_entropy(model(x[:, :t])[0][:, -1], x[:, t], reduction="sum").item()
                       for t in range(1, 10)) / (3 * 9)
        teacher_forced = F.cross_entropy(model(x)[0][:, :-1].transpose(1, 2), x[:, 1:]).item()
    assert evaluate.prefix_only_loss(model, x, CPU) == pytest.approx(expected, abs=1e-6)
    assert abs(expected - teacher_forced) > 1e-3  # the two differ on this model


def test_prefix_only_loss_ignores_the_tokens_after_each_target(actions):
    """Only the scored targets and their prefixes count: replacing the tokens after the last
    scored target leaves the loss as it was, even without a causal mask."""
    model = small_model(causal=False)
    x = actions[:3, :12]
    select = torch.zeros(11, dtype=torch.bool)
    select[:5] = True  # targets 1..5
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 17) % 256
    assert evaluate.prefix_only_loss(model, changed, CPU, select=select) == pytest.approx(
        evaluate.prefix_only_loss(model, x, CPU, select=select), abs=1e-7)
