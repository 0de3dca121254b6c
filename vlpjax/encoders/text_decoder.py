"""Autoregressive text decoder: the generating half of encoder-decoders (SimVLM, BART, OFA) and
the whole of decoder-only language models (GPT-2, ClipCap's language model); the position
counter of cached decoding, and the `dec/*` outputs of next-token prediction (`lm_outputs`)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers import PositionEmbed, TokenEmbed, attention_mask, cross_attention_mask
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import layer_norm, zeros_init
from vlpjax.layers.transformer import stack_for


class TextDecoder(nn.Module):
    """int[B, T] token ids (optionally after float[B, P, D] prefix embeddings) -> float[B, P+T, V]
    next-token logits, causal, with cross-attention to a context when `cross_attention`.

    `embed` shares a TokenEmbed with an encoder (BART's `shared`); the output projection is tied
    to it. `position_offset` is BART's learned-position offset of 2. With `decode=True` every
    call continues where the last one stopped: self-attention keys/values, the context's
    projected keys/values and the position live in the `cache` collection, sized by the first
    call (give it the full-length token array). Decoding has no padding mask: every row is at
    the same position.
    """

    vocab_size: int
    max_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    cross_attention: bool = True
    activation: str = "gelu"
    norm_first: bool = True
    norm_eps: float = 1e-6
    embed_norm: bool = False  # LayerNorm after token + position embeddings (BART)
    embed_scale: bool = False  # token embeddings times sqrt(width) (BART scale_embedding)
    position_offset: int = 0
    final_norm: bool = True
    logits_bias: bool = False  # BART's final_logits_bias
    pad_id: int = 0
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    embed: nn.Module | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, context=None, context_valid=None, prefix=None, train=False):
        """tokens: int[B, T]; context: float[B, S, Dc] with context_valid bool[B, S] (while
        decoding, only the call that creates the cache needs the context); prefix: float[B, P, D]
        embeddings placed before the tokens (ClipCap). Returns float32[B, P+T, vocab]."""
        embed = self.embed or TokenEmbed(
            self.vocab_size, self.width, self.dtype, name="token_embed"
        )
        x = embed(tokens)
        if self.embed_scale:
            x = x * jnp.sqrt(self.width).astype(x.dtype)
        if prefix is not None:
            x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
        offset = self.position_offset
        if self.decode:
            offset = offset + decode_position(self, x.shape[1])
        x = PositionEmbed(
            self.max_length + self.position_offset, dtype=self.dtype, name="position_embed"
        )(x, offset)
        if self.embed_norm:
            x = layer_norm(self.norm_eps, self.dtype, "embed_norm")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        valid = jnp.ones(x.shape[:2], bool)
        if prefix is None and not self.decode:  # padding is masked as keys only
            valid = tokens != self.pad_id
        mask = None
        if not self.decode:  # while decoding, the cache's own causal mask applies
            mask = (
                attention_mask(jnp.ones_like(valid), jnp.ones_like(valid)) & valid[:, None, None, :]
            )
        context_mask = None
        if self.cross_attention:
            if context_valid is None:
                raise ValueError("TextDecoder with cross_attention needs context_valid")
            context_mask = cross_attention_mask(jnp.ones(x.shape[:2], bool), context_valid)
        stack = stack_for(
            self, train, self.final_norm, cross_attention=self.cross_attention, decode=self.decode
        )
        x = stack(x, mask, context, context_mask)
        logits = embed.attend(x).astype(jnp.float32)
        if self.logits_bias:
            logits = logits + self.param(
                "logits_bias",
                nn.with_logical_partitioning(zeros_init, ("vocab",)),
                (self.vocab_size,),
            )
        return logits

    def flops(self, length: int, context_length: int = 0) -> float:
        """Analytic forward FLOPs for one sequence: blocks (with cross-attention), logits."""
        context = context_length if self.cross_attention else 0
        blocks = transformer_flops(length, self.width, self.mlp_dim, self.depth, context)
        return blocks + 2 * length * self.width * self.vocab_size


# The fields a model and its TextDecoder share by name (the model's own shape and switches).
SHARED_FIELDS = (
    "vocab_size",
    "width",
    "num_heads",
    "mlp_dim",
    "activation",
    "norm_first",
    "norm_eps",
    "dropout_rate",
    "scan",
    "remat",
    "decode",
    "dtype",
)


def decode_position(module: nn.Module, length: int):
    """While decoding: the position this call's `length` tokens start at. The counter lives in
    `cache/position`; the call that sizes the cache starts it at 0 and leaves it there, every
    later call advances it by `length`."""
    sizing = not module.has_variable("cache", "position")
    position = module.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
    start = position.value
    if not sizing:
        position.value = start + length
    return start


def decoder_for(model: nn.Module, **fields) -> TextDecoder:
    """The TextDecoder a model's own fields describe (SHARED_FIELDS), plus `fields`."""
    return TextDecoder(**{k: getattr(model, k) for k in SHARED_FIELDS}, **fields)


def lm_outputs(logits, text, pad_id: int, eos_id: int) -> dict:
    """The `dec/*` outputs of next-token prediction: `logits` float32[B, T-1, V] read
    `text[:, :-1]` of rows int[B, T] ("bos tokens eos pads")."""
    inputs, targets = text[:, :-1], text[:, 1:]
    # When pad == eos, only the first eos after the text (its input is no pad) is a target.
    weights = (targets != pad_id) | ((targets == eos_id) & (inputs != pad_id))
    return {
        "dec/logits": logits,
        "dec/targets": targets,
        "dec/weights": weights.astype(jnp.float32),
    }
