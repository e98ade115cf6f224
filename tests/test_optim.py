"""The optimisers (AdamW, Muon) and the (in, out) linear layer."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vla_ablate.config import ConfigError, TrainConfig
from vla_ablate.model import DecoderOnlyTransformer
from vla_ablate.model.linear import Linear
from vla_ablate.optim import CombinedOptimizer, make_optimizer
from vla_ablate.runfolder import bind_folder
from vla_ablate.training.loop import train
from vla_ablate.training.schedule import BatchSource, lr_at

ARGS = dict(vocab_size=256, dim=32, num_layers=2, num_heads=4, ff_hidden_dim=64, max_seq_len=32,
            dropout=0.0)


def test_muon_is_torchs_kind_with_adamw_sized_updates():
    model = DecoderOnlyTransformer(**ARGS)
    muon, _ = make_optimizer(model, tcfg(optimizer="muon", lr=0.01, weight_decay=0.0)).optimizers
    assert isinstance(muon, torch.optim.Muon)
    group = muon.param_groups[0]
    assert group["adjust_lr_fn"] == "match_rms_adamw" and group["nesterov"]
    # one step on a zero matrix: the update's RMS is 0.2 * lr, as an AdamW update's
    p = muon.param_groups[0]["params"][0]
    with torch.no_grad():
        p.zero_()
    p.grad = torch.randn_like(p)
    muon.step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert 0.1 * 0.01 < rms < 0.3 * 0.01


def tcfg(**over):
    """The schema's train config at one rate for every group and weight decay on (the recipe
    these tests were written for: train=cosine_2400's), with ``over`` on top."""
    cfg = OmegaConf.structured(TrainConfig())
    over = {"embed_lr": None, "head_lr": None, "weight_decay": 0.1, **over}
    for key, value in over.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_embedding_and_head_get_their_own_rates(optimizer):
    model = DecoderOnlyTransformer(**ARGS, pos="learned")
    names = {id(p): n for n, p in model.named_parameters()}
    opt = make_optimizer(model, tcfg(optimizer=optimizer, lr=0.01, embed_lr=0.05, head_lr=0.002))
    rate = {}
    for group, scale in zip(opt.param_groups, opt.lr_scales, strict=True):
        for p in group["params"]:
            rate[names[id(p)]] = scale * 0.01
    assert rate["token_embedding.weight"] == pytest.approx(0.05)
    assert rate["pos_encoding.embedding.weight"] == pytest.approx(0.05)
    assert rate["lm_head.weight"] == pytest.approx(0.002)
    assert rate["norm_final.scale"] == pytest.approx(0.002)
    assert rate["blocks.0.attention.qkv.weight"] == pytest.approx(0.01)
    assert set(rate) == set(names.values())
    # without either rate: the groups models were trained with before, all at lr
    for same in ({}, {"embed_lr": 3e-3, "head_lr": 3e-3}):  # null, or equal to lr
        plain = make_optimizer(model, tcfg(optimizer=optimizer, lr=3e-3, **same))
        assert plain.lr_scales == [1.0] * len(plain.param_groups)
        assert len(plain.param_groups) == (3 if optimizer == "muon" else 2)


def test_training_sets_each_groups_scaled_rate(tmp_path):
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**ARGS)
    cfg = tcfg(steps=3, warmup_steps=0, lr=0.01, head_lr=0.001, batch_size=4, log_every=1,
               eval_every=3, subset_eval_every=0, checkpoint_every=3, checkpoint_minutes=0,
               progress=False, compile="off", precision="fp32", schedule="wsd", decay_frac=0.5)
    data = torch.randint(0, 256, (12, 16))
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return original(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        train(model, ARGS, BatchSource(data[:8], 4, 0), data[8:], cfg, tmp_path,
              torch.device("cpu"), 0, log=lambda m: None, precision="fp32")
    finally:
        torch.optim.AdamW.step = original
    # the head's group at a tenth of the schedule's rate at every step
    assert [lrs[1] for lrs in seen] == pytest.approx([0.1 * lr_at(s, cfg) for s in range(3)])
    assert [lrs[0] for lrs in seen] == pytest.approx([lr_at(s, cfg) for s in range(3)])


def test_make_optimizer_splits_matrices_between_muon_and_adamw():
    model = DecoderOnlyTransformer(**ARGS, pos="learned")
    opt = make_optimizer(model, tcfg(optimizer="muon"))
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert all(n.startswith("blocks.") for n in in_muon) and len(in_muon) == 2 * 5
    assert {"token_embedding.weight", "lm_head.weight", "pos_encoding.embedding.weight",
            "norm_final.scale"} <= in_adamw
    decayed = {names[id(p)] for g in adamw.param_groups if g["weight_decay"] for p in g["params"]}
    assert not any("norm" in n for n in decayed)
    assert len(opt.param_groups) == 3  # the schedule sets the lr of every group
    plain = make_optimizer(model, tcfg(optimizer="adamw"))
    assert isinstance(plain, torch.optim.AdamW)
    with pytest.raises(ValueError, match="train.optimizer"):
        make_optimizer(model, tcfg(optimizer="sgd"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_both_optimizers_fit_a_fixed_batch(optimizer):
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**ARGS)
    opt = make_optimizer(model, tcfg(optimizer=optimizer, lr=3e-3))
    x = torch.randint(0, 256, (8, 17))
    first = None
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first - 1.0


def test_combined_state_dict_round_trip_and_mismatch():
    model = DecoderOnlyTransformer(**ARGS)
    opt = make_optimizer(model, tcfg(optimizer="muon"))
    x = torch.randint(0, 256, (4, 9))
    model(x[:, :-1], x[:, 1:])[1].backward()
    opt.step()
    other = make_optimizer(model, tcfg(optimizer="muon"))
    other.load_state_dict(opt.state_dict())
    buf = lambda o: [s["momentum_buffer"] for s in o.optimizers[0].state.values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(buf(opt), buf(other)))
    with pytest.raises(ValueError, match="different optimizer"):
        other.load_state_dict(make_optimizer(model, tcfg(optimizer="adamw")).state_dict())


def test_linear_stores_in_by_out_and_matches_the_formula():
    torch.manual_seed(0)
    layer = Linear(16, 24)
    assert layer.weight.shape == (16, 24) and layer.weight.is_contiguous()
    x = torch.randn(2, 5, 16)
    assert torch.allclose(layer(x), F.linear(x, layer.weight.T), atol=1e-6)
    assert torch.allclose(layer(x[:, :1]), layer(x)[:, :1], atol=1e-6)  # one token, same numbers


def _float32_newton_schulz(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's own iteration (torch/optim/_muon.py), in float32 instead of bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def test_float32_muon_is_torchs_update_with_float32_newton_schulz(monkeypatch):
    """Float32Muon (devices without native bf16) = torch.optim.Muon's update with the
    iterations in float32: the same momentum, Nesterov, decay and lr adjustment, the same state
    dict; only the batching and the precision of the iterations differ."""
    from vla_ablate.optim import Float32Muon

    torch.manual_seed(0)
    model = DecoderOnlyTransformer(**ARGS)
    twin = DecoderOnlyTransformer(**ARGS)
    twin.load_state_dict(model.state_dict())
    mats = [[p for n, p in m.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
            for m in (model, twin)]
    kw = dict(lr=0.01, momentum=0.95, weight_decay=0.1, nesterov=True,
              adjust_lr_fn="match_rms_adamw")
    ours, ref = Float32Muon(mats[0], **kw), torch.optim.Muon(mats[1], **kw)
    for _ in range(3):  # momentum carries over steps
        for p, q in zip(*mats):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()  # unpatched: its own float32 iterations (torch's bf16 ones miss by ~1e-3)
        with monkeypatch.context() as patch:
            patch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz",
                          _float32_newton_schulz)
            ref.step()
    for p, q in zip(*mats):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    a, b = ours.state_dict(), ref.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key in b["state"]:
        torch.testing.assert_close(a["state"][key]["momentum_buffer"],
                                   b["state"][key]["momentum_buffer"])


@pytest.mark.parametrize("native", [True, False])
def test_muon_runs_its_iterations_in_bf16_only_where_bf16_is_native(monkeypatch, native,
                                                                   tmp_path):
    """Emulated bf16 made torch's Muon step 35x slower than float32 on an AVX2 host
    (benchmarks/optimizer_step.py): there the run uses Float32Muon, and says so in its
    training config (so its models never share a key with bf16-iteration ones)."""
    from conftest import compose_cfg
    from vla_ablate import config as run
    from vla_ablate import optim
    from vla_ablate.optim import Float32Muon

    monkeypatch.setattr(optim, "bf16_native", lambda device: native)
    muon, _ = make_optimizer(DecoderOnlyTransformer(**ARGS), tcfg(optimizer="muon")).optimizers
    assert type(muon) is (torch.optim.Muon if native else Float32Muon)
    cfg = compose_cfg(["train.device=cpu"])
    assert cfg.train.optimizer == "muon"
    recorded = run.training_config(cfg)["train"].get("muon_newton_schulz")
    assert recorded == (None if native else "fp32")
    keys = {run.model_key(cfg)}
    bind_folder(tmp_path, run.training_config(cfg))
    monkeypatch.setattr(optim, "bf16_native", lambda device: not native)
    assert run.model_key(cfg) not in keys
    # its folder, on a host of the other kind: refused, and told that no setting can match it
    with pytest.raises(ConfigError, match="train.muon_newton_schulz follows the device, not a "
                       "setting .*on a host of the kind it was trained on") as info:
        bind_folder(tmp_path, run.training_config(cfg))
    assert "repeat its settings" not in str(info.value)  # no setting differs
    adamw = compose_cfg(["train.device=cpu", "train.optimizer=adamw"])
    assert "muon_newton_schulz" not in run.training_config(adamw)["train"]


def test_the_default_recipe_gives_each_group_its_own_rate():
    """conf/train/default.yaml (issue #35): Muon's lr for the blocks' matrices, AdamW at 12x it
    for the embeddings and ~1.15x for the head and norms, no weight decay anywhere; the schema's
    defaults say the same."""
    from conftest import compose_cfg

    train = compose_cfg([]).train
    for key in ("steps", "lr", "embed_lr", "head_lr", "min_lr", "warmup_steps", "weight_decay",
                "muon_momentum", "schedule"):
        assert train[key] == getattr(TrainConfig(), key), key
    assert train.steps == 1200
    model = DecoderOnlyTransformer(**ARGS)
    opt = make_optimizer(model, train)
    # Muon; AdamW: embedding; head; norms' gains (the last two at head_lr)
    assert opt.lr_scales == pytest.approx([1.0, 0.041 / 0.0034, 0.0039 / 0.0034, 0.0039 / 0.0034])
    assert all(g["weight_decay"] == 0 for g in opt.param_groups)
