"""Image-text matching (ITM) loss for fusion models (ALBEF, BLIP): two-way cross-entropy on the
fusion encoder's (pos, neg_img, neg_txt) pairs, whose hard negatives the model draws in its
forward pass from the global batch (`vlpjax.layers.hard_negatives`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def itm_loss(logits, labels, weights=None):
    """Two-way cross-entropy (match / no match, as ALBEF and BLIP) and accuracy, weighted means.

    logits: float[..., 2] (e.g. [3, B, 2] or [N, 2]); labels: int[...]; weights: float[...]."""
    logits = logits.astype(jnp.float32)
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], -1)[..., 0]
    total = jnp.maximum(weights.sum(), 1.0)
    correct = jnp.argmax(logits, -1) == labels
    return (nll * weights).sum() / total, {
        "accuracy": (correct * weights).sum() / total,
        "pairs": weights.sum(),
    }
