"""A decoding step's attention in bf16 on a CPU: the float32 products against torch's bf16 kernel.

    python benchmarks/decode_attention.py [--rounds 5] [--batch-sizes 1 8] [--new-tokens 50 400]

Cached greedy decoding of the assignment's model size (dim 256, 4 layers, 8 heads, FF 1024,
vocab 256, random weights, ``model.attn_impl=manual``) in bf16 weights and KV cache, from the
same 10-token prompts. The two sides differ in one thing: the two products of a one-query step's
attention (query x keys, weights x values), computed from the bf16 tensors in float32 and
rounded once to bf16 (``vla_ablate.model.attention.matmul_via_float32``, what the model does),
or by torch's bf16 batched matrix product (what it did before). Each round times both sides one
after the other, in alternating order; the table shows the median over rounds, and the ratio is
the median of the per-round ratios. The greedy tokens of the two sides are compared as well.
"""

import argparse
import statistics
import time
from unittest import mock

import torch

from vla_ablate.model import DecoderOnlyTransformer, attention

SIZE = dict(vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024)
SIDES = ("float32 products", "bf16 kernel")


def decode(model, prompt, n, side):
    """Cached greedy decoding with the one-query products of ``side``; returns (seconds, tokens)."""
    fast = attention.one_query_low_precision_cpu if side == SIDES[0] else (lambda q: False)
    with mock.patch.object(attention, "one_query_low_precision_cpu", fast):
        start = time.perf_counter()
        out = model.generate(prompt, n, top_k=1, use_cache=True)
        return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--prompt-len", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**SIZE, max_seq_len=args.prompt_len + max(args.new_tokens),
                                   dropout=0.0).eval().to(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {model.num_parameters():,} parameters, "
          "bf16 weights and KV cache, manual attention", flush=True)

    rows = []
    for batch in args.batch_sizes:
        prompt = torch.randint(0, 256, (batch, args.prompt_len),
                               generator=torch.Generator().manual_seed(batch))
        for n in args.new_tokens:
            for side in SIDES:  # warm-up
                decode(model, prompt, min(4, n), side)
            times = {side: [] for side in SIDES}
            tokens = {}
            for r in range(args.rounds):
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    seconds, tokens[side] = decode(model, prompt, n, side)
                    times[side].append(seconds)
            ratios = [k / f for f, k in zip(times[SIDES[0]], times[SIDES[1]])]
            rows.append(dict(batch=batch, new=n, times=times, ratio=statistics.median(ratios),
                             lo=min(ratios), hi=max(ratios),
                             same=torch.equal(tokens[SIDES[0]], tokens[SIDES[1]])))
            print(f"  measured batch {batch}, {n} new tokens", flush=True)

    print(f"\n{'batch':>5}{'new':>5}  {'side':<18}{'tokens/s':>10}{'median s':>10}")
    for r in rows:
        for side in SIDES:
            med = statistics.median(r["times"][side])
            print(f"{r['batch']:>5}{r['new']:>5}  {side:<18}{r['batch'] * r['new'] / med:>10,.1f}"
                  f"{med:>10.3f}")
    print(f"\nfloat32 products / bf16 kernel, decoding speed (median of {args.rounds} paired "
          "rounds; min-max):")
    for r in rows:
        print(f"  batch {r['batch']:>2}, {r['new']:>3} new tokens: {r['ratio']:.2f}x "
              f"({r['lo']:.2f}-{r['hi']:.2f}); greedy tokens "
              f"{'identical' if r['same'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
