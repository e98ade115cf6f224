"""Where a cached decoding step's time goes: torch.profiler over greedy decoding at batch 1.

    python benchmarks/profile_decode.py [--dtype bf16] [--new-tokens 200] [--threads 1]

The assignment's model size (random weights, ``model.attn_impl=manual``) in ``--dtype`` weights
and KV cache decodes ``--new-tokens`` tokens after a warm-up; the table lists the operators by
their own CPU time. Not a timing comparison: it shows shares of one run.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.precision import DTYPES

SIZE = dict(vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--rows", type=int, default=12, help="operators listed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**SIZE, max_seq_len=10 + args.new_tokens, dropout=0.0)
    model = model.to(DTYPES[args.dtype]).eval()
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    model.generate(prompt, min(20, args.new_tokens), top_k=1)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.generate(prompt, args.new_tokens, top_k=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.dtype} weights and KV cache, "
          f"{args.new_tokens} new tokens at batch 1")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
