"""Generative objectives: next-token cross-entropy for language modelling, PrefixLM (SimVLM),
denoising (BART), captioning and seq2seq task mixtures (OFA). The model's decoder gives
`dec/logits` float[B, T, V] for `dec/targets` int[B, T] with `dec/weights` float[B, T] (0 at
padding); the loss is the mean over the global batch's weighted tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits, targets, weights, label_smoothing: float = 0.0):
    """Weighted-mean cross-entropy and accuracy over tokens."""
    logits = logits.astype(jnp.float32)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logprobs.mean(-1)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    accuracy = ((jnp.argmax(logits, -1) == targets) * weights).sum() / total
    return loss, {"accuracy": accuracy, "tokens": weights.sum()}


def make_lm(label_smoothing: float = 0.0):
    def lm(out, batch):
        del batch
        return token_cross_entropy(
            out["dec/logits"], out["dec/targets"], out["dec/weights"], label_smoothing
        )

    return lm
