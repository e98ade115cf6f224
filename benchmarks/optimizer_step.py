"""Muon's step: ``Float32Muon`` (Newton-Schulz in float32, batched by shape) against
``torch.optim.Muon`` (per matrix, in bf16).

    python benchmarks/optimizer_step.py [--rounds 15] [--dim 256 --layers 4]

Both optimisers get the blocks' weight matrices (20 in the assignment's model, the default size)
with the same gradients (one real backward pass) and the same settings (lr 3e-3, momentum 0.95,
Nesterov, weight decay 0.1, ``adjust_lr_fn="match_rms_adamw"``). Each round times one ``step()`` of each,
the order alternating between rounds; the table shows the median time, the spread and the
ratio, and how far apart the two first updates land (bf16 against float32 iterations).
vla_ablate/optim.py uses torch's where the device computes bf16 in hardware and Float32Muon
elsewhere: this benchmark is the measurement behind that choice, on the host it runs on.
"""

import argparse
import copy
import statistics
import time

import torch

from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.optim import Float32Muon
from vla_ablate.precision import bf16_native

OURS = "Float32Muon (batched, fp32 Newton-Schulz)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dim", type=int, default=256,
                        help="model width (default: the assignment's 256; less for a quick check)")
    parser.add_argument("--layers", type=int, default=4, help="blocks (default: the assignment's 4)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(dim=args.dim, num_layers=args.layers, ff_hidden_dim=4 * args.dim,
                                   dropout=0.0)
    x = torch.randint(0, 256, (64, 50), generator=torch.Generator().manual_seed(0))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    twins = {OURS: model, "torch.optim.Muon": copy.deepcopy(model)}
    params = {name: [p for n, p in m.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
              for name, m in twins.items()}
    for p, q in zip(*params.values()):  # the same gradients on both copies
        q.grad = p.grad.clone()
    opts = {
        OURS: Float32Muon(params[OURS], lr=3e-3, momentum=0.95, weight_decay=0.1,
                          adjust_lr_fn="match_rms_adamw"),
        "torch.optim.Muon": torch.optim.Muon(params["torch.optim.Muon"], lr=3e-3, momentum=0.95,
                                             weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
    }
    start = {name: [p.detach().clone() for p in ps] for name, ps in params.items()}
    for opt in opts.values():  # warm-up (and the first update, compared below)
        opt.step()
    first = {name: [p.detach() - s for p, s in zip(ps, start[name])] for name, ps in params.items()}
    a, b = first.values()
    rel = max(((u - v).norm() / u.norm()).item() for u, v in zip(a, b))
    names = list(opts)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - t)
    native = bf16_native(torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(params[names[0]])} matrices, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native} (the package uses "
          f"{'torch.optim.Muon' if native else 'Float32Muon'} here)")
    print(f"\n{'optimizer':<44}{'median ms':>10}{'spread ms':>11}")
    for name in names:
        t = times[name]
        print(f"{name:<44}{1e3 * statistics.median(t):>10.1f}{1e3 * (max(t) - min(t)):>11.1f}")
    ratio = statistics.median(times[names[1]]) / statistics.median(times[names[0]])
    paired = statistics.median(b / a for a, b in zip(times[names[0]], times[names[1]]))
    print(f"\ntorch.optim.Muon time / Float32Muon = {ratio:.2f}x (paired by round: "
          f"{paired:.2f}x); largest relative difference of the first update: {rel:.3f}")


if __name__ == "__main__":
    main()
