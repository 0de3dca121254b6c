"""Fusion models (align before fuse): ALBEF (Li et al. 2021) and BLIP (Li et al. 2022).

A ViT image encoder and a BERT-style text transformer, aligned by a contrastive loss (ITC) on
256-d projections of their first tokens, then fused: text layers cross-attend to the image
tokens. One module, `FusionModel`, covers both; its fields say which layers do what:

  ALBEF  text_layers=6, cross_from=6, depth=12: layers 0-5 are the text encoder, layers 6-11
         the multimodal encoder (cross-attention). Heads: ITM and masked LM (`mlm=True`).
  BLIP   text_layers=12, cross_from=0, `decoder=True`: one transformer used three ways with
         shared weights: unimodal encoder (cross-attention skipped) for ITC; image-grounded
         encoder (the first token replaced by [ENC], `enc_id`) for ITM; image-grounded causal
         decoder for captions (LM). The decoder owns its self-attention (`decoder_attention`)
         and shares everything else, as in BLIP's pretraining.

`__call__(image, text, masked_text=None, train)` returns `(primary, out)`:

  img/embed, txt/embed   float32[B, 256] L2-normalised ITC features; logit_scale = 1 / temp
  itm/logits             float32[3, B, 2] for the (pos, neg_img, neg_txt) pairs of
                         `vlpjax.layers.hard_negatives` (hard negatives from the ITC similarities
                         over the global batch), with itm/labels and itm/weights
  mlm/logits             float32[B, L, V] on `masked_text` (ALBEF, image-conditioned)
  dec/logits, ...        the captioning outputs (BLIP), as `generative.lm_outputs`

`momentum(image, text, masked_text)` is what the momentum (EMA) copy computes for
distillation and the feature queues: the train step runs it with `TrainState.ema_params`.
Captions are generated with the `encode` / `decode_logits` contract of
`vlpjax.train.generation`; the ITM re-ranking evaluator uses `image_tokens` and `itm_scores`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlpjax.encoders.text_decoder import lm_outputs
from vlpjax.layers import PositionEmbed, TokenEmbed, attention_mask, cross_attention_mask
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.hard_negatives import itm_pairs, itm_targets, sample_hard_negatives
from vlpjax.layers.initializers import dense, layer_norm, zeros_init
from vlpjax.layers.mlp import activation as activation_fn
from vlpjax.layers.pooling import normalize
from vlpjax.layers.transformer import TransformerBlock
from vlpjax.sharding import BATCH_AXES

DECODER_ATTENTION = "decoder_attention"


class TextEmbeddings(nn.Module):
    """BERT embeddings: token + learned position, LayerNorm, dropout. With `decode`, the
    position continues from the `cache` collection (one call per generated token)."""

    vocab_size: int
    max_length: int
    width: int
    norm_eps: float
    dropout_rate: float
    decode: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.token = TokenEmbed(self.vocab_size, self.width, self.dtype, name="token_embed")
        self.position = PositionEmbed(self.max_length, dtype=self.dtype, name="position_embed")
        self.norm = layer_norm(self.norm_eps, self.dtype, "embed_norm")
        self.dropout = nn.Dropout(self.dropout_rate)
        if self.decode:  # the call that creates the cache only sizes it
            self.sizing = not self.has_variable("cache", "position")
            self.cache_position = self.variable(
                "cache", "position", lambda: jnp.array(0, jnp.int32)
            )

    def __call__(self, tokens, train: bool = False):
        offset = 0
        if self.decode:
            offset = self.cache_position.value
            if not self.sizing:
                self.cache_position.value = offset + tokens.shape[1]
        x = self.position(self.token(tokens), offset)
        return self.dropout(self.norm(x), deterministic=not train)

    def attend(self, x):
        return self.token.attend(x)


class FusionLayers(nn.Module):
    """The text transformer's layers `layer_{i}`; layer i cross-attends when i >= cross_from.
    One call runs layers [start, stop) in one of three ways (see the module docstring)."""

    depth: int
    cross_from: int
    num_heads: int
    mlp_dim: int
    activation: str
    norm_first: bool
    norm_eps: float
    dropout_rate: float
    decode: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x,
        mask,
        context=None,
        context_mask=None,
        *,
        start: int = 0,
        stop: int | None = None,
        unimodal: bool = False,
        causal: bool = False,
        train: bool = False,
    ):
        """unimodal: no cross-attention (the text encoder); causal: the decoder pass with its
        own self-attention (while decoding, only the call that creates the cache passes the
        context; later steps read its keys and values from the cross-attention cache)."""
        for i in range(start, self.depth if stop is None else stop):
            cross = i >= self.cross_from
            block = TransformerBlock(
                self.num_heads,
                self.mlp_dim,
                cross_attention=cross,
                activation=self.activation,
                norm_first=self.norm_first,
                norm_eps=self.norm_eps,
                dropout_rate=self.dropout_rate,
                deterministic=not train,
                decode=self.decode,
                dtype=self.dtype,
                name=f"layer_{i}",
            )
            x, _ = block(
                x,
                mask,
                context if cross else None,
                context_mask if cross else None,
                unimodal=unimodal,
                self_attention=DECODER_ATTENTION if causal else "self_attention",
            )
        return x


class PredictionHead(nn.Module):
    """BERT's LM head: dense, activation, LayerNorm, then logits tied to the token embedding
    plus a bias. Used for ALBEF's masked LM and BLIP's captions."""

    vocab_size: int
    activation: str
    norm_eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, embeddings: TextEmbeddings):
        x = dense(x.shape[-1], self.dtype, ("embed", "mlp"), name="transform")(x)
        x = layer_norm(self.norm_eps, self.dtype, "norm")(activation_fn(self.activation)(x))
        bias = self.param(
            "bias", nn.with_logical_partitioning(zeros_init, ("vocab",)), (self.vocab_size,)
        )
        return (embeddings.attend(x) + bias.astype(self.dtype)).astype(jnp.float32)


class FusionModel(nn.Module):
    """ALBEF / BLIP. `image_encoder` is a ViT whose first output token is its CLS token."""

    image_encoder: nn.Module
    vocab_size: int
    max_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    text_layers: int  # the unimodal text encoder: layers [0, text_layers)
    cross_from: int  # the first layer with cross-attention to the image
    embed_dim: int = 256
    mlm: bool = True  # ALBEF's image-conditioned masked LM
    decoder: bool = False  # BLIP's causal LM pass with its own self-attention
    enc_id: int | None = None  # BLIP's [ENC]: replaces the first token for ITM (None: keep)
    dec_id: int | None = None  # BLIP's [DEC]: replaces the first token for the LM (None: keep)
    temperature_init: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    pad_id: int = 0
    eos_id: int = 3
    activation: str = "gelu"
    norm_first: bool = False  # BERT: post-LN
    norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    decode: bool = False
    # Set by the trainer (not a config field): hard negatives are drawn per device in shard_map.
    mesh: Any = None
    dtype: Any = jnp.float32

    # What the feature queues hold (from the momentum pass), in `vlpjax.train.momentum`.
    queued_outputs = ("img/embed", "txt/embed")

    def setup(self):
        if not 0 < self.text_layers <= self.depth or not 0 <= self.cross_from < self.depth:
            raise ValueError(
                f"fusion model: text_layers {self.text_layers} and cross_from {self.cross_from} "
                f"must lie in the {self.depth} layers"
            )
        self.embeddings = TextEmbeddings(
            self.vocab_size,
            self.max_length,
            self.width,
            self.norm_eps,
            self.dropout_rate,
            self.decode,
            self.dtype,
            name="text_embed",
        )
        self.layers = FusionLayers(
            self.depth,
            self.cross_from,
            self.num_heads,
            self.mlp_dim,
            self.activation,
            self.norm_first,
            self.norm_eps,
            self.dropout_rate,
            self.decode,
            self.dtype,
            name="text",
        )
        self.image_projection = dense(self.embed_dim, self.dtype, name="image_projection")
        self.text_projection = dense(self.embed_dim, self.dtype, name="text_projection")
        self.itm_head = dense(2, self.dtype, name="itm_head")
        if self.mlm or self.decoder:
            self.lm_head = PredictionHead(
                self.vocab_size, self.activation, self.norm_eps, self.dtype, name="lm_head"
            )
        # Learnt as a log (like CLIP's logit scale): Adam's steps of ~lr are then relative.
        # A raw temperature moved from 0.07 to 0.005 in 600 CPU-recipe steps at lr 1e-3.
        self.log_temperature = self.param(
            "log_temperature", nn.initializers.constant(math.log(self.temperature_init)), ()
        )

    # --- the three ways of running the text transformer -------------------------------------

    def _valid(self, text):
        return text != self.pad_id

    def unimodal(self, text, train: bool = False):
        """int[B, L] -> float[B, L, D]: the text encoder (no image)."""
        valid = self._valid(text)
        mask = attention_mask(valid)
        x = self.embeddings(text, train)
        return self.layers(x, mask, stop=self.text_layers, unimodal=True, train=train)

    def multimodal(self, image_tokens, text=None, hidden=None, valid=None, train=False):
        """Image-grounded encoder -> float[B, L, D]. From token ids `text`, or (ALBEF) from the
        text encoder's output `hidden` with `valid`, continuing at layer `cross_from`."""
        if hidden is None:
            valid = self._valid(text)
            hidden, start = self.embeddings(self._first_token(text, self.enc_id), train), 0
        else:
            start = self.cross_from
        context_mask = cross_attention_mask(valid, jnp.ones(image_tokens.shape[:2], bool))
        return self.layers(
            hidden, attention_mask(valid), image_tokens, context_mask, start=start, train=train
        )

    def decoder_logits(self, tokens, image_tokens, image_valid, train: bool = False):
        """The image-grounded causal decoder: int[B, T] -> float32[B, T, V]. While decoding,
        only the call that creates the cache needs `image_tokens`."""
        x = self.embeddings(tokens, train)
        context_mask = cross_attention_mask(jnp.ones(tokens.shape, bool), image_valid)
        mask = None
        if not self.decode:  # while decoding, the cache's causal mask applies
            valid = jnp.ones(tokens.shape, bool)
            mask = attention_mask(valid, valid)
        x = self.layers(x, mask, image_tokens, context_mask, causal=True, train=train)
        return self.lm_head(x, self.embeddings)

    def _first_token(self, text, token_id):
        return text if token_id is None else text.at[:, 0].set(token_id)

    # --- features and heads -------------------------------------------------------------------

    def logit_scale(self):
        temperature = jnp.exp(self.log_temperature)
        return 1.0 / jnp.clip(temperature, self.temperature_min, self.temperature_max)

    def image_tokens(self, image, train: bool = False):
        return self.image_encoder(image, train=train)[1]

    def embed_image(self, image, train: bool = False):
        tokens = self.image_tokens(image, train)
        return normalize(self.image_projection(tokens[:, 0]).astype(jnp.float32)), tokens

    def embed_text(self, text, train: bool = False):
        hidden = self.unimodal(text, train)
        return normalize(self.text_projection(hidden[:, 0]).astype(jnp.float32)), hidden

    def _reuses_text_encoder(self) -> bool:
        # ALBEF's multimodal layers continue from the text encoder's output (same tokens).
        return self.cross_from == self.text_layers and self.enc_id is None

    def itm_logits(self, image_tokens, text=None, hidden=None, valid=None, train=False):
        fused = self.multimodal(image_tokens, text, hidden, valid, train)
        return self.itm_head(fused[:, 0]).astype(jnp.float32)

    def itm_scores(self, image_tokens, text):
        """float32[B]: the match probability of (image r, text r)."""
        return jax.nn.softmax(self.itm_logits(image_tokens, text), -1)[:, 1]

    def _sampling_mesh(self, batch: int):
        if self.mesh is None:
            return None
        shards = math.prod(self.mesh.shape[axis] for axis in BATCH_AXES)
        return self.mesh if batch % shards == 0 else None  # init runs on one example

    def _itm(self, out, image_tokens, text, hidden, train):
        sims = out["logit_scale"] * out["img/embed"] @ out["txt/embed"].T
        key = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.key(0)
        mesh = self._sampling_mesh(text.shape[0])
        negatives = sample_hard_negatives(
            jax.random.fold_in(key, 0x17A), sims, sims.T, text_keys=text, mesh=mesh
        )
        valid = self._valid(text)
        if self._reuses_text_encoder():
            texts = {"hidden": hidden, "valid": valid}
        else:
            texts = {"text": text}
        images, texts = itm_pairs(negatives, image_tokens, texts, mesh=mesh)
        logits = [
            self.itm_logits(images[k], **jax.tree.map(lambda x, k=k: x[k], texts), train=train)
            for k in range(3)
        ]
        out["itm/logits"] = jnp.stack(logits)
        out["itm/labels"], out["itm/weights"] = itm_targets(negatives)

    def _masked_lm(self, image_tokens, masked_text, train):
        fused = self.multimodal(image_tokens, text=masked_text, train=train)
        return self.lm_head(fused, self.embeddings)

    def __call__(self, image=None, text=None, masked_text=None, train: bool = False):
        out = {"logit_scale": self.logit_scale()}
        if image is not None:
            out["img/embed"], image_tokens = self.embed_image(image, train)
        if text is not None:
            out["txt/embed"], hidden = self.embed_text(text, train)
        if image is None or text is None:
            return None, out
        self._itm(out, image_tokens, text, hidden, train)
        if self.mlm and masked_text is not None:
            out["mlm/logits"] = self._masked_lm(image_tokens, masked_text, train)
        if self.decoder:
            tokens = self._first_token(text, self.dec_id)
            image_valid = jnp.ones(image_tokens.shape[:2], bool)
            logits = self.decoder_logits(tokens[:, :-1], image_tokens, image_valid, train)
            out.update(lm_outputs(logits, text, self.pad_id, self.eos_id))
        return out["logit_scale"] * out["img/embed"] @ out["txt/embed"].T, out

    def momentum(self, image, text, masked_text=None):
        """The momentum model's outputs: ITC features (queued) and, with `masked_text`, the
        masked-LM logits (distillation targets)."""
        image_embed, image_tokens = self.embed_image(image)
        out = {"img/embed": image_embed, "txt/embed": self.embed_text(text)[0]}
        if self.mlm and masked_text is not None:
            out["mlm/logits"] = self._masked_lm(image_tokens, masked_text, False)
        return out

    # --- generation (BLIP) ----------------------------------------------------------------------

    def encode(self, image, train: bool = False):
        tokens = self.image_tokens(image, train)
        return tokens, jnp.ones(tokens.shape[:2], bool)

    def decode_logits(self, tokens, encoded=None, valid=None, train: bool = False):
        if not self.decoder:
            raise ValueError("this fusion model has no decoder (model.decoder=False)")
        return self.decoder_logits(tokens, encoded, valid, train)

    def flops_per_example(self, text_length: int) -> float:
        """Forward FLOPs of one training example: the image, the text encoder, three fused
        passes (ITM pos + 2 negatives), the masked-LM and decoder passes when present."""
        image = self.image_encoder.flops()
        tokens = self.image_encoder.num_patches + 1
        fused_layers = self.depth - (self.cross_from if self._reuses_text_encoder() else 0)
        layer = transformer_flops(text_length, self.width, self.mlp_dim, 1)
        cross = transformer_flops(text_length, self.width, self.mlp_dim, 1, tokens) - layer
        fused = fused_layers * layer + (self.depth - self.cross_from) * cross
        passes = 3 + int(self.mlm) + int(self.decoder)
        heads = (int(self.mlm) + int(self.decoder)) * 2 * text_length * self.width * self.vocab_size
        return image + self.text_layers * layer + passes * fused + heads
