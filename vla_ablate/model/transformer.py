"""The decoder-only Transformer over action (and state) tokens, with cached and uncached generation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla_ablate.model.attention import KVCache, causal_mask
from vla_ablate.model.block import TransformerBlock
from vla_ablate.model.linear import Linear
from vla_ablate.model.norm import RMSNorm
from vla_ablate.model.positions import build_positional_encoding

EMBED_STD = 0.02  # init std of the token (and learned position) embeddings


class DecoderOnlyTransformer(nn.Module):
    """Token embedding -> positional encoding -> N pre-norm blocks -> RMSNorm -> lm_head.

    The defaults of the extra arguments give the assignment's model: RoPE, a causal mask and a
    KV cache for generation. ``forward(input_ids, targets=None)`` returns ``(logits, loss)``.
    """

    def __init__(self, vocab_size=256, dim=256, num_layers=4, num_heads=8, ff_hidden_dim=1024,
                 max_seq_len=200, dropout=0.1, pos="rope", causal=True, use_cache=True,
                 attn_impl="manual", pos_base=10000.0, pos_amplitude=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.model_args = dict(
            vocab_size=vocab_size, dim=dim, num_layers=num_layers, num_heads=num_heads,
            ff_hidden_dim=ff_hidden_dim, max_seq_len=max_seq_len, dropout=dropout, pos=pos,
            causal=causal, use_cache=use_cache, attn_impl=attn_impl, pos_base=pos_base,
            pos_amplitude=pos_amplitude,
        )
        self.max_seq_len, self.causal, self.use_cache = max_seq_len, causal, use_cache
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.token_embedding = nn.Embedding(vocab_size, dim)
        extra = {} if pos_amplitude is None else {"amplitude": pos_amplitude}
        self.pos_encoding = build_positional_encoding(
            pos, dim=dim, num_heads=num_heads, max_seq_len=max_seq_len, base=pos_base,
            token_std=EMBED_STD, **extra,
        )
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            # positions come from pos_encoding, so the blocks keep no RoPE tables of their own
            TransformerBlock(dim, num_heads, ff_hidden_dim, dropout, attn_impl, own_rope=False)
            for _ in range(num_layers)
        )
        self.norm_final = RMSNorm(dim)
        self.lm_head = Linear(dim, vocab_size)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * num_layers) ** 0.5)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=EMBED_STD)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids, targets=None, input_pos=None, need_weights=False):
        """Logits (B, T, V) and the mean cross-entropy against ``targets`` (or None).

        Targets equal to -1 are ignored (the course's padding), as in the template.

        ``input_pos`` (T,) are the tokens' absolute positions; passing it reads and writes the KV
        cache set up by ``setup_cache`` (the positions must follow the ones already cached).
        """
        hidden = self.hidden_states(input_ids, input_pos, need_weights)
        logits = self.lm_head(hidden)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-1)
        return logits, loss

    def hidden_states(self, input_ids, input_pos=None, need_weights=False):
        """The final normed hidden states (B, T, C) of tokens at absolute positions ``input_pos``.

        ``input_pos`` defaults to 0..T-1. With a KV cache set up (``setup_cache``) the tokens are
        appended to it and attend to everything cached before them; without one they are scored
        on their own at those positions (the position-shift evaluation: same tokens, new
        positions).
        """
        B, T = input_ids.shape
        cached = self.blocks[0].attention.kv_cache is not None
        if input_pos is None:
            input_pos = torch.arange(T, device=input_ids.device)
            end = T  # known without reading a tensor: no graph break in a compiled full pass
        else:
            end = int(input_pos[-1]) + 1
        if end > self.max_seq_len:
            raise ValueError(f"position {end - 1} is beyond max_seq_len={self.max_seq_len}")
        key_pos = torch.arange(end, device=input_ids.device) if cached else input_pos
        x = self.token_embedding(input_ids)  # (B, T, C)
        x = self.pos_encoding.add_to_embedding(x, input_pos)
        if self.training and self.dropout.p:
            x = self.dropout(x)
        attn_mask, is_causal = self._attention_mask(input_pos, key_pos)
        if attn_mask is not None and attn_mask.dtype != x.dtype:
            attn_mask = attn_mask.to(x.dtype)  # a bf16 model: float32 biases would promote
        kwargs = dict(
            rotary=self.pos_encoding.rotary(input_pos), attn_mask=attn_mask, is_causal=is_causal,
            input_pos=input_pos if cached else None, end=end, need_weights=need_weights,
        )
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.norm_final(x)

    def _attention_mask(self, q_pos, k_pos):
        """The additive mask M for queries at ``q_pos`` over keys at ``k_pos``.

        Returns (mask or None, is_causal): a plain causal full pass is flagged rather than
        materialised, and a one-token decode step needs no mask at all. Queries are always the
        last len(q_pos) of the keys (a full pass, a prefill or a decode step).
        """
        tq, tk = len(q_pos), len(k_pos)
        bias = self.pos_encoding.attention_bias(q_pos, k_pos, self.causal)
        if not self.causal or tq == 1:
            return bias, False
        if bias is None:
            return (None, True) if tq == tk else (causal_mask(tq, tk, q_pos.device), False)
        return bias + causal_mask(tq, tk, q_pos.device), False

    @torch.no_grad()
    def attention_maps(self, input_ids):
        """Attention weights of every layer: a list of (B, H, T, T) tensors."""
        was_training = self.training
        self.eval()
        try:
            self.hidden_states(input_ids, need_weights=True)
            return [block.attention.last_attn for block in self.blocks]
        finally:
            for block in self.blocks:
                block.attention.last_attn = None
            self.train(was_training)

    # ------------------------------------------------------------------ KV cache

    def setup_cache(self, batch_size, max_len=None, dtype=None, device=None):
        """Preallocate every layer's KV cache for ``batch_size`` sequences of ``max_len``."""
        max_len = self.max_seq_len if max_len is None else max_len
        ref = self.lm_head.weight
        for block in self.blocks:
            block.attention.kv_cache = KVCache(
                batch_size, self.num_heads, max_len, self.head_dim,
                dtype=dtype or ref.dtype, device=device or ref.device,
            )

    def clear_cache(self):
        for block in self.blocks:
            block.attention.kv_cache = None

    # ------------------------------------------------------------------ generation

    @staticmethod
    def generation_slots(prompt_len, steps, given=0, sampled=1) -> list[int]:
        """Where ``generate`` puts its sampled tokens: after the prompt, each step's ``given``
        tokens and then its ``sampled`` ones."""
        per = given + sampled
        return [prompt_len + s * per + given + j for s in range(steps) for j in range(sampled)]

    @torch.inference_mode()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, use_cache=None,
                 given=None, sample_below=None, step_ranges=None):
        """Append ``max_new_tokens`` sampled tokens to ``input_ids`` (B, T0); returns (B, T0+n).

        ``top_k=1`` is greedy. ``use_cache=None`` takes the model's setting. The cached path
        prefills the prompt once and then feeds only the new tokens at their absolute
        positions; the uncached path reruns the whole sequence every step. Both see the same
        context.

        ``given`` (B, n, k) makes it a rollout of n steps (``max_new_tokens`` = n): each step
        is k given tokens (a state from the data) followed by one sampled token (its action),
        so the result is (B, T0 + n * (k + 1)). ``sample_below``: sample only token ids below
        it (the action tokens, where a vocabulary also holds state tokens).

        ``step_ranges``: [(lo, hi), ...], each step samples one token per range, from the ids
        lo..hi-1 (one action token per action dimension, each its own ids); ``max_new_tokens``
        then counts steps, with or without ``given``. None: one token a step, below
        ``sample_below``.
        """
        use_cache = self.use_cache if use_cache is None else use_cache
        B, T0 = input_ids.shape
        k = 0 if given is None else given.shape[-1]
        ranges = [(0, sample_below)] if step_ranges is None else [tuple(r) for r in step_ranges]
        d = len(ranges)
        if given is not None and tuple(given.shape[:2]) != (B, max_new_tokens):
            raise ValueError(f"given has shape {tuple(given.shape)}; expected ({B}, "
                             f"{max_new_tokens}, k): k tokens for each of the steps")
        total = T0 + max_new_tokens * (k + d)
        if total > self.max_seq_len:
            raise ValueError(f"prompt ({T0}) + {max_new_tokens} new steps of {k + d} token(s) "
                             f"exceeds max_seq_len={self.max_seq_len}")
        was_training = self.training
        self.eval()
        out = torch.empty(B, total, dtype=input_ids.dtype, device=input_ids.device)
        out[:, :T0] = input_ids
        if k:
            out[:, T0:].unflatten(1, (max_new_tokens, k + d))[..., :k] = given.to(out.device)
        # where the sampled tokens go, and the ids each one is sampled from
        slots = self.generation_slots(T0, max_new_tokens, k, d)
        try:
            if use_cache:
                self.setup_cache(B, total)
                positions = torch.arange(total, device=input_ids.device)
                fed = 0  # tokens already in the cache: feed only what came since
                for i, slot in enumerate(slots):
                    lo, hi = ranges[i % d]
                    hidden = self.hidden_states(out[:, fed:slot], positions[fed:slot])
                    logits = self.lm_head(hidden[:, -1])[:, lo:hi]
                    out[:, slot] = lo + self._sample(logits, temperature, top_k)
                    fed = slot
            else:
                for i, slot in enumerate(slots):
                    lo, hi = ranges[i % d]
                    hidden = self.hidden_states(out[:, :slot])
                    logits = self.lm_head(hidden[:, -1])[:, lo:hi]
                    out[:, slot] = lo + self._sample(logits, temperature, top_k)
        finally:
            self.clear_cache()
            self.train(was_training)
        return out

    @staticmethod
    def _sample(logits, temperature, top_k):
        if top_k == 1:
            return logits.argmax(-1)
        logits = logits.float() / max(temperature, 1e-8)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)
