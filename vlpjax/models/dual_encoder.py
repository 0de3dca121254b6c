"""Dual encoders (family A): two towers projected into one space (CLIP, and later ALIGN, LiT).

The model returns `(primary, out)`; `out` holds `img/embed` and `txt/embed` (L2-normalised,
float32[B, E]) and `logit_scale` (the clamped temperature), which the contrastive objective and
the retrieval/zero-shot evaluators pick from. Either tower may be skipped at evaluation.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vlpjax.layers.initializers import dense
from vlpjax.layers.pooling import normalize


class DualEncoder(nn.Module):
    """Image tower + text tower + linear projections + learnable temperature.

    `logit_scale` is stored as a log and clamped at `logit_scale_max` (100 in CLIP) after exp.
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    embed_dim: int
    logit_scale_init: float = float(np.log(1 / 0.07))
    logit_scale_max: float = 100.0
    # SigLIP's learnable logit bias (init -10); None = no bias parameter.
    logit_bias_init: float | None = None
    projection_bias: bool = False
    # ALIGN uses the image tower's pooled output as is (its width must equal embed_dim).
    image_projection: bool = True
    text_projection: bool = True
    dtype: Any = jnp.float32

    # The outputs through which the contrastive loss couples examples (gradient caching).
    coupled_outputs = ("img/embed", "txt/embed", "logit_scale", "logit_bias")

    def setup(self):
        def projection(name):
            return dense(self.embed_dim, self.dtype, use_bias=self.projection_bias, name=name)

        identity = lambda x: x  # noqa: E731
        self.image_proj = projection("image_projection") if self.image_projection else identity
        self.text_proj = projection("text_projection") if self.text_projection else identity
        self.log_logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
        )
        if self.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", nn.initializers.constant(self.logit_bias_init), ()
            )

    def embed_image(self, images, train: bool = False):
        """float[B, H, W, 3] -> (float32[B, E] normalised embedding, unnormalised, tokens)."""
        pooled, tokens = self.image_encoder(images, train=train)
        features = self.image_proj(pooled).astype(jnp.float32)
        return normalize(features), features, tokens

    def embed_text(self, text, train: bool = False):
        """int[B, L] -> (float32[B, E] normalised embedding, unnormalised, tokens)."""
        pooled, tokens = self.text_encoder(text, train=train)
        features = self.text_proj(pooled).astype(jnp.float32)
        return normalize(features), features, tokens

    def logit_scale(self):
        return jnp.minimum(jnp.exp(self.log_logit_scale), self.logit_scale_max)

    def __call__(self, image=None, text=None, train: bool = False):
        """Returns (primary, out): primary is the (image, text) logits when both are given."""
        out = {"logit_scale": self.logit_scale()}
        if self.logit_bias_init is not None:
            out["logit_bias"] = self.logit_bias
        if image is not None:
            out["img/embed"], out["img/features"], out["img/tokens"] = self.embed_image(
                image, train
            )
        if text is not None:
            out["txt/embed"], out["txt/features"], out["txt/tokens"] = self.embed_text(text, train)
        primary = None
        if image is not None and text is not None:
            primary = out["logit_scale"] * out["img/embed"] @ out["txt/embed"].T
        return primary, out

    def flops_per_example(self, text_length: int) -> float:
        return self.image_encoder.flops() + self.text_encoder.flops(text_length)
