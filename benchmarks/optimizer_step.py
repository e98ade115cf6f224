"""Muon's step: the project's former batched Muon against ``torch.optim.Muon`` (used now).

    python benchmarks/optimizer_step.py [--rounds 15]

Both optimisers get the blocks' 20 weight matrices of the assignment's model with the same
gradients (one real backward pass) and the same hyper-parameters (lr 3e-3, momentum 0.95,
Nesterov, weight decay 0.1, the update scaled to AdamW's RMS: ``adjust_lr_fn="match_rms_adamw"``
for torch's). Each round times one ``step()`` of each, the order alternating between rounds;
the table shows the median time, the spread and the ratio, and how far apart the two updates
land (torch's Newton-Schulz runs in bf16, ours in float32). The batched version is kept here,
as the baseline this measurement needs; vla_ablate/optim.py uses torch's, the faster.
"""

import argparse
import copy
import statistics
import time

import torch

from vla_ablate.model import DecoderOnlyTransformer

# The quintic's coefficients from Jordan et al.: they push every singular value of the
# normalised matrix into roughly [0.7, 1.2] in five steps (exact orthogonality is not needed).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``grad``.

    ``grad`` is (rows, cols) or a stack (k, rows, cols) of same-shaped matrices, done at once.
    """
    a, b, c = _NS_COEFFS
    x = grad.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)  # all singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(grad.dtype)


class BatchedMuon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation for 2-D parameters, decoupled weight decay."""

    def __init__(self, params, lr=3e-3, momentum=0.95, weight_decay=0.0, ns_steps=5):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes matrices only, got a {p.dim()}-D parameter")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                by_shape.setdefault(tuple(p.shape), []).append((p, p.grad.add(buf, alpha=mu)))
            for shape, items in by_shape.items():  # one batched orthogonalisation per shape
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                scale = lr * 0.2 * max(shape) ** 0.5
                for (p, _), update in zip(items, updates):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-scale)
        return loss



def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(dropout=0.0)
    x = torch.randint(0, 256, (64, 50), generator=torch.Generator().manual_seed(0))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    twins = {"ours (batched, fp32 Newton-Schulz)": model, "torch.optim.Muon": copy.deepcopy(model)}
    params = {name: [p for n, p in m.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
              for name, m in twins.items()}
    for p, q in zip(*params.values()):  # the same gradients on both copies
        q.grad = p.grad.clone()
    opts = {
        "ours (batched, fp32 Newton-Schulz)": BatchedMuon(
            params["ours (batched, fp32 Newton-Schulz)"], lr=3e-3, momentum=0.95,
            weight_decay=0.1),
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(params[names[0]])} matrices, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"\n{'optimizer':<38}{'median ms':>10}{'spread ms':>11}")
    for name in names:
        t = times[name]
        print(f"{name:<38}{1e3 * statistics.median(t):>10.1f}{1e3 * (max(t) - min(t)):>11.1f}")
    ratio = statistics.median(times[names[1]]) / statistics.median(times[names[0]])
    paired = statistics.median(b / a for a, b in zip(times[names[0]], times[names[1]]))
    print(f"\ntorch.optim.Muon time / ours = {ratio:.2f}x (paired by round: {paired:.2f}x); "
          f"largest relative difference of the first update: {rel:.3f}")


if __name__ == "__main__":
    main()
