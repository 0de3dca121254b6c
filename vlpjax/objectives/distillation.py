"""Momentum distillation (ALBEF): targets mix the ground truth with the momentum model's
predictions, (1 - alpha) * hard + alpha * softmax(momentum logits), alpha = 0.4 in ALBEF, ramped
up linearly over the first epoch. The momentum model (`vlpjax.train.momentum.ema_update`) is not
trained: its logits enter under `stop_gradient`.

Every loss here is row-wise (each row's softmax sees only its own row) followed by a mean, so
plain jnp is correct and cheap on sharded arrays under jit: rows stay on their devices and only
the final sums are reduced. The ITC sims are each device's rows against the gathered global
batch plus the replicated queue, float[B, C] split over rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.utils.errors import VlpError


def soft_targets(hard, momentum_probs, alpha):
    """(1 - alpha) * hard + alpha * momentum_probs: float[..., K] distributions."""
    return (1.0 - alpha) * hard + alpha * momentum_probs


def alpha_ramp(step, alpha: float, warmup_steps: int):
    """alpha * min(1, step / warmup_steps), ALBEF's ramp over the first epoch; `step` may be
    traced. warmup_steps <= 0 means no ramp."""
    if warmup_steps <= 0:
        return jnp.float32(alpha)
    return alpha * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def _momentum_probs(momentum_logits):
    return jax.nn.softmax(jax.lax.stop_gradient(momentum_logits).astype(jnp.float32), -1)


def positive_targets(positives):
    """bool[B, C] -> float32[B, C]: each row's mass spread evenly over its positives (ALBEF and
    BLIP's retrieval fine-tuning, where several captions share an image id)."""
    positives = positives.astype(jnp.float32)
    return positives / jnp.maximum(positives.sum(-1, keepdims=True), 1.0)


def itc_distilled_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha, positives=None):
    """ITC with queue columns and momentum distillation. Returns (loss, metrics).

    sim_*: float[B, C] logits (similarity / temperature), C = B + queue size, column c < B being
    the global batch's row c; the `_m` ones come from the momentum encoders and queues.
    positives: bool[B, C] (row r's positives, the same for both directions, as ALBEF's id
    queue gives them); default: the diagonal. The loss is the mean of both directions'
    cross-entropies against soft_targets(positives normalised, softmax(sim_m), alpha)."""
    batch, columns = sim_i2t.shape
    positives = jnp.eye(batch, columns, dtype=bool) if positives is None else positives
    hard = positive_targets(positives)

    def direction(sim, sim_m):
        targets = soft_targets(hard, _momentum_probs(sim_m), alpha)
        log_probs = jax.nn.log_softmax(sim.astype(jnp.float32), -1)
        hit = jnp.take_along_axis(positives, jnp.argmax(sim, -1)[:, None], -1)[:, 0]
        return -(targets * log_probs).sum(-1).mean(), hit.mean()

    loss_i2t, hits_i2t = direction(sim_i2t, sim_i2t_m)
    loss_t2i, hits_t2i = direction(sim_t2i, sim_t2i_m)
    return (loss_i2t + loss_t2i) / 2, {"i2t_accuracy": hits_i2t, "t2i_accuracy": hits_t2i}


def itc_from_outputs(out, alpha: float, warmup_steps: int = 0):
    """ALBEF's ITC from a fusion model's outputs (vlpjax.models.fusion, vlpjax.train.step).

    Online features against the momentum features of the global batch followed by the queue:
    image r vs texts [momentum txt of the batch; queued txt], and the other way round. The
    momentum sims (same columns, momentum rows) give the soft targets. Without a momentum
    model (ema_decay 0) the columns are the online features (alpha must then be 0). alpha
    ramps up over `warmup_steps` (ALBEF: the first epoch)."""
    image, text, scale = out["img/embed"], out["txt/embed"], out["logit_scale"]
    if "momentum/img/embed" in out:
        image_m, text_m = out["momentum/img/embed"], out["momentum/txt/embed"]
    elif alpha > 0:
        raise VlpError(
            "objectives.itc.alpha > 0 distils from the momentum model: set ema_decay > 0"
        )
    else:
        image_m, text_m = jax.lax.stop_gradient(image), jax.lax.stop_gradient(text)
    columns_valid = jnp.ones((image.shape[0],), bool)
    image_all, text_all = image_m, text_m
    if "queue/img/embed" in out:
        image_all = jnp.concatenate([image_m, out["queue/img/embed"]])
        text_all = jnp.concatenate([text_m, out["queue/txt/embed"]])
        columns_valid = jnp.concatenate([columns_valid, out["queue/valid"]])

    def sims(rows, columns, row_scale):
        # Empty queue slots: a large finite negative, so their target 0 times log-prob stays 0.
        return jnp.where(columns_valid[None], row_scale * rows @ columns.T, -1e9)

    fixed_scale = jax.lax.stop_gradient(scale)
    ramped = alpha_ramp(out.get("step", 0), alpha, warmup_steps)
    return itc_distilled_loss(
        sims(image, text_all, scale),
        sims(text, image_all, scale),
        sims(image_m, text_all, fixed_scale),
        sims(text_m, image_all, fixed_scale),
        ramped,
    )


def mlm_distilled_loss(logits, momentum_logits, labels, weights, alpha):
    """Masked LM with momentum distillation: (1 - alpha) * CE(labels) + alpha * CE(softmax of the
    momentum logits), a weighted mean over tokens. Returns (loss, metrics).

    logits, momentum_logits: float[B, T, V] (momentum None: no distillation); labels: int[B, T]; weights: float[B, T] (1 at masked
    positions). The one-hot targets are never built: the loss is linear in the targets."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    if momentum_logits is not None:  # None: no momentum model, plain masked LM
        soft_nll = -(_momentum_probs(momentum_logits) * log_probs).sum(-1)
        nll = (1.0 - alpha) * nll + alpha * soft_nll
    total = jnp.maximum(weights.sum(), 1.0)
    accuracy = ((jnp.argmax(logits, -1) == labels) * weights).sum() / total
    return (nll * weights).sum() / total, {"accuracy": accuracy, "tokens": weights.sum()}
