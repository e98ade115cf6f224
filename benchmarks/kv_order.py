"""Does a job's KV speed-up depend on where in the job a pair was timed?

    python benchmarks/kv_order.py RUN_DIR [--pairs 12] [--batch-sizes 1] [--new-tokens 50 150]
        [--threads 2] [--runs 2] [--clock wall|cpu]

RUN_DIR: a trained run (its checkpoint; e.g. ``python -m vla_ablate debug=smoke
model.max_seq_len=200 hydra.run.dir=RUN_DIR``, long enough for the longest generation). Each
run is a fresh process, as a job is, and times ``evaluate.paired_generation_speed`` on the
run's model in its training precision:

- ``before``: the warm-up of before (4 tokens per batch size, once), then the pairs: a cell's
  first pairs pay for the shapes they are the first to run (oneDNN primitives and the
  allocator's pools for every new sequence length), which falls on whichever side runs first
  and fades over the pairs. With 3 pairs a job, that is the "three levels" of the study's KV
  timings (docs/results/2026-11-29);
- ``now`` (``--runs`` times): an untimed warm-up of both sides at each cell, then the pairs,
  each pair's second side right after an untimed run of its own (so every timed run follows
  a run of its own side: a cached decode after an uncached one pays for its state).

Per run and cell: every pair's ratio in order, the median of the first and of the last third
of the pairs and how far apart they are; then, per cell, how far apart the ``now`` runs'
medians are. A timing on a shared CPU is not a timing: say so beside any output.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def one_run(args) -> list:
    """The rows of one process's timing (``--one before|now``)."""
    from vla_ablate import evaluate
    from vla_ablate.trained import load_checkpoint_file, load_model, resolve_checkpoint

    torch.set_num_threads(args.threads)
    state = load_checkpoint_file(resolve_checkpoint(args.run_dir))
    summary = Path(args.run_dir) / "summary.json"
    ran = json.loads(summary.read_text()).get("precision") if summary.is_file() else None
    precision = args.precision or ran or "fp32"
    model = evaluate.generation_model(load_model(state), precision)
    prompts = torch.randint(0, 256, (8, args.prompt_len), generator=torch.Generator().manual_seed(0))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    return evaluate.paired_generation_speed(model, prompts, args.batch_sizes, args.new_tokens,
                                            args.pairs, torch.device("cpu"), clock=clock,
                                            warm_each_cell=args.one == "now")


def thirds(ratios) -> tuple[float, float, float]:
    """(median of the first third, of the last third, |last/first - 1|)."""
    k = max(1, len(ratios) // 3)
    first, last = statistics.median(ratios[:k]), statistics.median(ratios[-k:])
    return first, last, abs(last / first - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[50, 150])
    parser.add_argument("--prompt-len", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="fresh processes with the warm-up")
    parser.add_argument("--precision", default=None, help="default: the run's own")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (time.process_time), which other "
                             "processes on a shared host disturb far less than the wall clock; "
                             "use it with --threads 1")
    parser.add_argument("--one", choices=["before", "now"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    own = sys.argv[1:]
    results = {}
    for name, mode in [("before", "before")] + [(f"now-{i + 1}", "now") for i in range(args.runs)]:
        out = subprocess.run([sys.executable, __file__, *own, "--one", mode], check=True,
                             capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, {args.pairs} "
          f"pairs per cell (on-off, off-on, ...), one fresh process per run")
    print(f"{'run':8} {'batch':>5} {'new':>4} {'median':>7} {'first/3':>8} {'last/3':>7} "
          f"{'apart':>6}  ratios in order")
    for name, rows in results.items():
        for r in rows:
            ratios = [p["speedup"] for p in r["pairs"]]
            first, last, apart = thirds(ratios)
            print(f"{name:8} {r['batch_size']:5d} {r['new_tokens']:4d} {r['speedup']:7.2f} "
                  f"{first:8.2f} {last:7.2f} {apart:6.1%}  "
                  + " ".join(f"{x:.2f}" for x in ratios))
    now = [rows for name, rows in results.items() if name.startswith("now")]
    for cells in zip(*now):
        medians = [c["speedup"] for c in cells]
        print(f"runs with the warm-up, batch {cells[0]['batch_size']}, {cells[0]['new_tokens']} "
              f"new: medians {' / '.join(f'{m:.2f}' for m in medians)}, apart "
              f"{max(medians) / min(medians) - 1:.1%}")


if __name__ == "__main__":
    main()
