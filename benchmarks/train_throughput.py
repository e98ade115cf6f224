"""Training throughput of our model against a straightforward reference of the same model.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 5] [--batch-size 32]
                                          [--precisions fp32 auto]

The reference is the plain way to write the same architecture in PyTorch: nn.RMSNorm,
F.scaled_dot_product_attention, rotate-half RoPE, a SwiGLU MLP; same sizes, same initial
weights, same AdamW. Each round times ``--steps`` training steps (forward, backward, AdamW) of
every model in turn, after a warm-up; the table shows the median tokens/s over rounds, the
spread, training work per second (tokens/s x parameters) and its ratio to the reference (of the
medians, and the median of the ratios within each round, whose order rotates), and
model FLOPs utilisation: 6 x parameters x tokens/s against the machine's matmul peak measured
in the same run (a 2048^3 matmul in the row's precision; 512^3 in emulated bf16). Every model
runs in each of ``--precisions`` (``auto`` resolves as ``train.precision=auto`` does: bf16
where the CPU computes it natively); the ratios are against the reference in fp32, measured in
the same rounds.
Goals: our work/s >= the reference's at the same precision; ``auto`` >= 1.8x the fp32 reference
on a CPU with native bf16.
"""

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.precision import DTYPES, autocast, bf16_native, resolve_precision

SIZE = dict(vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024)
REF = "reference (SDPA, nn.RMSNorm)"


class RefBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.norm2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Reference(nn.Module):
    def __init__(self, vocab_size, dim, num_layers, num_heads, ff_hidden_dim, max_len=256):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(RefBlock(dim, num_heads, ff_hidden_dim)
                                    for _ in range(num_layers))
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        hd = dim // num_heads
        ang = torch.outer(torch.arange(max_len).float(),
                          10000 ** (-torch.arange(0, hd, 2).float() / hd))
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = self.head(self.norm(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def copy_weights(ours, ref):
    """Start both from the same weights, so they do the same arithmetic on the same numbers."""
    with torch.no_grad():
        ref.emb.weight.copy_(ours.token_embedding.weight)
        ref.head.weight.copy_(ours.lm_head.weight.T)
        for rb, ob in zip(ref.blocks, ours.blocks):
            rb.qkv.weight.copy_(ob.attention.qkv.weight.T)
            rb.proj.weight.copy_(ob.attention.out_proj.weight.T)
            rb.w1.weight.copy_(ob.feed_forward.gate.weight.T)
            rb.w3.weight.copy_(ob.feed_forward.up.weight.T)
            rb.w2.weight.copy_(ob.feed_forward.down.weight.T)


def peak_flops(size=2048, repeats=5, dtype=torch.float32):
    """The matmul rate of a size^3 product in ``dtype``; 512^3 where bf16 is emulated: a 2048^3
    bf16 product took ~86 s on an AVX2 host (0.2 GFLOP/s), a 512^3 one ran at 1.4 GFLOP/s."""
    if dtype == torch.bfloat16 and not bf16_native(torch.device("cpu")):
        size = 512
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"],
                        choices=["fp32", "bf16", "auto"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    precisions = {}
    for requested in args.precisions:
        resolved, why = resolve_precision(requested, cpu)
        precisions[requested if requested == resolved else f"{requested}={resolved}"] = resolved
        if requested == "auto":
            print(f"precision auto -> {resolved}: {why}")
    base = {}
    for impl in ("manual", "sdpa"):
        torch.manual_seed(0)
        base[f"ours (attn_impl={impl})"] = DecoderOnlyTransformer(**SIZE, max_seq_len=256,
                                                                  dropout=0.0, attn_impl=impl)
    ref = Reference(**SIZE)
    copy_weights(base["ours (attn_impl=manual)"], ref)
    base[REF] = ref
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in base.items()}
    assert len(set(params.values())) == 1, params
    n_params = next(iter(params.values()))
    # every (model, precision) trains its own copy from the same weights
    models = {(name, label): copy.deepcopy(m) for name, m in base.items() for label in precisions}
    optims = {key: torch.optim.AdamW(m.parameters(), lr=1e-3) for key, m in models.items()}
    data = torch.randint(0, 256, (args.batch_size, args.seq_len),
                         generator=torch.Generator().manual_seed(0))
    tokens = args.batch_size * (args.seq_len - 1)

    def step(key):
        with autocast(precisions[key[1]], cpu):
            _, loss = models[key](data[:, :-1], data[:, 1:])
        optims[key].zero_grad(set_to_none=True)
        loss.backward()
        optims[key].step()

    for key in models:  # warm-up
        for _ in range(2):
            step(key)
    peaks = {p: peak_flops(dtype=DTYPES[p]) for p in set(precisions.values())}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {n_params:,} parameters, batch "
          f"{args.batch_size} x {args.seq_len - 1} tokens; matmul peak "
          + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in sorted(peaks.items())), flush=True)
    rates = {key: [] for key in models}
    keys = list(models)
    for r in range(args.rounds):
        # rotate who goes first, so that no model always runs right after the same neighbour
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(key)
            rates[key].append(tokens * args.steps / (time.perf_counter() - start))

    ref_key = (REF, "fp32") if (REF, "fp32") in rates else (REF, keys[0][1])
    ref_work = statistics.median(rates[ref_key]) * n_params
    print(f"\n{'model':<30}{'precision':>11}{'tokens/s':>10}{'spread':>9}"
          f"{'work/s (tok*param)':>21}{'vs ref':>8}{'paired':>8}{'MFU':>7}")
    for key, r in rates.items():
        med = statistics.median(r)
        work = med * n_params
        # the ratio within each round (same minutes of machine time), then its median
        paired = statistics.median(a / b for a, b in zip(r, rates[ref_key]))
        peak = peaks[precisions[key[1]]]
        print(f"{key[0]:<30}{key[1]:>11}{med:>10,.1f}{max(r) - min(r):>9,.0f}{work:>21.3e}"
              f"{work / ref_work:>7.2f}x{paired:>7.2f}x{6 * work / peak:>7.1%}")
    print(f"\n(median of {args.rounds} rounds of {args.steps} steps each, the order rotated every "
          f"round; 'vs ref' and 'paired' (the median of the per-round ratios) are against "
          f"{ref_key[0]} in {ref_key[1]}; MFU = 6 x params x tokens/s / matmul peak in the row's "
          "precision)")
    if not math.isfinite(ref_work):
        raise SystemExit("reference did not run")


if __name__ == "__main__":
    main()
