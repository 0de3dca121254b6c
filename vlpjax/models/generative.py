"""The generative family: decoder-only language models, optionally prompted by an image.

  DecoderOnlyLM: token + position embeddings -> causal transformer -> logits tied to the token
                 embedding (GPT, GPT-2 (Radford et al. 2018, 2019); `vlpjax.convert.hf_gpt2`
                 loads and exports Hugging Face GPT-2 checkpoints)
  ClipCap:       CLIP image tower -> CLIP image embedding -> mapping network (an MLP, or a small
                 transformer whose learned constant tokens read the embedding) -> `prefix_length`
                 embeddings placed before the text of a GPT decoder (Mokady et al. 2021)

Both read text rows "bos tokens eos pads": left-aligned, starting with the token that generation
starts from (`start_id` of `vlpjax.train.generation.generate`; GPT-2 starts and ends a text with
the same <|endoftext|> id). `__call__` teacher-forces the rows: the decoder reads `text[:, :-1]`
and predicts `text[:, 1:]`, returning the EncoderDecoder's outputs

  dec/logits   float32[B, T-1, vocab]
  dec/targets  int[B, T-1]
  dec/weights  float32[B, T-1]: 1 on tokens to predict, the eos included; 0 on pads. A pad id
               equal to the eos id (GPT-2 has no pad token) is allowed: the first such target
               after the text counts, the rest do not.

The decoders mask no keys: rows are left-aligned, so causal attention never lets a real token
see a pad (and the start token may share its id with the pads).

Predict functions have the EncoderDecoder's contract, so `vlpjax.train.generation` decodes both:
`encode(**inputs) -> (encoded, valid)` once, then `decode_logits(tokens, encoded, valid)` on the
whole token buffer (uncached) or step by step on a clone with `decode=True` (cached). ClipCap's
"encoded" is its prefix embeddings: the call that sizes the cache (the one given the full-length
token array) sizes it for prefix + tokens and then runs the prefix through the decoder, so that
every later step continues after the prefix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlpjax.encoders.text_decoder import TextDecoder, decoder_for, lm_outputs
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import dense
from vlpjax.layers.transformer import TransformerStack

MAPPINGS = ("mlp", "transformer")
NO_PAD = -1  # the decoders' pad id: no token is masked as a key (rows are left-aligned)


def lm_flops(tokens: int, width: int, mlp_dim: int, depth: int, vocab_size: int) -> float:
    """Forward FLOPs of a decoder-only LM over `tokens` positions: blocks and tied logits."""
    return transformer_flops(tokens, width, mlp_dim, depth) + 2.0 * tokens * width * vocab_size


def gpt_decoder(m: nn.Module, max_length: int) -> TextDecoder:
    """The GPT decoder a module's fields (vocab_size, width, depth, ...) describe."""
    return decoder_for(
        m,
        max_length=max_length,
        depth=m.depth,
        cross_attention=False,
        final_norm=m.final_norm,
        pad_id=NO_PAD,
    )


class DecoderOnlyLM(nn.Module):
    """GPT / GPT-2: int[B, T] text rows -> causal next-token logits (module docstring).

    Parameters live under `decoder` (a `TextDecoder` without cross-attention): the layout
    ClipCap's language model shares, so a GPT-2 loaded for one loads into the other.
    """

    vocab_size: int
    max_length: int  # positions (GPT-2's n_positions)
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu_tanh"  # GPT-2's gelu_new
    norm_first: bool = True
    norm_eps: float = 1e-5
    final_norm: bool = True
    pad_id: int = 0
    eos_id: int = 3
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.decoder = gpt_decoder(self, self.max_length)

    def encode(self, text=None, train: bool = False):
        """A language model has nothing to encode: (None, None). `text` int[B, L], when given,
        only tells `generate` the batch size."""
        del text, train
        return None, None

    def decode_logits(self, tokens, encoded=None, valid=None, train: bool = False):
        """tokens: int[B, T] -> float32[B, T, vocab]. `encoded` and `valid` are unused (None)."""
        del encoded, valid
        return self.decoder(tokens, train=train)

    def __call__(self, text, train: bool = False):
        """Teacher-forced logits for text rows int[B, T] ("bos tokens eos pads")."""
        logits = self.decode_logits(text[:, :-1], train=train)
        return None, lm_outputs(logits, text, self.pad_id, self.eos_id)

    def flops_per_example(self, text_length: int) -> float:
        """Analytic forward FLOPs of one row of `text_length` tokens."""
        return lm_flops(text_length, self.width, self.mlp_dim, self.depth, self.vocab_size)


class MlpMapping(nn.Module):
    """ClipCap's MLP: float[B, E] -> Dense(hidden) -> tanh -> Dense(P * D) -> float[B, P, D]."""

    prefix_length: int
    width: int
    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embedding):
        h = jnp.tanh(dense(self.hidden_dim, self.dtype, (None, "mlp"), name="fc1")(embedding))
        x = dense(self.prefix_length * self.width, self.dtype, ("mlp", None), name="fc2")(h)
        return x.reshape(x.shape[0], self.prefix_length, self.width)


class TransformerMapping(nn.Module):
    """ClipCap's transformer mapper: the embedding float[B, E] is projected to `clip_length`
    tokens of width D, `prefix_length` learned constant tokens are appended, a bidirectional
    transformer mixes them, and the constant tokens' outputs are the prefix float[B, P, D]."""

    prefix_length: int
    clip_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "relu"
    norm_eps: float = 1e-5
    scan: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embedding):
        x = dense(self.clip_length * self.width, self.dtype, (None, "mlp"), name="projection")(
            embedding
        )
        x = x.reshape(x.shape[0], self.clip_length, self.width)
        constant = self.param(
            "prefix_const",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
            (self.prefix_length, self.width),
        )
        constant = jnp.broadcast_to(constant.astype(x.dtype), (x.shape[0], *constant.shape))
        x = TransformerStack(
            self.depth,
            dict(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                activation=self.activation,
                norm_first=True,
                norm_eps=self.norm_eps,
            ),
            scan=self.scan,
            remat=self.remat,
            dtype=self.dtype,
            name="transformer",
        )(jnp.concatenate([x, constant], axis=1))
        return x[:, self.clip_length :]

    def flops(self, embed_dim: int) -> float:
        tokens = self.clip_length + self.prefix_length
        projection = 2.0 * embed_dim * self.clip_length * self.width
        return projection + transformer_flops(tokens, self.width, self.mlp_dim, self.depth)


class ClipCap(nn.Module):
    """Image captioning with a CLIP prefix: float[B, H, W, 3] images + int[B, T] text rows ->
    next-token logits over the text (module docstring).

    The image tower and its projection carry the DualEncoder's names (`image_encoder`,
    `image_projection`), so a CLIP run's image side loads into them by name; the language model
    is DecoderOnlyLM's (`decoder`), so a GPT-2 does too. `freeze_image` (the paper's setting)
    stops gradients at the CLIP embedding and runs the tower in inference mode; an optimizer
    that still decays weights must leave `image_encoder` and `image_projection` out.

    `max_length` counts the decoder's positions: the prefix's and the text's (GPT-2's
    n_positions), so rows and generated texts may have `max_length - prefix_length` tokens.
    `mapping_hidden` is the MLP's hidden width (default prefix_length * width / 2, as in the
    paper) or the mapping transformer's MLP width (default 2 * width); `clip_length` (default
    `prefix_length`) is how many tokens the transformer mapping projects the embedding to.
    """

    image_encoder: nn.Module
    embed_dim: int  # CLIP's projection width (the tower's width when no image_projection)
    vocab_size: int
    max_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    image_projection: bool = True
    projection_bias: bool = False
    freeze_image: bool = True
    normalize_prefix: bool = False  # L2-normalise the CLIP embedding before the mapping
    prefix_length: int = 10
    mapping: str = "mlp"  # mlp | transformer
    mapping_hidden: int = 0
    clip_length: int = 0
    mapping_depth: int = 8
    mapping_heads: int = 8
    mapping_activation: str = "relu"
    activation: str = "gelu_tanh"
    norm_first: bool = True
    norm_eps: float = 1e-5
    final_norm: bool = True
    pad_id: int = 0
    eos_id: int = 3
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        if self.mapping not in MAPPINGS:
            raise ValueError(f"ClipCap mapping '{self.mapping}' is not one of {MAPPINGS}")
        if self.prefix_length < 1 or self.prefix_length >= self.max_length:
            raise ValueError(
                f"ClipCap needs 1 <= prefix_length < max_length, got {self.prefix_length}, "
                f"{self.max_length}"
            )
        if self.image_projection:
            self.image_proj = dense(
                self.embed_dim, self.dtype, use_bias=self.projection_bias, name="image_projection"
            )
        self.prefix_mapping = self._mapping_module()
        self.decoder = gpt_decoder(self, self.max_length)

    def _mapping_module(self, free: bool = False) -> nn.Module:
        """The mapping network: a child (in setup) or, `free`, one for FLOP arithmetic."""
        owner = {"parent": None} if free else {}
        if self.mapping == "mlp":
            hidden = self.mapping_hidden or self.prefix_length * self.width // 2
            return MlpMapping(
                self.prefix_length, self.width, hidden, self.dtype, name="mapping", **owner
            )
        return TransformerMapping(
            self.prefix_length,
            self.clip_length or self.prefix_length,
            self.width,
            self.mapping_depth,
            self.mapping_heads,
            self.mapping_hidden or 2 * self.width,
            self.mapping_activation,
            self.norm_eps,
            self.scan,
            self.remat,
            self.dtype,
            name="mapping",
            **owner,
        )

    def embed_image(self, image, train: bool = False):
        """float[B, H, W, 3] -> float32[B, E]: CLIP's (unnormalised) image embedding."""
        pooled, _ = self.image_encoder(image, train=train and not self.freeze_image)
        features = self.image_proj(pooled) if self.image_projection else pooled
        features = features.astype(jnp.float32)
        if self.freeze_image:
            features = jax.lax.stop_gradient(features)
        return features

    def prefix(self, features):
        """float32[B, E] CLIP embeddings -> float[B, prefix_length, width] prefix embeddings."""
        if self.normalize_prefix:
            features = features / jnp.maximum(
                jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12
            )
        return self.prefix_mapping(features.astype(self.dtype))

    def encode(self, image, train: bool = False):
        """image: float[B, H, W, 3] -> (float[B, prefix_length, width] prefix, None)."""
        return self.prefix(self.embed_image(image, train)), None

    def decode_logits(self, tokens, prefix=None, valid=None, train: bool = False):
        """tokens: int[B, T] (after the prefix) -> float32[B, T, vocab], the logits at the token
        positions only. Without `decode` the prefix is needed on every call. With `decode`, the
        first call (full-length tokens, the prefix) sizes the cache for prefix + tokens and
        writes the prefix into it (its logits are meaningless); later calls continue from
        there, one token at a time, with no prefix. `valid` is unused (None)."""
        del valid
        sizing = self.decode and not self.decoder.has_variable("cache", "position")
        if prefix is None and (sizing or not self.decode):
            raise ValueError("ClipCap.decode_logits needs the prefix (from encode)")
        if not self.decode:
            logits = self.decoder(tokens, prefix=prefix, train=train)
            return logits[:, prefix.shape[1] :]
        if not sizing:
            return self.decoder(tokens, train=train)
        logits = self.decoder(tokens, prefix=prefix, train=train)  # creates the cache
        self.decoder(tokens[:, :0], prefix=prefix, train=train)  # the prefix's keys/values
        return logits[:, prefix.shape[1] :]

    def __call__(self, image, text, train: bool = False):
        """Teacher-forced logits for text rows int[B, T] ("bos tokens eos pads") after the
        image's prefix; the loss is on the text only. `out` also holds `img/features`, the CLIP
        image embedding float32[B, E]."""
        features = self.embed_image(image, train)
        prefix = self.prefix(features)
        logits = self.decode_logits(text[:, :-1], prefix, None, train)
        out = lm_outputs(logits, text, self.pad_id, self.eos_id)
        out["img/features"] = features
        return None, out

    def flops_per_example(self, text_length: int) -> float:
        """Analytic forward FLOPs of one image and `text_length` tokens after its prefix."""
        flops = self.image_encoder.flops()
        if self.image_projection:
            flops += 2.0 * self.image_encoder.width * self.embed_dim
        mapping = self._mapping_module(free=True)
        if self.mapping == "mlp":
            flops += 2.0 * mapping.hidden_dim * (self.embed_dim + self.prefix_length * self.width)
        else:
            flops += mapping.flops(self.embed_dim)
        tokens = self.prefix_length + text_length
        return flops + lm_flops(tokens, self.width, self.mlp_dim, self.depth, self.vocab_size)
