"""No positional information (NoPE): with a causal mask, order still leaks through the mask."""

from vla_ablate.model.positions.base import PositionalEncoding, register


@register("none")
class NoPositionalEncoding(PositionalEncoding):
    pass
