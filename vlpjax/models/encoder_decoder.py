"""The encoder-decoder family: SimVLM, BART and OFA are one module.

  encoder: [image patches (conv stem or linear); text prefix] -> bidirectional transformer
  decoder: causal transformer over the target with cross-attention to the encoder, logits tied
           to the token embedding the encoder shares

SimVLM (Wang et al. 2022) feeds the image and a text prefix and generates the rest of the text
(PrefixLM; the prefix split is a data transform). BART (Lewis et al. 2019) has no image: the
encoder reads noised text, the decoder writes the original. OFA (Wang et al. 2022) phrases
every task as an instruction in the prefix and an answer in the target, over a vocabulary of
text pieces plus location tokens.

Predict functions for decoding: `encode` once, then `decode_logits` step by step on a clone with
`decode=True` (vlpjax.train.predictor wires them to vlpjax.decode).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.encoders.conv_stem import ConvStem
from vlpjax.encoders.text_decoder import decoder_for
from vlpjax.layers import PatchEmbed, PositionEmbed, TokenEmbed, attention_mask
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import layer_norm
from vlpjax.layers.transformer import stack_for


def shift_right(targets, start_id: int):
    """Decoder inputs for teacher forcing: [start, t0, ..., t_{T-2}]."""
    start = jnp.full((targets.shape[0], 1), start_id, targets.dtype)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


def conv_stem(c, name=None) -> ConvStem:
    """The stem an EncoderDecoder's fields `c` describe: a named child of the calling module,
    or (no name) a free one for shape and FLOP arithmetic."""
    owner = {} if name else {"parent": None}
    stem = (c.stem_width, tuple(c.stem_stages), c.stem_blocks, c.stem_max_pool)
    return ConvStem(*stem, dtype=c.dtype, name=name, **owner)


class MultimodalEncoder(nn.Module):
    """[image patches; text prefix] -> bidirectional transformer; the encoder half of
    EncoderDecoder, whose attributes it reads from `config` (the parent)."""

    config: dict  # the EncoderDecoder's fields (they describe both halves) + num_patches
    token_embed: nn.Module

    @nn.compact
    def __call__(self, image=None, source=None, image_valid=None, train: bool = False):
        c = types.SimpleNamespace(**self.config)
        parts, valid = [], []
        if c.image_size:
            if image is None:
                raise ValueError("this encoder-decoder reads images: pass image")
            x = image.astype(c.dtype)
            if c.stem_width:
                x = conv_stem(c, name="stem")(x)
            patches = PatchEmbed(c.patch_size, c.width, dtype=c.dtype, name="patch_embed")(x)
            patches = PositionEmbed(c.num_patches, dtype=c.dtype, name="image_position")(patches)
            shown = jnp.ones(patches.shape[:1], bool) if image_valid is None else image_valid
            parts.append(patches)
            valid.append(jnp.broadcast_to(shown.astype(bool)[:, None], patches.shape[:2]))
        if source is not None:
            text = self.token_embed(source)
            if c.embed_scale:
                text = text * jnp.sqrt(c.width).astype(text.dtype)
            position = PositionEmbed(
                c.max_source_length + c.position_offset, dtype=c.dtype, name="text_position"
            )
            parts.append(position(text, c.position_offset))
            valid.append(source != c.pad_id)
        if not parts:
            raise ValueError("encode needs an image or a source text")
        x = jnp.concatenate(parts, axis=1)
        valid = jnp.concatenate(valid, axis=1)
        if c.embed_norm:
            x = layer_norm(c.norm_eps, c.dtype, "embed_norm")(x)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=not train)
        # Invalid tokens are masked as keys only, so no query row is ever empty.
        mask = attention_mask(jnp.ones_like(valid)) & valid[:, None, None, :]
        x = stack_for(c, train, final_norm=c.norm_first, depth=c.encoder_depth)(x, mask)
        return x, valid


class EncoderDecoder(nn.Module):
    vocab_size: int
    max_source_length: int
    max_target_length: int
    width: int
    encoder_depth: int
    decoder_depth: int
    num_heads: int
    mlp_dim: int
    image_size: int = 0  # 0 = no image input (BART)
    patch_size: int = 16  # on the pixels, or on the conv stem's feature map
    stem_width: int = 0  # 0 = linear patch projection; > 0 = SimVLM's ResNet conv stem
    stem_stages: tuple = (256,)
    stem_blocks: int = 3
    stem_max_pool: bool = True
    activation: str = "gelu"
    norm_first: bool = True
    norm_eps: float = 1e-6
    embed_norm: bool = False  # BART: LayerNorm after the embeddings, encoder and decoder
    embed_scale: bool = False  # BART: token embeddings times sqrt(width)
    position_offset: int = 0  # BART: learned positions start at 2
    logits_bias: bool = False
    pad_id: int = 0
    decoder_start_id: int = 2  # bos (BART starts from eos)
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    decode: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.token_embed = TokenEmbed(self.vocab_size, self.width, self.dtype)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields = {k: v for k, v in fields.items() if k not in ("parent", "name")}
        self.encoder = MultimodalEncoder(
            {**fields, "num_patches": self.num_patches}, self.token_embed
        )
        self.decoder = decoder_for(
            self,
            max_length=self.max_target_length,
            depth=self.decoder_depth,
            cross_attention=True,
            embed_norm=self.embed_norm,
            embed_scale=self.embed_scale,
            position_offset=self.position_offset,
            final_norm=self.norm_first,
            logits_bias=self.logits_bias,
            pad_id=self.pad_id,
            embed=self.token_embed,
        )

    @property
    def num_patches(self) -> int:
        side = self.image_size
        if self.stem_width:
            side //= conv_stem(self).reduction()
        return (side // self.patch_size) ** 2

    def encode(self, image=None, source=None, image_valid=None, train: bool = False):
        """image: float[B, H, W, 3] (image models); source: int[B, Ls] text prefix (pad =
        `pad_id`); image_valid: bool[B] (False hides the image: text-only examples).
        Returns (float[B, S, D] encoded, bool[B, S] valid)."""
        return self.encoder(image, source, image_valid, train)

    def decode_logits(self, decoder_inputs, encoded=None, encoded_valid=None, train=False):
        """decoder_inputs: int[B, T] -> float32[B, T, vocab]. While decoding, only the call that
        creates the cache needs `encoded`."""
        return self.decoder(decoder_inputs, encoded, encoded_valid, train=train)

    def __call__(self, image=None, source=None, target=None, image_valid=None, train=False):
        """Teacher-forced logits for `target` int[B, T] (tokens, eos, pads)."""
        encoded, valid = self.encode(image, source, image_valid, train)
        logits = self.decode_logits(
            shift_right(target, self.decoder_start_id), encoded, valid, train
        )
        out = {
            "dec/logits": logits,
            "dec/targets": target,
            "dec/weights": (target != self.pad_id).astype(jnp.float32),
        }
        return None, out

    def flops_per_example(self, text_length: int) -> float:
        """Analytic forward FLOPs of one example with `text_length` source and target tokens."""
        encoder_tokens = text_length + (self.num_patches if self.image_size else 0)
        flops = transformer_flops(encoder_tokens, self.width, self.mlp_dim, self.encoder_depth)
        flops += transformer_flops(
            text_length, self.width, self.mlp_dim, self.decoder_depth, encoder_tokens
        )
        flops += 2 * text_length * self.width * self.vocab_size
        if self.image_size:
            side = self.image_size
            if self.stem_width:
                stem = conv_stem(self)
                flops += stem.flops(self.image_size)
                side //= stem.reduction()
                channels = self.stem_stages[-1] if self.stem_stages else self.stem_width
            else:
                channels = 3
            flops += 2 * (side // self.patch_size) ** 2 * self.patch_size**2 * channels * self.width
        return float(flops)
