"""vla-ablate: ablate the positional encoding, mask and KV cache of an action-token Transformer."""

from vla_ablate._version import __version__
from vla_ablate.factory import build_model
from vla_ablate.model import DecoderOnlyTransformer

__all__ = ["DecoderOnlyTransformer", "__version__", "build_model"]
