"""CoCa (Yu et al. 2022): contrastive captioners, a dual encoder and a captioner in one forward.

  image: ViT tokens -> attentional pooler (`num_queries` + 1 learned queries cross-attend to
         them) -> LayerNorm. Query 0, projected to `embed_dim`, is the contrastive image
         embedding; the other `num_queries` are the image tokens the multimodal layers read.
  text:  [bos; text row] -> token + position embeddings -> unimodal decoder layers (causal
         self-attention, no cross-attention) over the row with a learned CLS token appended
         after it. The CLS output, LayerNorm-ed and projected to `embed_dim`, is the contrastive
         text embedding. The row's outputs (without the CLS) go through the multimodal decoder
         layers (causal self-attention + cross-attention to the image tokens) to next-token
         logits tied to the token embedding.

Text rows are "tokens eos pads", as CLIP's (the retrieval and zero-shot predictors encode
texts so): the model puts `bos_id` before each row itself, the token generation starts from.
`__call__` teacher-forces the captioner on [bos; text], returning `lm_outputs` over it:

  img/embed, txt/embed  float32[B, E] L2-normalised (either alone when only image or text)
  logit_scale           the clamped temperature (as DualEncoder's)
  dec/logits            float32[B, T, vocab] (with both): position t reads bos and text[:, :t]
  dec/targets           int[B, T] = text
  dec/weights           float32[B, T]: 1 on the tokens and the eos, 0 on pads

so the `contrastive` and `lm` objectives read one forward. The CLS token sits at one fixed
place, after the whole row (pads included), with no position embedding of its own (it is a
learned vector: position carries nothing more). The pads are masked as keys for the CLS query
only: rows are left-aligned, so causal attention already keeps every real token off the pads,
and the token positions see exactly what they see while decoding, where nothing is masked.

Generation (`vlpjax.train.generation`): `encode(image)` gives the pooled image tokens; then
`decode_logits(tokens, image_tokens)` over tokens that start with bos, uncached, or step by step
on a clone with `decode=True`, which caches the keys/values of both layer stacks and the image
tokens' projected keys/values. The CLS token plays no part in generation.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vlpjax.encoders.text_decoder import decode_position, lm_outputs
from vlpjax.layers import AttentionPool, PositionEmbed, TokenEmbed, attention_mask
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import dense, embed_init, layer_norm
from vlpjax.layers.pooling import normalize
from vlpjax.layers.transformer import stack_for


def causal_mask(length: int, batch: int):
    """bool[B, 1, L, L]: every position sees itself and its past."""
    ones = jnp.ones((batch, length), bool)
    return attention_mask(ones, ones)


class UnimodalText(nn.Module):
    """tokens int[B, T] -> float[B, T(+1), D]: token + position embeddings, then the unimodal
    causal layers; `with_cls` appends the CLS token after the row (module docstring). The
    parent CoCa's fields are in `config`."""

    config: dict
    token_embed: nn.Module

    @nn.compact
    def __call__(self, tokens, with_cls: bool = False, train: bool = False):
        c = types.SimpleNamespace(**self.config)
        batch, length = tokens.shape
        if length > c.max_length:
            raise ValueError(f"CoCa built for {c.max_length} text positions got {length} tokens")
        x = self.token_embed(tokens)
        offset = decode_position(self, length) if c.decode else 0
        x = PositionEmbed(c.max_length, dtype=c.dtype, name="position_embed")(x, offset)
        mask = None  # while decoding, the cache's own causal mask applies
        if with_cls:
            cls = self.param(
                "cls_token", nn.with_logical_partitioning(embed_init, ("embed",)), (c.width,)
            )
            x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, c.width))], 1)
            keys = jnp.concatenate([tokens != c.pad_id, jnp.ones((batch, 1), bool)], axis=1)
            mask = causal_mask(length + 1, batch).at[:, :, -1].set(keys[:, None])
        elif not c.decode:
            mask = causal_mask(length, batch)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=not train)
        return stack_for(c, train, depth=c.unimodal_depth, decode=c.decode)(x, mask)


class MultimodalText(nn.Module):
    """float[B, T, D] unimodal outputs + float[B, Q, Dv] image tokens -> float32[B, T, vocab]:
    the multimodal causal layers with cross-attention, logits tied to the token embedding.
    While decoding, only the call that sizes the cache needs the image tokens."""

    config: dict
    token_embed: nn.Module

    @nn.compact
    def __call__(self, x, image_tokens=None, train: bool = False):
        c = types.SimpleNamespace(**self.config)
        mask = None if c.decode else causal_mask(x.shape[1], x.shape[0])
        stack = stack_for(
            c,
            train,
            final_norm=c.norm_first,
            depth=c.multimodal_depth,
            cross_attention=True,
            decode=c.decode,
        )
        x = stack(x, mask, image_tokens)  # every image token is valid: no context mask
        return self.token_embed.attend(x).astype(jnp.float32)


class CoCa(nn.Module):
    """Contrastive captioner (module docstring): images float[B, H, W, 3] and/or text rows
    int[B, T] ("tokens eos pads") -> (primary, out).

    `max_length` counts the text positions: bos and a row, so rows may hold `max_length - 1`
    tokens (and generation may take `max_length` steps). The image tokens keep the image tower's width; the
    multimodal layers' cross-attention projects them. `logit_scale` is stored as a log and
    clamped at `logit_scale_max` after exp, as in DualEncoder.
    """

    image_encoder: nn.Module  # returns (pooled, tokens float[B, N, Dv]); only the tokens are read
    embed_dim: int
    vocab_size: int
    max_length: int
    width: int
    unimodal_depth: int
    multimodal_depth: int
    num_heads: int
    mlp_dim: int
    num_queries: int = 256  # image tokens for the multimodal layers (+1 query for the embedding)
    pooler_heads: int = 8
    logit_scale_init: float = float(np.log(1 / 0.07))
    logit_scale_max: float = 100.0
    projection_bias: bool = False
    activation: str = "gelu"
    norm_first: bool = True
    norm_eps: float = 1e-6
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        if min(self.unimodal_depth, self.multimodal_depth, self.num_queries) < 1:
            raise ValueError(
                "CoCa needs unimodal_depth, multimodal_depth and num_queries >= 1, got "
                f"{self.unimodal_depth}, {self.multimodal_depth}, {self.num_queries}"
            )

        self.pooler = AttentionPool(
            self.pooler_heads, self.num_queries + 1, norm_eps=self.norm_eps, dtype=self.dtype
        )
        self.pooler_norm = layer_norm(self.norm_eps, self.dtype)
        self.image_projection = dense(self.embed_dim, self.dtype, use_bias=self.projection_bias)
        self.token_embed = TokenEmbed(self.vocab_size, self.width, self.dtype)
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("parent", "name", "image_encoder")
        }
        self.unimodal = UnimodalText(fields, self.token_embed)
        self.multimodal = MultimodalText(fields, self.token_embed)
        self.text_norm = layer_norm(self.norm_eps, self.dtype)
        self.text_projection = dense(self.embed_dim, self.dtype, use_bias=self.projection_bias)
        self.log_logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
        )

    def logit_scale(self):
        return jnp.minimum(jnp.exp(self.log_logit_scale), self.logit_scale_max)

    def embed_image(self, image, train: bool = False):
        """float[B, H, W, 3] -> (float32[B, E] normalised embedding, float[B, Q, Dv] image
        tokens for the multimodal layers)."""
        _, tokens = self.image_encoder(image, train=train)
        pooled = self.pooler_norm(self.pooler(tokens))
        embed = normalize(self.image_projection(pooled[:, 0]).astype(jnp.float32))
        return embed, pooled[:, 1:]

    def encode(self, image, train: bool = False):
        """image: float[B, H, W, 3] -> (float[B, Q, Dv] image tokens, None: all are valid)."""
        return self.embed_image(image, train)[1], None

    def decode_logits(self, tokens, image_tokens=None, valid=None, train: bool = False):
        """tokens: int[B, T] starting with bos -> float32[B, T, vocab]. While decoding, only the
        call that sizes the cache (the full-length tokens) needs the image tokens. `valid` is
        unused (None)."""
        del valid
        sizing = self.decode and not self.unimodal.has_variable("cache", "position")
        if image_tokens is None and (sizing or not self.decode):
            raise ValueError("CoCa.decode_logits needs the image tokens (from encode)")
        hidden = self.unimodal(tokens, train=train)
        return self.multimodal(hidden, image_tokens, train=train)

    def __call__(self, image=None, text=None, train: bool = False):
        """Returns (primary, out) (module docstring): primary is the (image, text) logits
        float32[B, B] when both are given."""
        out = {"logit_scale": self.logit_scale()}
        primary = image_tokens = None
        if image is not None:
            out["img/embed"], image_tokens = self.embed_image(image, train)
        if text is not None:
            bos = jnp.full((text.shape[0], 1), self.bos_id, text.dtype)
            rows = jnp.concatenate([bos, text], axis=1)
            hidden = self.unimodal(rows, with_cls=True, train=train)
            cls = self.text_norm(hidden[:, -1])
            out["txt/embed"] = normalize(self.text_projection(cls).astype(jnp.float32))
            if image_tokens is not None:
                # [bos; text[:, :-1]] predicts text: the row's outputs but its last and the CLS.
                logits = self.multimodal(hidden[:, : text.shape[1]], image_tokens, train=train)
                out.update(lm_outputs(logits, rows, self.pad_id, self.eos_id))
                primary = out["logit_scale"] * out["img/embed"] @ out["txt/embed"].T
        return primary, out

    def flops_per_example(self, text_length: int) -> float:
        """Analytic forward FLOPs of one image and one row of `text_length` tokens. The
        cross-attention's keys/values are counted at the text width (the image tokens' own
        width may differ)."""
        encoder = self.image_encoder
        image_width, queries = encoder.width, self.num_queries + 1
        tokens = encoder.num_patches + int(encoder.class_token)
        pooler = 4 * queries * image_width**2 + 4 * tokens * image_width**2
        pooler += 4 * queries * tokens * image_width
        projections = 2 * self.embed_dim * (image_width + self.width)
        # The unimodal layers read bos, the row and the CLS; the captioner bos and all but the
        # row's last token.
        text = transformer_flops(text_length + 2, self.width, self.mlp_dim, self.unimodal_depth)
        text += transformer_flops(
            text_length, self.width, self.mlp_dim, self.multimodal_depth, self.num_queries
        )
        text += 2 * text_length * self.width * self.vocab_size
        return float(encoder.flops() + pooler + projections + text)
