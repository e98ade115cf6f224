"""A job's evaluations of its trained model, from its config: which ones, on which inputs."""

from __future__ import annotations

import time
from contextlib import contextmanager

from vla_ablate import evaluate, plots, runfolder
from vla_ablate.console import log
from vla_ablate.data.process import derived_seed, generate_dataset
from vla_ablate.data.robot import RobotData
from vla_ablate.data.tokens import TokenLayout
from vla_ablate.host import jobs_at_once
from vla_ablate.runfolder import ATTENTION_MAPS_PNG
from vla_ablate.training.compile import use_compile_decode


def run_evaluations(cfg, model, seen_actions, val_actions, device, run_dir, precision,
                    layout: TokenLayout, title: str, robot: RobotData | None = None) -> dict:
    """The per-run evaluations, counted in steps and scored on action tokens in every layout.

    ``robot``: a LeRobot dataset (``data=lerobot``), tokenized by the trained model's own
    tokenizer file: extrapolation takes longer windows of its validation episodes, generation
    makes each step's D action tokens (given the step's states in ``state_action``), and the
    action error in the data's units is added (``action_error``)."""
    e = cfg.eval
    step = _Steps(["mask audit", "position shift", "extrapolation", "KV-cache consistency",
                   "KV-cache speed", *(["attention maps"] if e.attention_maps else []),
                   *(["action error"] if robot is not None else [])])
    log(f"evaluating in {precision}: {', '.join(step.names)}")
    out = {}
    with step():
        out["mask_audit"] = evaluate.mask_audit(model, seen_actions, val_actions, device,
                                                e.audit_trajectories, precision, layout)
    with step():
        out["position_shift"] = evaluate.position_shift(
            model, val_actions[: e.shift_trajectories], list(e.position_shifts), device,
            precision, layout)
    with step():
        if robot is None:
            out["extrapolation"] = evaluate.extrapolation(
                model, cfg.data.seed, cfg.data.seq_length, list(e.extrapolation_factors),
                e.extrapolation_trajectories, device, precision, layout)
        else:
            out["extrapolation"] = evaluate.extrapolation_windows(
                model, robot, list(e.extrapolation_factors), e.extrapolation_trajectories,
                device, precision)
    gen_model = evaluate.generation_model(model, precision,
                                          compile_decode=use_compile_decode(cfg.train.compile,
                                                                            device))
    prompts, given, new = consistency_inputs(cfg, layout, val_actions, robot)
    first = None if given is None else given[:4, :new]
    ranges = None if robot is None else layout.action_ranges()
    with step():
        consistency = evaluate.kv_cache_consistency(gen_model, prompts[:4], new, device,
                                                    given=first, step_ranges=ranges)
    with step():  # both sides on this model in this process, alternated: a paired ratio
        speed = evaluate.paired_generation_speed(gen_model, prompts, list(e.gen_batch_sizes),
                                                 list(e.gen_new_tokens), e.gen_repeats, device,
                                                 given=given, step_ranges=ranges)
    out["kv_cache"] = {"consistency": consistency, "precision": precision, "speed": speed,
                       "concurrent_jobs": jobs_at_once(cfg)}
    if robot is not None:  # eval.gen_new_tokens count steps of D tokens (rows: new_steps, new_tokens)
        out["kv_cache"]["generated_per_step"] = layout.actions
    if e.attention_maps:  # over steps: with state tokens, the rows that predict the actions
        with step():
            maps = [layout.step_attention(m[0])
                    for m in model.attention_maps(val_actions[:1].to(device))]
            what = "" if layout.name == "action" else " (rows: the query predicting each action)"
            plots.attention_maps(maps, run_dir / ATTENTION_MAPS_PNG,
                                 title=f"{title}: attention on one validation trajectory{what}")
            runfolder.write_attention_maps(run_dir, maps, layout.actions_of(val_actions[0]))
    if robot is not None:
        with step():
            out["action_error"] = evaluate.action_error(model, robot, device, precision)
    log(f"evaluations done in {time.perf_counter() - step.t0:.1f} s")
    return out


class _Steps:
    """``with steps():`` around each evaluation in turn: a line as each one starts
    (``evaluation 2/6: position shift``), so the console moves while they run."""

    def __init__(self, names: list[str]):
        self.names, self.done, self.t0 = names, 0, time.perf_counter()

    @contextmanager
    def __call__(self):
        self.done += 1
        t0 = time.perf_counter()
        log(f"evaluation {self.done}/{len(self.names)}: {self.names[self.done - 1]}")
        yield
        if time.perf_counter() - t0 > 10:  # a slow one says what it cost
            log(f"  {self.names[self.done - 1]} took {time.perf_counter() - t0:.0f} s")


def consistency_inputs(cfg, layout: TokenLayout, val_seqs, robot: RobotData | None = None):
    """(prompts, given, new steps) of the KV-cache evaluations; the consistency check uses the
    first 4 prompts (and their given states) over ``new`` steps. ``robot``: the starts of its
    validation episodes (``RobotData.rollouts``; given is None without state tokens), over
    20 // D steps of D action tokens."""
    new = min(20, cfg.model.max_seq_len - cfg.eval.gen_prompt_len)
    if robot is None:
        return (*rollout_inputs(cfg, layout, val_seqs, new), new)
    e = cfg.eval
    longest = max(robot.lengths(robot.val))
    # about as many generated tokens as the course's 20 (D a step), within the episodes: the
    # states of every step come from the data
    new = min(new, max(1, 20 // layout.actions), longest - e.gen_prompt_len)
    prompts, given = robot.rollouts(e.gen_prompt_len, max([*e.gen_new_tokens, new]))
    return prompts, given if layout.state else None, new


def rollout_inputs(cfg, layout: TokenLayout, val_seqs, new: int):
    """(prompts, given) for the KV-cache evaluations: 8 prompts of ``eval.gen_prompt_len``
    steps and, for a state_action layout, the state tokens of every step to generate.

    Action tokens alone: the validation trajectories' first steps, nothing given. With state
    tokens the rollout needs the states of every generated step, so it runs on fresh
    trajectories of the process long enough for the longest generation.
    """
    e = cfg.eval
    if layout.name == "action":
        return val_seqs[:8, : e.gen_prompt_len], None
    steps = e.gen_prompt_len + max([*e.gen_new_tokens, new])
    data = generate_dataset(8, steps, derived_seed(cfg.data.seed, "rollout"), progress=False)
    seqs = layout.sequences(data["states"], data["actions"])
    return (seqs[:, : layout.positions(e.gen_prompt_len)],
            layout.given(data["states"])[:, e.gen_prompt_len :])
