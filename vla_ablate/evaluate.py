"""Per-run evaluations: mask audit, position shift, length extrapolation, KV cache.

Every evaluation counts in steps and scores action tokens, so it means the same in both token
layouts (``layout``, vla_ablate/data/tokens.py): with ``tokens=state_action`` a shift of k steps
moves the sequence by k x tokens-per-step positions, losses are taken over the action tokens
a_1 .. a_{T-1} alone, and generation is a rollout in which the states come from the data and
the model generates each step's action token. With ``tokens=action`` nothing changes: every
token is an action.

Every loss here is computed in the run's training precision (``precision``: the same autocast
as validation during training), so the two sides of each comparison are computed alike.
Generation runs on ``generation_model(model, precision)``: bf16 weights and KV cache where the
run trained in bf16 (the hardware computes it natively), and the KV-cache check runs in that
precision too.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from vla_ablate.data.process import VOCAB_SIZE, derived_seed, generate_dataset
from vla_ablate.data.tokens import ACTION, TokenLayout
from vla_ablate.precision import DTYPES, autocast
from vla_ablate.training.losses import mean_loss, token_losses

NO_MASK_NOTE = (
    "without a causal mask the full pass lets every position see later tokens, which a decode "
    "step cannot: cached and full-pass logits differ by construction"
)
# largest |cached - full-pass| logit difference that still counts as the same computation:
# float32 differs only by summation order; bf16 keeps 8 bits of mantissa (logits ~10 -> ~0.05)
LOGIT_TOLERANCE = {"fp32": 1e-3, "bf16": 0.25, "fp16": 0.05}


@torch.no_grad()
def prefix_only_loss(model, actions, device, precision="fp32", select=None) -> float:
    """Loss when position t sees only tokens 0..t: what autoregressive generation sees.

    Each prefix is run on its own, so a model that learned to read the future (no causal mask)
    is scored honestly. For a causal model this equals the teacher-forced loss. ``select``
    (T - 1,) bool: score only those targets (the action tokens of a state_action sequence).
    """
    model.eval()
    x = actions.to(device)
    targets = [t for t in range(1, x.shape[1]) if select is None or select[t - 1]]
    total = 0.0
    for t in targets:
        with autocast(precision, device):
            logits, _ = model(x[:, :t])
        total += F.cross_entropy(logits[:, -1].float(), x[:, t], reduction="sum").item()
    return total / (x.shape[0] * len(targets))


@torch.no_grad()
def leakage(model, actions, device, seed=0, precision="fp32", layout: TokenLayout = ACTION) -> float:
    """Largest change of any earlier position's logits when the later half's steps change
    (their tokens replaced by random ones)."""
    model.eval()
    x = actions.to(device)
    half = x.shape[1] // layout.per_step // 2 * layout.per_step
    gen = torch.Generator().manual_seed(seed)
    changed = x.clone()
    changed[:, half:] = torch.randint(0, layout.vocab_size, changed[:, half:].shape,
                                      generator=gen).to(device)
    with autocast(precision, device):
        a, _ = model(x)
        b, _ = model(changed)
    return (a[:, :half].float() - b[:, :half].float()).abs().max().item()


def mask_audit(model, seen_actions, val_actions, device, n, precision="fp32",
               layout: TokenLayout = ACTION) -> dict:
    """Teacher-forced vs prefix-only loss of the action tokens, and leakage. Keys are the names
    used everywhere.

    ``seen_actions`` are trajectories of the first training epoch (trained on once each when
    every epoch draws fresh trajectories, every epoch otherwise).
    """
    val = val_actions[:n]
    select = layout.action_targets(val.shape[1])
    tf_val = mean_loss(model, val, device, precision=precision, select=select)
    honest = prefix_only_loss(model, val, device, precision, select)
    return {
        "seen_loss_teacher_forced": mean_loss(model, seen_actions[:n], device,
                                              precision=precision, select=select),
        "val_loss_teacher_forced": tf_val,
        "val_loss_prefix_only": honest,
        "cheating_gap": honest - tf_val,
        "leakage": leakage(model, val, device, precision=precision, layout=layout),
    }


@torch.no_grad()
def position_shift(model, val_actions, shifts, device, precision="fp32",
                   layout: TokenLayout = ACTION) -> dict:
    """Loss of the same validation trajectories placed k steps later (positions k*P..) instead
    of at 0 (P: tokens per step).

    The tokens, and so the data regime, are unchanged: only the positions the model sees move,
    which isolates positional generalisation from the drift of longer trajectories. An encoding
    that sees relative positions only (RoPE, ALiBi, none with a causal mask) scores the same at
    every shift up to float error.
    """
    model.eval()
    T = val_actions.shape[1]
    select = layout.action_targets(T)
    out = {}
    for k in [0, *shifts]:
        total, count = 0.0, 0
        start = layout.positions(k)
        positions = torch.arange(start, start + T - 1, device=device)
        for i in range(0, len(val_actions), 256):
            x = val_actions[i : i + 256].to(device)
            with autocast(precision, device):
                hidden = model.hidden_states(x[:, :-1], positions)
                logits = model.lm_head(hidden)
            if select is None:
                total += F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:],
                                         reduction="sum").item()
                count += x[:, 1:].numel()
            else:
                losses = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:],
                                         reduction="none")[:, select.to(device)]
                total += losses.sum().item()
                count += losses.numel()
        out[f"loss_shift_{k}"] = total / count
        if k:
            out[f"delta_shift_{k}"] = out[f"loss_shift_{k}"] - out["loss_shift_0"]
    return out


def extrapolation(model, data_seed, seq_length, factors, n, device, precision="fp32",
                  layout: TokenLayout = ACTION) -> dict:
    """Loss at positions never trained on, in fresh trajectories ``factor`` x the training length.

    Only the predictions of tokens seq_length..end are scored. They mix two effects: new
    positions *and* a new regime of the process (late in a long trajectory many joints sit at
    their limits and tokens change less often), so read them beside ``position_shift``, which
    moves the positions alone. ``loss_1x`` is the same process at the training length, on fresh
    trajectories, for reference.
    """
    out = {}
    for factor in [1, *factors]:
        length = seq_length * factor
        data = generate_dataset(n, length, derived_seed(data_seed, "extrapolation", factor),
                                progress=False)
        seqs = layout.sequences(data["states"], data["actions"])
        out[_extrapolation_key(factor)] = _extrapolation_loss(model, seqs, seq_length, factor,
                                                              device, precision, layout)
    return out


def _extrapolation_key(factor: int) -> str:
    return "loss_1x" if factor == 1 else f"loss_{factor}x_beyond"


def _extrapolation_loss(model, seqs, seq_length, factor, device, precision, layout) -> float:
    """The loss ``extrapolation`` reports for ``seqs`` of ``factor`` x ``seq_length`` steps:
    every action token at 1x, those of steps seq_length..end beyond it."""
    losses = token_losses(model, seqs, device, precision=precision)  # (n, L - 1)
    select = layout.action_targets(seqs.shape[1])
    if select is None:
        if factor == 1:
            return losses.mean().item()
        # predictions of tokens seq_length..end: positions never trained on
        return losses[:, seq_length - 1 :].mean().item()
    if factor == 1:
        return losses[:, select].mean().item()
    # the action tokens of steps seq_length..end
    beyond = layout.action_targets(seqs.shape[1], from_step=seq_length)
    return losses[:, beyond].mean().item()


def extrapolation_windows(model, robot, factors, n, device, precision="fp32") -> dict:
    """``extrapolation`` on a dataset's own episodes (``data=lerobot``): windows of ``factor`` x
    ``data.window`` steps from the same validation episodes (their first ``n``, as
    ``RobotData.val_rows`` cuts them). A factor that no validation episode is long enough for
    is left out, and ``skipped_<f>x`` says why. Every value is a scalar: the analysis copies
    the group's keys into runs.csv as they are."""
    out = {}
    for factor in [1, *factors]:
        length = robot.window * factor
        seqs = robot.val_windows(length, limit=n)
        if not len(seqs):
            out[f"skipped_{factor}x"] = f"no validation episode has {length} steps"
            continue
        out[_extrapolation_key(factor)] = _extrapolation_loss(model, seqs, robot.window, factor,
                                                              device, precision, robot.layout)
        out[f"windows_{factor}x"] = len(seqs)
    return out


@torch.no_grad()
def action_error(model, robot, device, precision="fp32", batch_size=64) -> dict:
    """The action error in the data's units on the validation windows (``data=lerobot``).

    Teacher-forced: each action token a_t[i] is predicted from the true sequence before it (the
    earlier steps, step t's states and its dimensions 0..i-1), as in validation. Its logits over
    dimension i's ids decode two ways: ``greedy`` (the likeliest bin's midpoint) and
    ``expected`` (the probability-weighted mean of the bin midpoints); ``round_trip`` is what
    binning alone loses on the same frames (the floor). Mean absolute errors per dimension and
    their mean, over steps 1..window-1 of every validation window (step 0 of a window has no
    earlier step; the same frames in both layouts)."""
    layout, tok = robot.layout, robot.tokenizers.action
    seqs, truth = robot.val_windows(), robot.val_actions()[:, 1:]  # truth (N, T - 1, D)
    P, S, D, bins = layout.per_step, len(layout.state), layout.actions, layout.action_bins
    T = seqs.shape[1] // P
    # the position whose output predicts a_t[i]: the token before it
    rows = torch.tensor([t * P + S + i - 1 for t in range(1, T) for i in range(D)])
    mids = torch.as_tensor(tok.centers)  # (D, bins)
    greedy, expected = [], []
    model.eval()
    # each dimension's logits from its own columns of the head: the full vocabulary's,
    # (B, (T - 1) * D, (D + S) * bins), would be ~1 GB on a dataset of aloha's size
    weight = model.lm_head.weight  # (C, V): Linear keeps (in, out)
    for start in range(0, len(seqs), batch_size):
        x = seqs[start : start + batch_size].to(device)
        with autocast(precision, device):
            hidden = model.hidden_states(x[:, :-1])[:, rows.to(device)]
            hidden = hidden.unflatten(1, (T - 1, D))  # (B, T - 1, D, C)
            own = torch.stack([hidden[:, :, i] @ weight[:, i * bins : (i + 1) * bins]
                               for i in range(D)], dim=2)  # (B, T - 1, D, bins)
        own = own.float().cpu()
        greedy.append(tok.decode(own.argmax(-1).numpy()))
        expected.append((torch.softmax(own.double(), -1) * mids).sum(-1).numpy())
    trip = tok.round_trip_error(truth)

    def errors(values):
        per_dim = np.abs(np.concatenate(values) - truth).reshape(-1, D).mean(0)
        return {"mean": float(per_dim.mean()), "per_dim": per_dim.tolist()}

    return {"greedy": errors(greedy), "expected": errors(expected),
            "round_trip": {"mean": float(trip.mean()), "per_dim": trip.tolist()},
            "dims": list(robot.tokenizers.action_names),
            "episodes": len({e for e, _ in robot.val_rows(robot.window)}),
            "steps": int(truth.shape[0] * truth.shape[1])}


def generation_model(model, precision, compile_decode=False):
    """The model that generation runs: a bf16 (or fp16) copy, weights and KV cache, or itself.

    ``compile_decode`` compiles its forward pass (``train.compile``; ``dynamic=True``: the
    cached prefix grows every step) on a copy, so the training model stays eager.
    """
    gen = model if precision == "fp32" and not compile_decode else copy.deepcopy(model)
    gen = gen.to(DTYPES[precision]).eval()
    if compile_decode:
        gen.hidden_states = torch.compile(gen.hidden_states, dynamic=True)
    return gen


@torch.no_grad()
def kv_cache_consistency(model, prompts, new_tokens, device, given=None,
                         step_ranges=None) -> dict:
    """Do cached logits equal the full pass step by step, and do greedy decodes agree?

    Runs in the model's own dtype (the generation precision); the tolerance follows it.
    ``given`` (B, new_tokens, k): a rollout, each step's k state tokens from the data.

    The step-by-step pass feeds the cache what cached generation feeds it: the prompt (with a
    rollout's first given states), then each sampled token (with the next step's given
    states), so it checks the path generation runs, at every position of the uncached decode.
    ``matches``: those logits equal the full pass within the tolerance, and the two greedy
    decodes are identical, or, with a causal mask, part only at near-ties: where each row's
    decodes first part, both passes score the two tokens within the tolerance of each other
    (``greedy_tie``: in bf16 logits a few rounding steps apart, which the two paths' roundings
    can order either way; ``first_difference`` says where and by how much). ``step_ranges``:
    D action tokens a step, each from its own ids (``generate``), new_tokens counting steps.
    """
    model.eval()
    precision = {v: k for k, v in DTYPES.items()}[model.lm_head.weight.dtype]
    x = prompts.to(device)
    # a rollout generates action tokens only (with step_ranges the ids are absolute)
    below = None if given is None or step_ranges is not None else VOCAB_SIZE
    greedy_cached = model.generate(x, new_tokens, top_k=1, use_cache=True, given=given,
                                   sample_below=below, step_ranges=step_ranges)
    greedy_plain = model.generate(x, new_tokens, top_k=1, use_cache=False, given=given,
                                  sample_below=below, step_ranges=step_ranges)
    full, _ = model(greedy_plain)
    T0, total = x.shape[1], greedy_plain.shape[1]
    k = 0 if given is None else given.shape[-1]
    d = 1 if step_ranges is None else len(step_ranges)
    # generate's chunks: up to the first sampled slot, then from each slot to the next
    bounds = [0, *model.generation_slots(T0, new_tokens, k, d), total]
    model.setup_cache(x.shape[0], total)
    try:
        positions = torch.arange(total, device=device)
        cached = torch.cat([model(greedy_plain[:, a:b], input_pos=positions[a:b])[0]
                            for a, b in zip(bounds, bounds[1:])], dim=1)
    finally:
        model.clear_cache()
    max_diff = (cached.float() - full.float()).abs().max().item()
    tokens_match = bool(torch.equal(greedy_cached, greedy_plain))
    tolerance = LOGIT_TOLERANCE[precision]
    result = {"max_logit_diff": max_diff, "greedy_tokens_match": tokens_match,
              "matches": tokens_match and max_diff < tolerance, "precision": precision,
              "tolerance": tolerance}
    if not tokens_match and model.causal:  # unmasked, the full pass sees the later tokens
        gap = first_greedy_difference(full, cached, greedy_plain, greedy_cached, below)
        # rounding alone picked between the two tokens; each path then continues its own
        result["first_difference"] = gap
        result["greedy_tie"] = gap["largest_logit_gap"] <= tolerance
        result["matches"] = result["greedy_tie"] and max_diff < tolerance
    if not model.causal:
        result["note"] = NO_MASK_NOTE
    return result


def first_greedy_difference(full, cached, plain, greedy_cached, below=None) -> dict:
    """Where two greedy decodes of the same prompts first part, row by row, and how far apart
    each pass scores the two tokens there.

    ``full`` and ``cached``: (B, T, V) logits over ``plain`` (the uncached decode) of the full
    pass and of the cached step-by-step pass. Only each row's first difference is scored: the
    decodes' prefixes are equal up to it (so both passes saw what each decode saw) and differ
    after it. Returns the rows that part, the earliest (row, position), and the largest gap,
    over those rows and both passes, between the logits of the two tokens (``below``: the
    sampled vocabulary)."""
    differs = plain != greedy_cached
    rows = differs.any(dim=1).nonzero().flatten().tolist()
    gaps, first = [], None
    for row in rows:
        pos = int(differs[row].nonzero()[0])
        a, b = plain[row, pos], greedy_cached[row, pos]
        for logits in (full, cached):  # position pos - 1 predicts token pos
            scores = logits[row, pos - 1, :below].float()
            gaps.append(abs(scores[a] - scores[b]).item())
        if first is None or pos < first[1]:
            first = (row, pos)
    return {"rows": rows, "row": first[0], "position": first[1],
            "largest_logit_gap": max(gaps)}


def paired_generation_speed(model, prompts, batch_sizes, new_tokens, repeats, device,
                            given=None, clock=time.perf_counter, warm_each_cell=True,
                            step_ranges=None) -> list:
    """Cached vs uncached greedy generation, alternated on the same model in this process.

    Per cell (batch size x new tokens): an untimed warm-up of both sides at the cell's own
    shapes, then ``repeats`` timed pairs in a balanced order, on-off, off-on, on-off, ...
    (ABBA over consecutive pairs), so that drift of the machine's speed hits both sides alike.
    Every timed run directly follows a run of its own side and length (the previous pair's
    second run, or an untimed one before a pair's second side): a cached decode right after an
    uncached one pays for the state the uncached pass left (page faults; docs/benchmarks.md,
    "KV timing: where in the job a pair falls"), which would tie a pair's ratio to its order.
    Without the per-cell warm-up (``warm_each_cell=False``: one short warm-up per batch size
    and no untimed same-side runs, as before) a cell's first pairs pay for shapes never run before (oneDNN primitives, the
    allocator's pools), a cost that falls on whichever side runs first and fades over the
    pairs: benchmarks/kv_order.py shows it. Each row keeps every pair (order and both times);
    ``speedup`` is the median over pairs of (uncached time / cached time), with their min-max.
    ``given`` (len(prompts), max(new_tokens), k): a rollout of that many steps, each step's k
    state tokens from the data; new tokens are then generated actions (one per step).
    ``clock``: seconds, as ``time.perf_counter`` (a test passes a fake one). ``step_ranges``:
    each step is D generated action tokens, each from its own ids (``generate``); ``new_tokens``
    then count steps, and each row has ``new_steps`` and ``new_tokens`` (= steps x D) with the
    rates in tokens (``_speed_row``).
    """
    model.eval()
    rows = []
    for batch in batch_sizes:
        reps = -(-batch // len(prompts))
        x = prompts.repeat(reps, 1)[:batch].to(device)
        g = None if given is None else given.repeat(reps, 1, 1)[:batch].to(device)

        def run(n, use_cache, x=x, g=g):
            model.generate(x, n, top_k=1, use_cache=use_cache,
                           given=None if g is None else g[:, :n],
                           sample_below=None if g is None or step_ranges else VOCAB_SIZE,
                           step_ranges=step_ranges)

        if not warm_each_cell:
            for use_cache in (True, False):
                run(min(4, max(new_tokens)), use_cache)
        for n in new_tokens:
            if warm_each_cell:  # untimed: this cell's shapes, both sides, the cached last
                for use_cache in (False, True):
                    run(n, use_cache)
            pairs = [_timed_pair(lambda c, n=n: run(n, c), r % 2 == 0, device, clock,
                                 prime=warm_each_cell) for r in range(repeats)]
            rows.append(_speed_row(batch, n, pairs, warm_each_cell,
                                   len(step_ranges) if step_ranges else 1))
    return rows


def _timed_pair(run, cache_first: bool, device, clock, prime: bool = True) -> dict:
    """One pair: both sides timed, in the given order; with ``prime`` the second side runs once
    untimed first, so that it too is timed after a run of its own side."""
    times = {}
    for i, use_cache in enumerate((True, False) if cache_first else (False, True)):
        if i and prime:  # untimed: the same side right before it
            run(use_cache)
        _sync(device)
        t = clock()
        run(use_cache)
        _sync(device)
        times[use_cache] = clock() - t
    return {"order": "on-off" if cache_first else "off-on", "cache_on_s": times[True],
            "cache_off_s": times[False], "speedup": times[False] / times[True]}


def _speed_row(batch: int, n: int, pairs: list, warmed: bool, per_step: int = 1) -> dict:
    """A cell's summary row: medians of each side, the pairs' ratios, and every pair. ``n``
    steps of ``per_step`` generated tokens each (D action tokens a step, ``data=lerobot``):
    ``new_tokens`` and the rates count tokens, ``new_steps`` the steps (only where
    ``per_step`` > 1: the course's rows keep their keys)."""
    ratios = [p["speedup"] for p in pairs]
    on_s = statistics.median(p["cache_on_s"] for p in pairs)
    off_s = statistics.median(p["cache_off_s"] for p in pairs)
    tokens = n * per_step
    steps = {"new_steps": n} if per_step > 1 else {}
    return {"batch_size": batch, **steps, "new_tokens": tokens, "repeats": len(pairs),
            "warm_up": "per cell" if warmed else "per batch size",
            "cache_on_s": on_s, "cache_off_s": off_s,
            "tokens_per_s_cache_on": batch * tokens / on_s,
            "tokens_per_s_cache_off": batch * tokens / off_s,
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios), "pairs": pairs}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def perplexity(loss):
    return None if loss is None or not math.isfinite(loss) else math.exp(min(loss, 50))
