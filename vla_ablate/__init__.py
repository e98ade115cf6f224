"""vla-ablate: ablate the positional encoding, mask and KV cache of an action-token Transformer."""

from vla_ablate.model import DecoderOnlyTransformer, build_model

__version__ = "0.1.0"
__all__ = ["DecoderOnlyTransformer", "build_model"]
