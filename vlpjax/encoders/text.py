"""Text transformer encoder (CLIP text tower, BERT-style encoders, the text side of fusion models)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers import PositionEmbed, TokenEmbed, attention_mask, pool_tokens
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import layer_norm
from vlpjax.layers.masks import causal_flags
from vlpjax.layers.transformer import stack_for


class TextTransformer(nn.Module):
    """int[B, L] token ids -> (float[B, D] pooled, float[B, L, D] tokens).

    `causal=True` with `pool="eot"` is CLIP's text tower: pooled at the first `eos_id` token
    after a final LayerNorm. Padding (`pad_id`) is masked out of attention as keys.

    BERT (ALIGN's text tower, Hugging Face `BertModel` without its pooler): `causal=False,
    pool="cls", final_norm=False, norm_first=False` (post-LN blocks), `embed_norm=True`
    (LayerNorm, then dropout, after the summed token + position + token-type embeddings),
    `type_vocab_size=2` (token-type ids are all 0 unless given).
    """

    vocab_size: int
    max_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    causal: bool = True
    pool: str = "eot"  # eot | cls | mean
    eos_id: int = 3
    pad_id: int = 0
    final_norm: bool = True
    norm_first: bool = True
    embed_norm: bool = False
    type_vocab_size: int = 0  # 0 = no token-type embeddings
    activation: str = "gelu"
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, train: bool = False, valid=None, types=None):
        """tokens: int[B, L]; valid: bool[B, L] (default: tokens != pad_id); types: int[B, L]
        token-type ids (default 0; needs `type_vocab_size`)."""
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"text length {tokens.shape[1]} exceeds max_length {self.max_length}")
        valid = (tokens != self.pad_id) if valid is None else valid.astype(bool)
        x = TokenEmbed(self.vocab_size, self.width, self.dtype, name="token_embed")(tokens)
        x = PositionEmbed(self.max_length, dtype=self.dtype, name="position_embed")(x)
        if self.type_vocab_size:
            types = jnp.zeros_like(tokens) if types is None else types
            x = x + TokenEmbed(self.type_vocab_size, self.width, self.dtype, name="type_embed")(
                types
            )
        elif types is not None:
            raise ValueError("token-type ids given to a TextTransformer with type_vocab_size=0")
        if self.embed_norm:
            x = layer_norm(self.norm_eps, self.dtype, "embed_norm")(x)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        causal = causal_flags(valid) if self.causal else None
        # Padding is masked as keys only, so a padded query row never becomes empty.
        mask = attention_mask(jnp.ones_like(valid), causal) & valid[:, None, None, :]
        x = stack_for(self, train, final_norm=self.final_norm)(x, mask)
        pooled = pool_tokens(x, self.pool, valid=valid, token_ids=tokens, eos_id=self.eos_id)
        return pooled, x

    def flops(self, length: int | None = None) -> float:
        """Analytic forward FLOPs for one sequence of `length` (default max_length) tokens."""
        return transformer_flops(length or self.max_length, self.width, self.mlp_dim, self.depth)
