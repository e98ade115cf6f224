"""Generation speed: our KV cache on vs off, and against transformers' LlamaForCausalLM.

    python benchmarks/generation.py [--repeats 5] [--batch-sizes 1 32] [--new-tokens 50 400]
                                    [--dtypes fp32 bf16] [--attn-impls manual sdpa]

Greedy decoding of the assignment's model size (dim 256, 4 layers, 8 heads, FF 1024, vocab 256,
random weights) from the same 10-token prompts. Both of our paths do equal work: the same
prompt, the same number of new tokens, the full context every step (no cropping). Each cell gets
a warm-up call, then ``--repeats`` timed calls (fewer when one call exceeds ``--max-seconds``);
the table shows the median, the spread (max - min) and the number of repeats. Our cached path
and the Llama baseline (``pip install -e ".[bench]"``) are timed in alternation, so drifts of
the machine hit both alike; their ratio is given as the ratio of the medians and, paired by
repeat, as the median and range of the per-repeat ratios. Every comparison is at one dtype
(``--dtypes``): both models' weights and KV caches in fp32, or both in bf16. And at one kind of
attention (``--attn-impls``): our written-out attention (``model.attn_impl=manual``, the
default) against Llama's written-out one (``attn_implementation="eager"``), our ``sdpa`` against
Llama's ``sdpa`` (transformers' default). The table is read within a pairing; our two attention
paths are timed one after the other, not in alternation. Goals: cached >= 2x uncached at 50 new
tokens and >= 5x at 400 (batch 1); cached >= 1.5x Llama's cached decoding at batch 1, in each
pairing.
"""

import argparse
import copy
import itertools
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


LLAMA_ATTN = {"manual": "eager", "sdpa": "sdpa"}  # Llama's attention of the same kind as ours


def llama(max_len, attn_impl="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=1024,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=max_len, tie_word_embeddings=False,
                      attn_implementation=LLAMA_ATTN[attn_impl])
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


def row(label, dtype, attn, batch, n, times):
    med = statistics.median(times)
    return {"path": label, "dtype": dtype, "attn": attn, "batch": batch, "new": n,
            "tok_s": batch * n / med, "median_s": med, "spread_s": max(times) - min(times),
            "runs": len(times), "times": times}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--prompt-len", type=int, default=10)
    parser.add_argument("--attn-impls", nargs="+", default=["manual", "sdpa"],
                        choices=["manual", "sdpa"],
                        help="our attention paths; each is compared with Llama's of the same kind")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop repeating a cell once one call takes longer than this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-llama", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.attn_impls = list(dict.fromkeys(args.attn_impls))  # a repeat would mix the ratios
    args.dtypes = list(dict.fromkeys(args.dtypes))
    max_len = args.prompt_len + max(args.new_tokens)
    ours32 = {}
    for impl in args.attn_impls:  # the same weights (seed 0), the chosen attention path
        torch.manual_seed(0)
        ours32[impl] = DecoderOnlyTransformer(**SIZE, max_seq_len=max_len, dropout=0.0,
                                              attn_impl=impl).eval()
    base32 = {}
    if not args.no_llama:
        try:
            for impl in args.attn_impls:
                torch.manual_seed(0)
                base32[impl] = llama(max_len, impl)
        except ImportError:
            print("transformers is not installed (pip install -e '.[bench]'): skipping Llama")
    # named from the built models, so the table says what actually ran
    attn_of = {i: m.blocks[0].attention.attn_impl for i, m in ours32.items()}
    llama_attn = {i: m.config._attn_implementation for i, m in base32.items()}
    pairs = (", ".join(f"ours {attn_of[i]} vs Llama {llama_attn[i]}" for i in args.attn_impls)
             if base32 else ", ".join(attn_of[i] for i in args.attn_impls))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, "
          f"{ours32[args.attn_impls[0]].num_parameters():,} parameters; attention: {pairs}",
          flush=True)

    rows = []
    for dtype, impl in itertools.product(args.dtypes, args.attn_impls):
        ours = copy.deepcopy(ours32[impl]).to(DTYPES[dtype])
        base = base32.get(impl)
        base = None if base is None else copy.deepcopy(base).to(DTYPES[dtype])
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
                ours.generate(prompt, min(4, n), top_k=1, use_cache=False)  # warm-up
                times = measure(fns, args.repeats, args.max_seconds)
                rows.append(row("ours, cache on", dtype, impl, batch, n, times[0]))
                if with_llama:
                    rows.append(row(f"Llama ({llama_attn[impl]}), cache on", dtype, impl, batch,
                                    n, times[1]))
                rows.append(row("ours, cache off", dtype, impl, batch, n,
                                measure([plain], args.repeats, args.max_seconds)[0]))
                print(f"  measured {dtype}, {impl} attention, batch {batch}, {n} new tokens",
                      flush=True)

    print(f"\n{'path':<24}{'attention':>10}{'dtype':>6}{'batch':>6}{'new':>6}{'tokens/s':>11}"
          f"{'median s':>10}{'spread s':>10}{'runs':>6}")
    for r in rows:
        print(f"{r['path']:<24}{r['attn']:>10}{r['dtype']:>6}{r['batch']:>6}{r['new']:>6}"
              f"{r['tok_s']:>11,.1f}{r['median_s']:>10.3f}{r['spread_s']:>10.3f}{r['runs']:>6}")
    print("\nratios (tokens/s, same dtype, same kind of attention):")
    for dtype, impl, batch, n in itertools.product(args.dtypes, args.attn_impls,
                                                   args.batch_sizes, args.new_tokens):
        cell = {r["path"]: r for r in rows
                if (r["dtype"], r["attn"], r["batch"], r["new"]) == (dtype, impl, batch, n)}
        ours = cell["ours, cache on"]
        line = (f"  {dtype}, {impl:>6}, batch {batch:>2}, {n:>3} new: cache on / off = "
                f"{ours['tok_s'] / cell['ours, cache off']['tok_s']:.2f}x")
        llama_row = cell.get(f"Llama ({llama_attn.get(impl)}), cache on")
        if llama_row:
            # timed in alternation: repeat i of each side ran back to back, so pair them
            paired = [b / a for a, b in zip(ours["times"], llama_row["times"])]
            line += (f"; ours cached / Llama cached = {ours['tok_s'] / llama_row['tok_s']:.2f}x "
                     f"(paired by repeat: median {statistics.median(paired):.2f}x, "
                     f"{min(paired):.2f}-{max(paired):.2f})")
        print(line)


if __name__ == "__main__":
    main()
