"""The model's parts used alone, with the course template's signatures and meaning.

A student drops ``CausalSelfAttention``, ``TransformerBlock`` or the whole model into the
template's code, which calls ``attention(x)``, ``attention(x, mask)`` with a (T, T) 0/1
lower-triangular mask, ``block(x, mask)`` and ``model(input_ids, targets)`` with -1 padding.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from vla_ablate.model import (
    CausalSelfAttention,
    DecoderOnlyTransformer,
    FeedForward,
    RMSNorm,
    RotaryPositionalEmbedding,
    TransformerBlock,
)

T = 10


def sharpened(module):
    """Scale the attention's matrices so that what a position sees changes its output visibly."""
    attn = module.attention if hasattr(module, "attention") else module
    with torch.no_grad():
        attn.qkv.weight.mul_(10)
    return module.eval()


def future_changed(x, start=6):
    y = x.clone()
    y[:, start:] = torch.randn_like(y[:, start:])
    return y


def template_mask(t=T):
    return torch.tril(torch.ones(t, t))  # the template's mask: 1 = may attend, 0 = may not


def test_attention_signature_and_dropout_default():
    attn = CausalSelfAttention(32, 4)
    assert attn.dropout == 0.1  # the template's default
    assert CausalSelfAttention(32, 4, 0.0).dropout == 0.0  # dropout is the third positional


@pytest.mark.parametrize("call", ["alone", "tril_mask", "bool_mask", "int_mask"])
def test_attention_alone_is_causal(call):
    torch.manual_seed(0)
    attn = sharpened(CausalSelfAttention(32, 4, 0.0))
    masks = {"alone": None, "tril_mask": template_mask(), "bool_mask": template_mask().bool(),
             "int_mask": template_mask().long()}
    x = torch.randn(2, T, 32)
    y = future_changed(x)

    def run(inp):
        return attn(inp) if masks[call] is None else attn(inp, masks[call])  # positional mask

    a, b = run(x), run(y)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # t never sees t+1..T
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_positional_mask_is_a_mask_not_rotary_tables():
    torch.manual_seed(0)
    attn = sharpened(CausalSelfAttention(32, 4, 0.0))
    x = torch.randn(2, T, 32)
    causal = attn(x)
    assert torch.allclose(attn(x, template_mask()), causal, atol=1e-6)
    assert torch.allclose(attn(x, mask=template_mask()), causal, atol=1e-6)
    # a mask that allows everything is honoured: the past now sees the future
    everything = attn(x, torch.ones(T, T))
    assert not torch.allclose(everything[:, :6], causal[:, :6], atol=1e-3)
    # the additive form (0 / -inf) means the same as the 0/1 form
    additive = torch.zeros(T, T).masked_fill(template_mask() == 0, float("-inf"))
    assert torch.allclose(attn(x, additive), causal, atol=1e-6)


def test_attention_alone_applies_its_own_rope():
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, 0.0).eval()
    x = torch.randn(2, T, 32)
    attn(x, need_weights=True)
    q, k, _ = attn.qkv(x).split(32, dim=2)
    q, k = (t.view(2, T, 4, 8).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
    q, k = RotaryPositionalEmbedding(8)(q, k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    expected = torch.softmax(scores.masked_fill(template_mask() == 0, float("-inf")), dim=-1)
    assert torch.allclose(attn.last_attn, expected, atol=1e-6)
    # without RoPE the same weights give other scores: the rotation is really applied
    plain = CausalSelfAttention(32, 4, 0.0, own_rope=False).eval()
    plain.load_state_dict(attn.state_dict())
    plain(x, need_weights=True)
    assert not torch.allclose(plain.last_attn, attn.last_attn, atol=1e-4)


def test_own_rope_leaves_checkpoint_keys_unchanged():
    alone = CausalSelfAttention(32, 4, 0.0)
    inside = CausalSelfAttention(32, 4, 0.0, own_rope=False)
    assert set(alone.state_dict()) == set(inside.state_dict()) == {"qkv.weight", "out_proj.weight"}
    model = DecoderOnlyTransformer(256, 32, 2, 4, 64, 64, 0.0)
    assert all(block.attention.rope is None for block in model.blocks)


def test_block_alone_is_causal_and_takes_the_mask_positionally():
    torch.manual_seed(0)
    block = sharpened(TransformerBlock(32, 4, 64, 0.0))
    for name in ("attention", "feed_forward", "norm1", "norm2"):
        assert hasattr(block, name)
    x = torch.randn(2, T, 32)
    a, b = block(x), block(future_changed(x))
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert torch.allclose(block(x, template_mask()), a, atol=1e-6)
    assert torch.allclose(block(x, mask=template_mask()), a, atol=1e-6)


def test_rmsnorm_feedforward_and_rope_signatures():
    norm = RMSNorm(16, 1e-5)
    assert norm.eps == 1e-5 and norm.scale.shape == (16,)
    ff = FeedForward(16, 48, 0.1)
    assert ff(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    rope = RotaryPositionalEmbedding(8, 64, 10000.0)
    q, k = torch.randn(2, 4, 12, 8), torch.randn(2, 4, 12, 8)
    rq, rk = rope(q, k)
    assert rq.shape == q.shape and torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rq[:, :, 0], q[:, :, 0]) and not torch.allclose(rq[:, :, 1], q[:, :, 1])


def test_model_positional_signature_forward_and_padding_targets():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(256, 32, 2, 4, 64, 64, 0.0).eval()
    x = torch.randint(0, 256, (3, 12))
    inputs, targets = x[:, :-1], x[:, 1:].clone()
    logits, loss = model(inputs, targets)
    assert logits.shape == (3, 11, 256)
    targets[1, 5:] = -1  # padding, as the template pads with -1
    targets[2, :] = -1
    _, padded = model(inputs, targets)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.isfinite(padded) and torch.allclose(padded, expected, atol=1e-6)
    assert not torch.allclose(padded, loss)


def test_generate_with_the_template_arguments():
    torch.manual_seed(0)
    model = DecoderOnlyTransformer(256, 32, 2, 4, 64, 64, 0.0)
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 7, 0.8, 5)  # (input_ids, max_new_tokens, temperature, top_k)
    assert out.shape == (2, 12) and torch.equal(out[:, :5], prompt)
    assert torch.equal(model.generate(prompt, 7, 1.0, 1), model.generate(prompt, 7, top_k=1))
