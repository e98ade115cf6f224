"""Per-run evaluations: mask audit, length extrapolation, KV-cache consistency and speed."""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from vla_ablate.data import derived_seed, generate_dataset
from vla_ablate.train import mean_loss, token_losses

NO_MASK_NOTE = (
    "without a causal mask the full pass lets every position see later tokens, which a decode "
    "step cannot: cached and full-pass logits differ by construction"
)


@torch.no_grad()
def prefix_only_loss(model, actions, device) -> float:
    """Loss when position t sees only tokens 0..t: what autoregressive generation sees.

    Each prefix is run on its own, so a model that learned to read the future (no causal mask)
    is scored honestly. For a causal model this equals the teacher-forced loss.
    """
    model.eval()
    x = actions.to(device)
    total = 0.0
    for t in range(1, x.shape[1]):
        logits, _ = model(x[:, :t])
        total += F.cross_entropy(logits[:, -1].float(), x[:, t], reduction="sum").item()
    return total / (x.shape[0] * (x.shape[1] - 1))


@torch.no_grad()
def leakage(model, actions, device, seed=0) -> float:
    """Largest change of any earlier position's logits when the later half's tokens change."""
    model.eval()
    x = actions.to(device)
    half = x.shape[1] // 2
    gen = torch.Generator().manual_seed(seed)
    changed = x.clone()
    changed[:, half:] = torch.randint(0, 256, changed[:, half:].shape, generator=gen).to(device)
    a, _ = model(x)
    b, _ = model(changed)
    return (a[:, :half] - b[:, :half]).abs().max().item()


def mask_audit(model, train_actions, val_actions, device, n) -> dict:
    val = val_actions[:n]
    tf_val = mean_loss(model, val, device)
    honest = prefix_only_loss(model, val, device)
    return {
        "teacher_forced_train_loss": mean_loss(model, train_actions[:n], device),
        "teacher_forced_val_loss": tf_val,
        "prefix_only_val_loss": honest,
        "honest_gap": honest - tf_val,
        "leakage": leakage(model, val, device),
    }


def extrapolation(model, data_seed, seq_length, factors, n, device) -> dict:
    """Loss on fresh trajectories of ``factor`` x the training length (all and unseen positions)."""
    out = {}
    for factor in [1, *factors]:
        length = seq_length * factor
        actions = generate_dataset(n, length, derived_seed(data_seed, "extrapolation", factor),
                                   progress=False)["actions"]
        losses = token_losses(model, actions, device)  # (n, length - 1)
        out[f"loss_{factor}x"] = losses.mean().item()
        if factor > 1:  # predictions of tokens seq_length..end: positions never trained on
            out[f"loss_{factor}x_beyond"] = losses[:, seq_length - 1 :].mean().item()
    return out


@torch.no_grad()
def kv_cache_consistency(model, prompts, new_tokens, device) -> dict:
    """Do cached logits equal the full pass step by step, and do greedy decodes agree?"""
    model.eval()
    x = prompts.to(device)
    greedy_cached = model.generate(x, new_tokens, top_k=1, use_cache=True)
    greedy_plain = model.generate(x, new_tokens, top_k=1, use_cache=False)
    full, _ = model(greedy_plain)
    T0 = x.shape[1]
    model.setup_cache(x.shape[0], greedy_plain.shape[1])
    try:
        positions = torch.arange(greedy_plain.shape[1], device=device)
        step_logits = [model(greedy_plain[:, :T0], input_pos=positions[:T0])[0]]
        for t in range(T0, greedy_plain.shape[1]):
            step_logits.append(model(greedy_plain[:, t : t + 1], input_pos=positions[t : t + 1])[0])
    finally:
        model.clear_cache()
    max_diff = (torch.cat(step_logits, dim=1) - full).abs().max().item()
    tokens_match = bool(torch.equal(greedy_cached, greedy_plain))
    result = {"max_logit_diff": max_diff, "greedy_tokens_match": tokens_match,
              "matches": tokens_match and max_diff < 1e-3}
    if not model.causal:
        result["note"] = NO_MASK_NOTE
    return result


def generation_speed(model, prompts, batch_sizes, new_tokens, repeats, use_cache, device) -> list:
    """tokens/s of ``generate`` (greedy) for each batch size and length: warm-up, then median."""
    model.eval()
    rows = []
    for batch in batch_sizes:
        reps = -(-batch // len(prompts))
        x = prompts.repeat(reps, 1)[:batch].to(device)
        model.generate(x, min(4, max(new_tokens)), top_k=1, use_cache=use_cache)  # warm-up
        for n in new_tokens:
            times = []
            for _ in range(repeats):
                _sync(device)
                t = time.perf_counter()
                model.generate(x, n, top_k=1, use_cache=use_cache)
                _sync(device)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rows.append({"batch_size": batch, "new_tokens": n, "use_cache": use_cache,
                         "tokens_per_s": batch * n / med, "median_s": med,
                         "spread_s": max(times) - min(times), "repeats": repeats})
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def perplexity(loss):
    return None if loss is None or not math.isfinite(loss) else math.exp(min(loss, 50))
