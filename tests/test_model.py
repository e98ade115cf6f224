"""The model: components against their formulas, causality, the KV cache, the factory."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from vla_ablate.factory import build_model
from vla_ablate.model import (
    POSITIONAL_ENCODINGS,
    CausalSelfAttention,
    DecoderOnlyTransformer,
    FeedForward,
    RMSNorm,
    RotaryPositionalEmbedding,
    TransformerBlock,
)
from vla_ablate.model.positions import sinusoidal_table

POS = sorted(POSITIONAL_ENCODINGS)
SMALL = dict(vocab_size=256, dim=32, num_layers=2, num_heads=4, ff_hidden_dim=64,
             max_seq_len=64, dropout=0.0)


def small_model(pos="rope", causal=True, attn_impl="manual", seed=0):
    torch.manual_seed(seed)
    model = DecoderOnlyTransformer(**SMALL, pos=pos, causal=causal, attn_impl=attn_impl).eval()
    with torch.no_grad():  # sharpen attention so that what a position sees matters visibly
        for block in model.blocks:
            block.attention.qkv.weight.mul_(10)
            block.attention.out_proj.weight.mul_(10)
    return model


def test_registry_has_the_required_encodings():
    assert {"rope", "sinusoidal", "none", "learned"} <= set(POS)


def test_rmsnorm_formula_and_extremes():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.scale.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.scale
    assert torch.allclose(norm(x), expected, atol=1e-6)
    for factor in (1e-6, 1e6):
        out = norm(x * factor)
        assert torch.isfinite(out).all()
    assert torch.allclose(norm(x * 1e6), expected, atol=1e-4)
    half = norm(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_feedforward_is_swiglu_with_three_matrices():
    ff = FeedForward(16, 40, dropout=0.0)
    assert sum(p.dim() == 2 for p in ff.parameters()) == 3
    x = torch.randn(2, 3, 16)
    expected = ff.down(torch.nn.functional.silu(ff.gate(x)) * ff.up(x))
    assert torch.allclose(ff(x), expected)


def test_block_names_and_prenorm():
    torch.manual_seed(0)
    block = TransformerBlock(32, 4, 64, 0.0).eval()
    for name in ("attention", "feed_forward", "norm1", "norm2"):
        assert hasattr(block, name)
    assert isinstance(block.attention, CausalSelfAttention)
    with torch.no_grad():
        block.norm1.scale.uniform_(0.5, 2.0)
        block.norm2.scale.uniform_(0.5, 2.0)
        x = 3.0 * torch.randn(2, 5, 32)
        # pre-norm: each sublayer reads a normalised copy and adds to the raw residual stream
        h = x + block.attention(block.norm1(x), is_causal=True)
        expected = h + block.feed_forward(block.norm2(h))
        assert torch.allclose(block(x, is_causal=True), expected, atol=1e-5)
        post = block.norm1(x + block.attention(x, is_causal=True))
        post = block.norm2(post + block.feed_forward(post))
        assert not torch.allclose(block(x, is_causal=True), post, atol=1e-2)


def test_attention_manual_equals_formula():
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, 0.0).eval()
    x = torch.randn(2, 6, 16)
    y = attn(x, is_causal=True, need_weights=True)
    q, k, v = attn.qkv(x).split(16, dim=2)
    q, k, v = (t.view(2, 6, 2, 8).transpose(1, 2) for t in (q, k, v))
    q, k = RotaryPositionalEmbedding(8)(q, k)  # used alone, the module applies its own RoPE
    mask = torch.full((6, 6), float("-inf")).triu(1)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + mask, dim=-1)
    assert torch.allclose(attn.last_attn, w, atol=1e-6)
    assert torch.allclose(w.triu(1), torch.zeros(1))  # no weight on the future
    expected = attn.out_proj((w @ v).transpose(1, 2).reshape(2, 6, 16))
    assert torch.allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_equals_manual(pos, causal):
    manual = small_model(pos, causal, "manual")
    sdpa = small_model(pos, causal, "sdpa")
    sdpa.load_state_dict(manual.state_dict())
    x = torch.randint(0, 256, (3, 20))
    assert torch.allclose(manual(x)[0], sdpa(x)[0], atol=1e-5)


def test_forward_returns_logits_and_loss():
    model = small_model()
    x = torch.randint(0, 256, (2, 10))
    logits, loss = model(x)
    assert logits.shape == (2, 10, 256) and loss is None
    logits, loss = model(x[:, :-1], x[:, 1:])
    assert loss.shape == () and abs(loss.item() - math.log(256)) < 0.5


def test_parameter_count_matches_architecture():
    model = DecoderOnlyTransformer()  # the assignment's size: 256, 4 layers, 8 heads, FF 1024
    d, f, v, n = 256, 1024, 256, 4
    per_block = 4 * d * d + 3 * d * f + 2 * d
    assert model.num_parameters() == v * d + n * per_block + d + d * v
    learned = DecoderOnlyTransformer(pos="learned")
    assert learned.num_parameters() == model.num_parameters() + 200 * d
    for name in ("token_embedding", "blocks", "norm_final", "lm_head"):
        assert hasattr(model, name)


@pytest.mark.parametrize("pos", POS)
def test_causality_future_tokens_do_not_change_the_past(pos):
    model = small_model(pos)
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 256, (2, 6))
    a, b = model(x)[0], model(y)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize("pos", POS)
def test_without_mask_future_tokens_change_the_past(pos):
    model = small_model(pos, causal=False)
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 256
    assert (model(x)[0][:, :10] - model(y)[0][:, :10]).abs().max() > 1e-3


def cached_step_logits(model, x, prompt_len):
    model.setup_cache(x.shape[0], x.shape[1])
    pos = torch.arange(x.shape[1])
    out = [model(x[:, :prompt_len], input_pos=pos[:prompt_len])[0]]
    for t in range(prompt_len, x.shape[1]):
        out.append(model(x[:, t : t + 1], input_pos=pos[t : t + 1])[0])
    model.clear_cache()
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("attn_impl", ["manual", "sdpa"])
@pytest.mark.parametrize("prompt_len", [1, 5, 17])
def test_kv_cache_logits_equal_full_pass(pos, attn_impl, prompt_len):
    model = small_model(pos, attn_impl=attn_impl)
    x = torch.randint(0, 256, (3, 24))
    full = model(x)[0]
    cached = cached_step_logits(model, x, prompt_len)
    assert (cached - full).abs().max() < 1e-5


@pytest.mark.parametrize("pos", POS)
def test_greedy_decodes_agree_token_for_token(pos):
    model = small_model(pos)
    prompt = torch.randint(0, 256, (4, 6))
    a = model.generate(prompt, 30, top_k=1, use_cache=True)
    b = model.generate(prompt, 30, top_k=1, use_cache=False)
    assert a.shape == (4, 36) and torch.equal(a[:, :6], prompt)
    assert torch.equal(a, b)


def test_without_mask_cache_differs_by_construction_and_is_reported():
    from vla_ablate.evaluate import kv_cache_consistency

    model = small_model("rope", causal=False)
    x = torch.randint(0, 256, (2, 16))
    assert (cached_step_logits(model, x, 4) - model(x)[0]).abs().max() > 1e-4
    report = kv_cache_consistency(model, x[:, :4], 10, torch.device("cpu"))
    assert report["matches"] is False and "by construction" in report["note"]
    causal = kv_cache_consistency(small_model("rope"), x[:, :4], 10, torch.device("cpu"))
    assert causal["matches"] is True and "note" not in causal


def test_generate_limits_and_sampling():
    model = small_model()
    prompt = torch.randint(0, 256, (2, 4))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(prompt, 61)
    torch.manual_seed(0)
    sampled = model.generate(prompt, 10, temperature=0.8, top_k=5)
    assert sampled.shape == (2, 14) and sampled.max() < 256
    assert model.generate(prompt, 60, top_k=1).shape == (2, 64)  # up to max_seq_len
    model.train()
    model.generate(prompt, 2)
    assert model.training  # generate restores the mode it found


def test_rope_relative_property_and_norms():
    rope = RotaryPositionalEmbedding(16, max_seq_len=128)
    q = torch.randn(1, 1, 1, 16)
    k = torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm, _ = rope(q, q, torch.tensor([m]))
        kn, _ = rope(k, k, torch.tensor([n]))
        return (qm * kn).sum().item()

    for m, n, shift in [(5, 2, 10), (30, 30, 7), (3, 40, 50)]:
        assert abs(score(m, n) - score(m + shift, n + shift)) < 1e-4
    assert abs(score(5, 2) - score(6, 2)) > 1e-4  # but it does depend on the offset
    x = torch.randn(2, 3, 40, 16)
    rx, _ = rope(x, x)
    assert torch.allclose(rx.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rx[:, :, 0], x[:, :, 0])  # position 0 is the identity


def test_sinusoidal_matches_formula():
    table = sinusoidal_table(50, 16)
    for p in (0, 7, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert abs(table[p, 2 * i] - math.sin(angle)) < 1e-6
            assert abs(table[p, 2 * i + 1] - math.cos(angle)) < 1e-6
    model = small_model("sinusoidal")
    x = torch.randint(0, 256, (1, 5))
    emb = model.pos_encoding.add_to_embedding(model.token_embedding(x), torch.arange(5))
    amplitude = model.pos_encoding.amplitude
    assert torch.allclose(emb - model.token_embedding(x), amplitude * sinusoidal_table(64, 32)[:5],
                          atol=1e-6)
    # the matched amplitude from its closed form: 0.02 * sqrt(2) / sqrt(sum 4 sin^2(w/2) / d)
    w = [10000 ** (-2 * i / 32) for i in range(16)]
    step = math.sqrt(sum(4 * math.sin(v / 2) ** 2 for v in w) / 32)
    assert amplitude == pytest.approx(0.02 * math.sqrt(2) / step, rel=1e-9)


def test_attention_maps_shapes_and_rows_sum_to_one():
    model = small_model(attn_impl="sdpa")
    maps = model.attention_maps(torch.randint(0, 256, (1, 12)))
    assert len(maps) == 2 and maps[0].shape == (1, 4, 12, 12)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, 4, 12), atol=1e-5)


def cfg_for(**over):
    base = {
        "model": {"dim": 32, "num_layers": 2, "num_heads": 4, "ff_hidden_dim": 64,
                  "max_seq_len": 64, "dropout": 0.0, "attn_impl": "manual"},
        "pos": {"name": "rope", "base": 10000.0}, "mask": {"name": "causal"},
        "cache": {"enabled": True},
    }
    cfg = OmegaConf.create(base)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_factory_builds_from_config_and_rejects_bad_combinations():
    model = build_model(cfg_for(**{"pos.name": "alibi", "mask.name": "none",
                                   "cache.enabled": False}))
    assert model.pos_encoding.name == "alibi" and not model.causal and not model.use_cache
    with pytest.raises(ValueError, match="divisible"):
        build_model(cfg_for(**{"model.num_heads": 5}))
    with pytest.raises(ValueError, match="unknown pos"):
        build_model(cfg_for(**{"pos.name": "spiral"}))


def test_checkpoint_rebuilds_model_from_file_alone(tmp_path):
    from vla_ablate.training.checkpoint import (
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
        load_model_from_checkpoint,
    )

    model = small_model("learned")
    path = tmp_path / "m.pt"
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
             "model_args": model.model_args, "model": model.state_dict()}
    torch.save(state, path)
    rebuilt = load_model_from_checkpoint(path).eval()
    x = torch.randint(0, 256, (2, 9))
    assert torch.equal(rebuilt(x)[0], model(x)[0])
    torch.save({**state, "version": 1}, path)  # the (out, in) layout of earlier versions
    with pytest.raises(ValueError, match="checkpoint version 1 is not 2"):
        load_model_from_checkpoint(path)


def test_a_full_training_pass_traces_as_one_graph():
    """``train.compile`` compiles the training step whole: no graph break (as a tensor read to a
    Python int would make) splits it."""
    import torch._dynamo

    model = DecoderOnlyTransformer(**SMALL)
    x = torch.randint(0, 256, (2, 12))
    explained = torch._dynamo.explain(model)(x[:, :-1], x[:, 1:])
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
