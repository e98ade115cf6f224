"""Generation speed: our KV cache on vs off, and against transformers' LlamaForCausalLM.

    python benchmarks/generation.py [--repeats 5] [--batch-sizes 1 32] [--new-tokens 50 400]
                                    [--dtypes fp32 bf16]

Greedy decoding of the assignment's model size (dim 256, 4 layers, 8 heads, FF 1024, vocab 256,
random weights) from the same 10-token prompts. Both of our paths do equal work: the same
prompt, the same number of new tokens, the full context every step (no cropping). Each cell gets
a warm-up call, then ``--repeats`` timed calls (fewer when one call exceeds ``--max-seconds``);
the table shows the median, the spread (max - min) and the number of repeats. Our cached path
and the Llama baseline (``pip install -e ".[bench]"``) are timed in alternation, so drifts of
the machine hit both alike. Every comparison is at one dtype (``--dtypes``): both models' weights
and KV caches in fp32, or both in bf16.
Goals: cached >= 2x uncached at 50 new tokens and >= 5x at 400 (batch 1); cached >= 1.5x
Llama's cached decoding at batch 1.
"""

import argparse
import copy
import statistics
import time
from functools import partial

import torch

from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.precision import DTYPES

SIZE = dict(vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def llama(max_len):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=1024,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=max_len, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def llama_generate(model, prompt, n):
    with torch.inference_mode():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)


def measure(fns, repeats, max_seconds):
    """Time each function in ``fns`` alternately; returns one list of times per function."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(timed(fn))
        if max(t[-1] for t in times) > max_seconds:
            break
    return times


def row(label, dtype, batch, n, times):
    med = statistics.median(times)
    return {"path": label, "dtype": dtype, "batch": batch, "new": n, "tok_s": batch * n / med, "median_s": med,
            "spread_s": max(times) - min(times), "runs": len(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--prompt-len", type=int, default=10)
    parser.add_argument("--attn-impl", default="manual", choices=["manual", "sdpa"])
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop repeating a cell once one call takes longer than this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-llama", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    max_len = args.prompt_len + max(args.new_tokens)
    ours32 = DecoderOnlyTransformer(**SIZE, max_seq_len=max_len, dropout=0.0,
                                    attn_impl=args.attn_impl).eval()
    base32 = None
    if not args.no_llama:
        try:
            base32 = llama(max_len)
        except ImportError:
            print("transformers is not installed (pip install -e '.[bench]'): skipping Llama")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {ours32.num_parameters():,} parameters, "
          f"attn_impl={args.attn_impl}", flush=True)

    rows = []
    for dtype in args.dtypes:
        ours = ours32 if dtype == "fp32" else copy.deepcopy(ours32).to(DTYPES[dtype])
        base = None if base32 is None else (
            base32 if dtype == "fp32" else copy.deepcopy(base32).to(DTYPES[dtype]))
        for batch in args.batch_sizes:
            prompt = torch.randint(0, 256, (batch, args.prompt_len),
                                   generator=torch.Generator().manual_seed(batch))
            for n in args.new_tokens:
                cached = partial(ours.generate, prompt, n, top_k=1, use_cache=True)
                plain = partial(ours.generate, prompt, n, top_k=1, use_cache=False)
                fns = [cached]
                with_llama = base is not None and batch == 1
                if with_llama:
                    fns.append(partial(llama_generate, base, prompt, n))
                for fn in fns:  # warm-up
                    fn()
                ours.generate(prompt, 4, top_k=1, use_cache=False)
                times = measure(fns, args.repeats, args.max_seconds)
                rows.append(row("ours, cache on", dtype, batch, n, times[0]))
                if with_llama:
                    rows.append(row("Llama (transformers), cache on", dtype, batch, n, times[1]))
                rows.append(row("ours, cache off", dtype, batch, n,
                                measure([plain], args.repeats, args.max_seconds)[0]))
                print(f"  measured {dtype}, batch {batch}, {n} new tokens", flush=True)

    print(f"\n{'path':<32}{'dtype':>6}{'batch':>6}{'new':>6}{'tokens/s':>11}{'median s':>10}"
          f"{'spread s':>10}{'runs':>6}")
    for r in rows:
        print(f"{r['path']:<32}{r['dtype']:>6}{r['batch']:>6}{r['new']:>6}{r['tok_s']:>11,.1f}"
              f"{r['median_s']:>10.3f}{r['spread_s']:>10.3f}{r['runs']:>6}")
    print("\nratios (tokens/s, same dtype):")
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            for n in args.new_tokens:
                get = {r["path"]: r["tok_s"] for r in rows
                       if (r["dtype"], r["batch"], r["new"]) == (dtype, batch, n)}
                line = (f"  {dtype}, batch {batch:>2}, {n:>3} new: cache on / off = "
                        f"{get['ours, cache on'] / get['ours, cache off']:.2f}x")
                if "Llama (transformers), cache on" in get:
                    line += (f"; ours cached / Llama cached = "
                             f"{get['ours, cache on'] / get['Llama (transformers), cache on']:.2f}x")
                print(line)


if __name__ == "__main__":
    main()
