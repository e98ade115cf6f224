"""``python -m vla_ablate.check_cache JOB``: a job's KV-cache check, run again on its model.

The check a job runs in its evaluations (``evaluate.kv_cache_consistency``), with the same
prompts (with state tokens, the same given states) and the same number of new steps: in the
job's generation precision, or in each one ``--precision`` names. For each it prints whether
cached decoding matched the full pass, the largest difference of their logits against the
precision's tolerance, and, where the two greedy decodes part, how far apart the full and the
cached pass scored the two tokens there (within the tolerance: a near-tie, which rounding
orders either way).
Jobs evaluated before the check knew near-ties recorded such a model as not matching; this
command checks them with today's code. The decode runs eager, on the CPU unless ``--device``,
with this process's threads: a job that decoded elsewhere (compiled on CUDA, say) may round
differently, so its recorded figures are printed beside these.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vla_ablate import evaluate
from vla_ablate.console import ArgumentParser, run_command
from vla_ablate.data.tokens import layout_from_config
from vla_ablate.errors import CommandError, first_line
from vla_ablate.evaluations import consistency_inputs
from vla_ablate.runfolder import JOB_CONFIG, SUMMARY, read_json
from vla_ablate.trained import load_checkpoint_file, load_model, robot_data, validation_actions

PRECISIONS = ("fp32", "bf16", "fp16")


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m vla_ablate.check_cache",
                       description="Run a job's KV-cache check again on its trained model.")
    p.add_argument("job", type=Path, help="a job folder (it holds .hydra/config.yaml and its "
                                          "summary.json names the trained model)")
    p.add_argument("--precision", action="append", choices=PRECISIONS,
                   help="generation precision; repeat for several (default: the job's)")
    p.add_argument("--device", default="cpu", help="device to decode on (default cpu)")
    return p.parse_args(argv)


def check_job(job: Path, precisions=None, device="cpu") -> list[dict]:
    """The check's result per precision, each with ``precision`` and what the job recorded."""
    config = job / JOB_CONFIG
    if not config.is_file():
        raise CommandError(f"{job} is not a job folder (no .hydra/config.yaml)")
    try:
        cfg = OmegaConf.load(config)
        layout = layout_from_config(cfg)
    except Exception as err:  # noqa: BLE001 - unreadable YAML, a missing key, a bad group
        raise CommandError(f"{config}: {first_line(err)}") from None
    summary = read_json(job / SUMMARY) or {}
    recorded = summary.get("kv_cache") or {}
    state = load_checkpoint_file(job, state_tokens=True)
    try:
        model = load_model(state).to(device)
    except (RuntimeError, ValueError) as err:  # no such device here
        raise CommandError(f"cannot use --device {device}: {first_line(err)}") from None
    # the action layout prompts with the validation split's first steps (generated without
    # Hydra, as the job's data.seed or data.path made it); a rollout draws fresh trajectories;
    # a LeRobot dataset's model: its validation episodes, read through its tokenizer file
    found = robot_data(state["path"])
    robot, ranges = None, None
    if found is not None:
        robot, layout = found[0], found[0].layout
        ranges = layout.action_ranges()
    val = (validation_actions(state["path"])[0] if layout.name == "action" and robot is None
           else None)
    prompts, given, new = consistency_inputs(cfg, layout, val, robot)
    first = None if given is None else given[:4, :new].to(device)
    results = []
    for precision in precisions or [recorded.get("precision") or "fp32"]:
        gen = evaluate.generation_model(model, precision)
        result = evaluate.kv_cache_consistency(gen, prompts[:4].to(device), new,
                                               torch.device(device), given=first,
                                               step_ranges=ranges)
        if recorded.get("precision") == precision and recorded.get("consistency"):
            result["recorded"] = {**recorded["consistency"], "device": summary.get("device")}
        results.append(result)
    return results


def describe(result: dict) -> str:
    verdict = "matches the full pass" if result["matches"] else "does NOT match the full pass"
    lines = [f"{result['precision']}: cached decoding {verdict}; largest logit difference "
             f"{result['max_logit_diff']:.4g} (tolerance {result['tolerance']:g})"]
    if result["greedy_tokens_match"]:
        lines.append("  greedy decodes: identical")
    elif "first_difference" not in result:  # unmasked: not scored (the full pass sees ahead)
        lines.append("  greedy decodes part; without a causal mask that is not scored as a "
                     "near-tie or an error")
    else:
        d = result["first_difference"]
        kind = "a near-tie" if result["greedy_tie"] else "beyond the tolerance"
        lines.append(f"  greedy decodes part in {len(d['rows'])} of the prompts, first at row "
                     f"{d['row']} position {d['position']}; there the full and the cached pass "
                     f"score the two tokens {d['largest_logit_gap']:.4g} apart at most: {kind}")
    if "note" in result:
        lines.append(f"  {result['note']}")
    if "recorded" in result:
        r = result["recorded"]
        lines.append(f"  the job recorded (on {r.get('device') or 'its device'}): matches "
                     f"{r.get('matches')}, greedy decodes identical "
                     f"{r.get('greedy_tokens_match')}, "
                     f"largest logit difference {r.get('max_logit_diff')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = check_job(args.job, args.precision, args.device)
    for result in results:
        print(describe(result))
    return 0 if all(r["matches"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
