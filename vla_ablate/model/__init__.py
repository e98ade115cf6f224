"""The from-scratch decoder-only Transformer and its parts."""

from vla_ablate.model.attention import CausalSelfAttention, KVCache
from vla_ablate.model.block import FeedForward, TransformerBlock
from vla_ablate.model.norm import RMSNorm
from vla_ablate.model.positions import POSITIONAL_ENCODINGS, RotaryPositionalEmbedding
from vla_ablate.model.transformer import DecoderOnlyTransformer

__all__ = [
    "POSITIONAL_ENCODINGS",
    "CausalSelfAttention",
    "DecoderOnlyTransformer",
    "FeedForward",
    "KVCache",
    "RMSNorm",
    "RotaryPositionalEmbedding",
    "TransformerBlock",
]
