"""``build_model``: the one bridge from a composed config to a model."""

from __future__ import annotations

from vla_ablate.data.tokens import TokenLayout, layout_from_config
from vla_ablate.model.attention import ATTN_IMPLS
from vla_ablate.model.positions import POSITIONAL_ENCODINGS
from vla_ablate.model.transformer import DecoderOnlyTransformer


def model_args_from_config(cfg, layout: TokenLayout | None = None) -> dict:
    """The constructor arguments of ``DecoderOnlyTransformer`` for a composed config.

    ``model.max_seq_len`` counts steps: the model holds that many steps of the token layout
    (``tokens``), so ``max_seq_len`` x tokens per step positions.

    Raises ``ValueError`` with one clear sentence for a combination that cannot be built.
    """
    m = cfg.model
    if m.dim % m.num_heads:
        raise ValueError(f"model.dim ({m.dim}) must be divisible by model.num_heads ({m.num_heads})")
    if cfg.pos.name not in POSITIONAL_ENCODINGS:
        raise ValueError(f"unknown pos '{cfg.pos.name}' (known: {', '.join(POSITIONAL_ENCODINGS)})")
    if cfg.pos.name == "rope" and (m.dim // m.num_heads) % 2:
        raise ValueError(f"pos=rope needs an even head dimension, got {m.dim // m.num_heads}")
    if m.attn_impl not in ATTN_IMPLS:
        raise ValueError(f"model.attn_impl must be one of {', '.join(ATTN_IMPLS)}")
    if cfg.mask.name not in ("causal", "none"):
        raise ValueError(f"mask must be causal or none, got '{cfg.mask.name}'")
    amplitude = cfg.pos.get("amplitude")
    if amplitude is not None and cfg.pos.name != "sinusoidal":
        raise ValueError(f"pos.amplitude applies to pos=sinusoidal only, not pos={cfg.pos.name}")
    if amplitude is not None and amplitude <= 0:
        raise ValueError(f"pos.amplitude must be > 0, got {amplitude}")
    # the vocabulary and the positions a step takes
    layout = layout_from_config(cfg) if layout is None else layout
    return dict(
        vocab_size=layout.vocab_size, dim=m.dim, num_layers=m.num_layers, num_heads=m.num_heads,
        ff_hidden_dim=m.ff_hidden_dim, max_seq_len=layout.positions(m.max_seq_len),
        dropout=m.dropout,
        pos=cfg.pos.name, causal=cfg.mask.name == "causal", use_cache=bool(cfg.cache.enabled),
        attn_impl=m.attn_impl, pos_base=float(cfg.pos.base),
        pos_amplitude=None if amplitude is None else float(amplitude),
    )


def build_model(cfg) -> DecoderOnlyTransformer:
    """The model described by the composed Hydra config (groups model, pos, mask, cache)."""
    return DecoderOnlyTransformer(**model_args_from_config(cfg))
