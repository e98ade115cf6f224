"""``python -m vla_ablate.sample CHECKPOINT``: what a trained model generates, and how it scores
the truth.

The prompt is the start of a real validation trajectory (of the run the checkpoint came from).
A model of a LeRobot dataset (``data=lerobot``) is read with its own tokenizer file: each step's
generated action tokens are decoded to the data's units beside the recorded actions
(``sample_robot``).

Printed per step: the true next token with its per-token loss, the model's greedy continuation,
and ``--num-samples`` sampled continuations, each token decoded into its direction octant and
distance range. The losses are prefix-only (each token scored from the tokens before it, as in
generation), so a model trained without the causal mask cannot read the answer from its input.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from vla_ablate.console import (
    ArgumentParser,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from vla_ablate.data.process import TOKEN_NOTE, decode_token, describe_token
from vla_ablate.errors import CommandError
from vla_ablate.trained import (
    load_checkpoint_file,
    load_model,
    pick_trajectory,
    resolve_checkpoint,
    robot_data,
    validation_actions,
)

NOISE_FLOOR = math.log(5)


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m vla_ablate.sample",
                       description="Generate from a checkpoint and score a real trajectory.")
    p.add_argument("checkpoint", help="a checkpoint (.pt), or a run folder holding one")
    p.add_argument("--prompt-len", type=positive_int, default=10,
                   help="tokens of the validation trajectory given as the prompt (default 10)")
    p.add_argument("--new-tokens", type=positive_int, default=None,
                   help="tokens to generate (default: the rest of the trajectory)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample among the k likeliest tokens (default: all)")
    p.add_argument("--num-samples", type=non_negative_int, default=2,
                   help="sampled continuations besides the greedy one (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--trajectory", type=non_negative_int, default=0,
                   help="which validation trajectory (default 0)")
    p.add_argument("--data", default=None,
                   help="a dataset file to take it from (default: the run's data)")
    return p.parse_args(argv)


@torch.no_grad()
def prefix_only_losses(model, tokens: torch.Tensor, start: int, stop: int) -> list[float]:
    """Cross-entropy (nats) of tokens[start:stop], each scored from the tokens before it only."""
    out = []
    for t in range(start, stop):
        logits, _ = model(tokens[None, :t])
        out.append(F.cross_entropy(logits[:, -1].float(), tokens[None, t]).item())
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    checkpoint = resolve_checkpoint(args.checkpoint)
    found = robot_data(checkpoint)
    if found is not None:  # a model of a LeRobot dataset: its tokenizer file beside it
        return sample_robot(args, checkpoint, *found)
    state = load_checkpoint_file(args.checkpoint)
    model = load_model(state)
    max_len = model.max_seq_len
    val, source = validation_actions(state["path"], args.data)
    tokens = pick_trajectory(val, args.trajectory, max_len)
    T, K = len(tokens), args.prompt_len
    if K >= T:
        raise CommandError(f"--prompt-len {K} leaves nothing to continue: the trajectories have "
                           f"{T} steps")
    new = args.new_tokens if args.new_tokens is not None else T - K
    if K + new > max_len:
        raise CommandError(f"--prompt-len {K} + --new-tokens {new} exceed the model's "
                           f"max_seq_len ({max_len})")

    prompt = tokens[None, :K]
    greedy = model.generate(prompt, new, top_k=1)[0, K:]
    torch.manual_seed(args.seed)
    samples = (model.generate(prompt.repeat(args.num_samples, 1), new, args.temperature,
                              args.top_k)[:, K:] if args.num_samples else None)
    stop = min(T, K + new)
    losses = prefix_only_losses(model, tokens, K, stop)

    args_ = state["model_args"]
    print(f"checkpoint {state['path']}: step {state.get('step', '?')}, pos={args_.get('pos')}, "
          f"mask={'causal' if args_.get('causal', True) else 'none'}, "
          f"{model.num_parameters():,} parameters")
    print(f"validation trajectory {args.trajectory} of {len(val)} ({source})")
    print(f"note: {TOKEN_NOTE}. Each token reads: token, octant oN with the signs of the "
          "remaining error on x, y, z, distance bin bN with the distance to the target it covers")
    print(f"prompt (steps 0-{K - 1}): " + ", ".join(str(int(t)) for t in prompt[0]))
    print()
    cols = ["true next token", "loss", "greedy"]
    if samples is not None:
        top_k = "all" if args.top_k is None else args.top_k
        cols += [f"sample {i + 1} (T={args.temperature:g}, top-k {top_k})"
                 for i in range(args.num_samples)]
    widths = [29, 6, 29] + [31] * (len(cols) - 3)
    print("step | " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for i in range(new):
        t = K + i
        cells = [describe_token(tokens[t]) if t < T else "", f"{losses[i]:.3f}" if t < T else "",
                 describe_token(greedy[i])]
        cells += [describe_token(s[i]) for s in (samples if samples is not None else [])]
        print(f"{t:4d} | " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)))
    print()
    if losses:
        scored = stop - K
        mean = sum(losses) / scored
        true = [decode_token(tokens[t]) for t in range(K, stop)]
        guess = [decode_token(greedy[t - K]) for t in range(K, stop)]
        same_octant = sum(a[0] == b[0] for a, b in zip(true, guess))
        near_bin = sum(a[0] == b[0] and abs(a[1] - b[1]) <= 2 for a, b in zip(true, guess))
        print(f"true continuation: mean loss {mean:.3f} nats over {scored} tokens (prefix-only; "
              f"the token noise alone costs ln 5 = {NOISE_FLOOR:.3f}); perplexity "
              f"{math.exp(min(mean, 50)):.2f}")
        print(f"greedy vs true: same octant at {same_octant}/{scored} steps, same octant and "
              f"distance bin within 2 at {near_bin}/{scored}")
    return 0


def sample_robot(args, checkpoint, robot, source: str) -> int:
    """``sample`` for a model of a LeRobot dataset: the start of a validation episode as the
    prompt (``--prompt-len`` steps), then each later step's D action tokens generated (given
    the step's recorded states where the layout has state tokens), decoded to the data's units
    by the model's tokenizer file and printed beside the recorded actions."""
    state = load_checkpoint_file(checkpoint, state_tokens=True)
    model = load_model(state)
    layout, tok = robot.layout, robot.tokenizers.action
    P, S, D = layout.per_step, len(layout.state), layout.actions
    if args.trajectory >= len(robot.val):
        raise CommandError(f"--trajectory {args.trajectory} is out of range: there are "
                           f"{len(robot.val)} validation episodes (0..{len(robot.val) - 1})")
    e = int(robot.val[args.trajectory])
    T, K = len(robot.episodes.actions[e]), args.prompt_len
    fits = model.max_seq_len // P
    if K >= min(T, fits):
        raise CommandError(f"--prompt-len {K} leaves nothing to continue: the episode has {T} "
                           f"steps and the model holds {fits}")
    new = args.new_tokens if args.new_tokens is not None else min(T, fits) - K
    if K + new > min(T, fits):
        raise CommandError(f"--prompt-len {K} + --new-tokens {new} exceed the episode's {T} "
                           f"steps or the {fits} the model holds")
    seq = robot.sequences[e][: (K + new) * P]
    given = seq[K * P :].view(1, new, P)[..., :S] if S else None
    ranges = layout.action_ranges()
    offsets = torch.arange(D) * layout.action_bins

    def decoded(out):  # generated sequences (B, L) -> their actions (B, new, D), data's units
        steps = out[:, K * P :].unflatten(1, (new, P))[..., S:] - offsets
        return tok.decode(steps.cpu().numpy())

    greedy = decoded(model.generate(seq[None, : K * P], new, top_k=1, given=given,
                                    step_ranges=ranges))[0]
    torch.manual_seed(args.seed)
    samples = [] if not args.num_samples else decoded(model.generate(
        seq[None, : K * P].repeat(args.num_samples, 1), new, args.temperature, args.top_k,
        given=None if given is None else given.repeat(args.num_samples, 1, 1),
        step_ranges=ranges))
    truth = robot.episodes.actions[e][K : K + new]
    args_ = state["model_args"]
    print(f"checkpoint {state['path']}: step {state.get('step', '?')}, pos={args_.get('pos')}, "
          f"mask={'causal' if args_.get('causal', True) else 'none'}, "
          f"{model.num_parameters():,} parameters")
    print(f"validation episode {args.trajectory} of {len(robot.val)} (episode {e}, {T} steps; "
          f"{source})")
    print(f"each step: {D} action tokens ({', '.join(robot.tokenizers.action_names)})"
          + (f" after {S} given state tokens (the recorded states)" if S else "")
          + f"; prompt: steps 0-{K - 1}; values in the data's units")
    print()
    cols = ["recorded action", "greedy"] + [f"sample {i + 1}" for i in range(len(samples))]
    print("step | " + " | ".join(cols))

    def fmt(values):
        return "[" + " ".join(f"{v:+.4f}" for v in values) + "]"

    for i in range(new):
        cells = [fmt(truth[i]), fmt(greedy[i])] + [fmt(s[i]) for s in samples]
        print(f"{K + i:4d} | " + " | ".join(cells))
    print()
    error = np.abs(greedy - truth).mean(0)
    floor = tok.round_trip_error(truth)
    print(f"greedy vs recorded: mean absolute error {error.mean():.5f} (per dimension "
          f"{fmt(error)}); the tokenizer's round trip alone: {floor.mean():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
