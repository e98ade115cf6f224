"""torch.compile of the training step and of the cached decode step, against eager mode.

    python benchmarks/compile_step.py [--steps 30] [--new-tokens 50] [--precision auto]

Training: the default model (batch 64 x 49 tokens, in ``--precision``: by default as
``train.precision=auto`` resolves here) for ``--steps`` steps eagerly and compiled, the same
weights; the compiled side's first step includes the compilation. The table gives the compile
time, the median step time of each side after it, and the steps a run needs before compiling
pays for itself (the default run takes ``train.steps`` of them). Decoding: greedy generation of ``--new-tokens`` at batch 1 with
the KV cache, eager against a compiled decode step (``dynamic=True``: the cached prefix grows
every step), after a warm-up that includes the compilation.
"""

import argparse
import copy
import statistics
import time

import torch

from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.optim import make_optimizer
from vla_ablate.precision import autocast, resolve_precision


class _Recipe:  # the optimiser settings of the default recipe
    optimizer, lr, weight_decay = "muon", 3e-3, 0.1


def train_times(model, steps, precision, data, compile_it):
    opt = make_optimizer(model, _Recipe)
    fn = torch.compile(model, dynamic=False) if compile_it else model
    times = []
    cpu = torch.device("cpu")
    for _ in range(steps):
        t = time.perf_counter()
        with autocast(precision, cpu):
            _, loss = fn(data[:, :-1], data[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="of the training step (default: as train.precision=auto resolves)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision, why = resolve_precision(args.precision, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, precision {precision} ({why})", flush=True)
    torch.manual_seed(0)
    base = DecoderOnlyTransformer(dropout=0.0)
    data = torch.randint(0, 256, (args.batch_size, 50), generator=torch.Generator().manual_seed(0))
    eager = train_times(copy.deepcopy(base), args.steps, precision, data, False)
    compiled = train_times(copy.deepcopy(base), args.steps, precision, data, True)
    e, c = statistics.median(eager[2:]), statistics.median(compiled[2:])
    overhead = compiled[0] - e
    gain = e - c
    print(f"\n{'training step':<28}{'first s':>9}{'median s':>10}")
    print(f"{'eager':<28}{eager[0]:>9.2f}{e:>10.3f}")
    print(f"{'compiled':<28}{compiled[0]:>9.2f}{c:>10.3f}")
    pays = f"after {overhead / gain:,.0f} steps" if gain > 0 else "never (no gain per step)"
    print(f"compiled / eager per step = {c / e:.2f}x; compiling costs {overhead:.1f} s and pays "
          f"for itself {pays}")

    model = base.eval()
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    results = {}
    for label, compile_it in (("eager", False), ("compiled", True)):
        m = copy.deepcopy(model)
        if compile_it:
            m.hidden_states = torch.compile(m.hidden_states, dynamic=True)
        t = time.perf_counter()
        m.generate(prompt, args.new_tokens, top_k=1)  # warm-up (compiles)
        first = time.perf_counter() - t
        times = []
        for _ in range(5):
            t = time.perf_counter()
            m.generate(prompt, args.new_tokens, top_k=1)
            times.append(time.perf_counter() - t)
        results[label] = (first, statistics.median(times))
    print(f"\n{'cached decoding, batch 1':<28}{'first s':>9}{'median s':>10}")
    for label, (first, med) in results.items():
        print(f"{label:<28}{first:>9.2f}{med:>10.3f}")
    print(f"compiled / eager = {results['compiled'][1] / results['eager'][1]:.2f}x "
          f"({args.new_tokens} new tokens)")


if __name__ == "__main__":
    main()
