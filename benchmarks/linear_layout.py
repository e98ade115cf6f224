"""Why our linear layer stores (in, out): the two weight layouts, one token and one batch.

    python benchmarks/linear_layout.py [--rounds 15] [--repeats 50] [--tokens 1568]
                                       [--dtype fp32|bf16]

The model's 21 matrices (4 blocks of qkv, out, gate, up, down, and the head), each a distinct
tensor as in the model, so that reading them all per token costs what it costs in decoding.
Two rows per case: ``nn.Linear``'s (out, in) layout computed as ``F.linear(x, W)``, and ours,
(in, out) computed as ``x @ W``. Cases: one token (cached decoding at batch 1) forward only,
and ``--tokens`` rows (a training batch of 32 x 49) forward and backward. Rounds alternate
the two layouts; the table shows the median time per pass over the 21 matrices, the spread
and the median of the per-round ratios. ``--dtype bf16`` stores weights and inputs in bfloat16
(the evaluations' decoding where the CPU computes bf16 natively).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(256, 768), (256, 256), (256, 1024), (256, 1024), (1024, 256)] * 4 + [(256, 256)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=50, help="passes per timed round")
    parser.add_argument("--tokens", type=int, default=32 * 49, help="rows of the training case")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    ours = [torch.randn(i, o, dtype=dtype, requires_grad=True) for i, o in SHAPES]  # (in, out)
    theirs = [torch.randn(o, i, dtype=dtype, requires_grad=True)  # nn.Linear's (out, in)
              for i, o in SHAPES]
    size = sum(i * o for i, o in SHAPES) * ours[0].element_size() / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {len(SHAPES)} matrices, {size:.1f} MB of "
          f"{args.dtype} weights", flush=True)

    def case(rows, backward):
        xs = {n: torch.randn(rows, n, dtype=dtype, requires_grad=backward) for n in (256, 1024)}

        def run(weights, apply):
            with torch.set_grad_enabled(backward):
                for w in weights:
                    y = apply(xs[w.shape[0] if apply is matmul else w.shape[1]], w)
                    if backward:
                        y.backward(torch.ones_like(y))
        return (lambda: run(theirs, F.linear)), (lambda: run(ours, matmul))

    print(f"\n{'case':<34}{'layout':<22}{'ms/pass':>9}{'spread':>9}{'vs (out, in)':>14}")
    for label, rows, backward in (("1 token, forward (decoding)", 1, False),
                                  (f"{args.tokens} tokens, forward + backward", args.tokens, True)):
        fns = dict(zip(("(out, in): F.linear", "(in, out): x @ W"), case(rows, backward)))
        repeats = args.repeats if rows == 1 else max(1, args.repeats // 10)
        times = {name: [] for name in fns}
        for fn in fns.values():  # warm-up
            fn()
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for name in order:
                start = time.perf_counter()
                for _ in range(repeats):
                    fns[name]()
                times[name].append((time.perf_counter() - start) / repeats * 1e3)
        base = times["(out, in): F.linear"]
        for name, t in times.items():
            ratio = statistics.median(b / a for a, b in zip(t, base))  # speed-up over (out, in)
            print(f"{label:<34}{name:<22}{statistics.median(t):>9.3f}{max(t) - min(t):>9.3f}"
                  f"{ratio:>13.2f}x")
    print(f"\n(median of {args.rounds} alternating rounds; 'vs (out, in)' is the median per-round "
          "speed-up over nn.Linear's layout)")


def matmul(x, w):
    return x @ w


if __name__ == "__main__":
    main()
