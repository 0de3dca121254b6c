"""Pooling a token sequence into one vector: CLS, EOT, mean, or attention (MAP / CoCa); and the
L2 normalisation that turns a pooled, projected vector into a contrastive embedding."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers.attention import MultiHeadAttention
from vlpjax.layers.initializers import embed_init, layer_norm
from vlpjax.layers.mlp import Mlp

POOLINGS = ("cls", "eot", "mean", "none")


def pool_tokens(x, kind: str, valid=None, token_ids=None, eos_id: int | None = None):
    """float[B, L, D] -> float[B, D].

    cls: the first token. eot: the first `eos_id` token (CLIP; the last valid token when a row
    has none). mean: average over valid tokens.
    """
    if kind == "cls":
        return x[:, 0]
    if kind == "mean":
        if valid is None:
            return x.mean(axis=1)
        weights = valid.astype(x.dtype)[..., None]
        return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    if kind == "eot":
        is_eos = token_ids == eos_id
        last_valid = jnp.maximum(valid.astype(jnp.int32).sum(1) - 1, 0)
        index = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1), last_valid)
        return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling '{kind}'; valid: {POOLINGS}")


def normalize(x, eps: float = 1e-12):
    """float[..., E] -> the same, L2-normalised over the last axis (zero vectors stay finite)."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class AttentionPool(nn.Module):
    """Learned queries cross-attend to the tokens (MAP head; CoCa's attentional pooler).

    float[B, L, D] -> float[B, num_queries, D].
    """

    num_heads: int
    num_queries: int = 1
    mlp_dim: int | None = None
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, valid=None):
        dim = x.shape[-1]
        queries = self.param(
            "queries",
            nn.with_logical_partitioning(embed_init, (None, "embed")),
            (self.num_queries, dim),
        )
        queries = jnp.broadcast_to(queries[None], (x.shape[0], self.num_queries, dim)).astype(
            self.dtype
        )
        mask = None if valid is None else valid.astype(bool)[:, None, None, :]
        pooled = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attention")(
            queries, x, mask
        )
        if self.mlp_dim:
            pooled = pooled + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(
                layer_norm(self.norm_eps, self.dtype, "norm")(pooled)
            )
        return pooled
