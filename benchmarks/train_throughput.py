"""Training throughput of our model against a straightforward reference of the same model.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 5] [--batch-size 32]

The reference is the plain way to write the same architecture in PyTorch: nn.RMSNorm,
F.scaled_dot_product_attention, rotate-half RoPE, a SwiGLU MLP; same sizes, same initial
weights, same AdamW. Each round times ``--steps`` training steps (forward, backward, AdamW) of
every model in turn, after a warm-up; the table shows the median tokens/s over rounds, the
spread, training work per second (tokens/s x parameters) and its ratio to the reference (of the
medians, and the median of the ratios within each round, whose order rotates), and
model FLOPs utilisation: 6 x parameters x tokens/s against the machine's matmul peak measured
in the same run (a 2048^3 float32 matmul).
Goal: our work/s >= the reference's.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from vla_ablate.model import DecoderOnlyTransformer

SIZE = dict(vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024)


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


def peak_flops(size=2048, repeats=5):
    a, b = torch.randn(size, size), torch.randn(size, size)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    for impl in ("manual", "sdpa"):
        torch.manual_seed(0)
        models[f"ours (attn_impl={impl})"] = DecoderOnlyTransformer(**SIZE, max_seq_len=256,
                                                                    dropout=0.0, attn_impl=impl)
    ref = Reference(**SIZE)
    copy_weights(models["ours (attn_impl=manual)"], ref)
    models["reference (SDPA, nn.RMSNorm)"] = ref
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(params.values())) == 1, params
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    data = torch.randint(0, 256, (args.batch_size, args.seq_len),
                         generator=torch.Generator().manual_seed(0))
    tokens = args.batch_size * (args.seq_len - 1)

    def step(name):
        _, loss = models[name](data[:, :-1], data[:, 1:])
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()

    for name in models:  # warm-up
        for _ in range(2):
            step(name)
    peak = peak_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{next(iter(params.values())):,} parameters, batch {args.batch_size} x "
          f"{args.seq_len - 1} tokens; matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    rates = {name: [] for name in models}
    names = list(models)
    for r in range(args.rounds):
        # rotate who goes first, so that no model always runs right after the same neighbour
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            rates[name].append(tokens * args.steps / (time.perf_counter() - start))

    ref_name = "reference (SDPA, nn.RMSNorm)"
    ref_work = statistics.median(rates[ref_name]) * params[ref_name]
    print(f"\n{'model':<30}{'tokens/s':>10}{'spread':>9}{'work/s (tok*param)':>21}"
          f"{'vs ref':>8}{'paired':>8}{'MFU':>7}")
    for name, r in rates.items():
        med = statistics.median(r)
        work = med * params[name]
        # the ratio within each round (same minutes of machine time), then its median
        paired = statistics.median(a * params[name] / (b * params[ref_name])
                                   for a, b in zip(r, rates[ref_name]))
        print(f"{name:<30}{med:>10,.0f}{max(r) - min(r):>9,.0f}{work:>21.3e}"
              f"{work / ref_work:>7.2f}x{paired:>7.2f}x{6 * work / peak:>7.1%}")
    print(f"\n(median of {args.rounds} rounds of {args.steps} steps each, the order rotated every "
          "round; 'paired' is the median of the per-round ratios; "
          "MFU = 6 x params x tokens/s / matmul peak)")
    if not math.isfinite(ref_work):
        raise SystemExit("reference did not run")


if __name__ == "__main__":
    main()
