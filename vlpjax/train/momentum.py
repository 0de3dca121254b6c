"""Momentum encoders and feature queues (MoCo, ALBEF, BLIP): reusable, functional pieces.

- `ema_update`: the momentum copy of the parameters, kept in `TrainState.ema_params` when
  `config.ema_decay > 0` and updated after every optimizer step.
- `Queue`: a ring buffer of the last `size` features of the global batch. Pushed features are
  the whole global batch (under jit a sharded [B, D] array is gathered into the replicated
  buffer), written in row order at `pointer`, wrapping around the end.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


class Queue(NamedTuple):
    features: (
        jax.Array
    )  # float[size, D]: slot i holds the feature pushed i slots after `pointer`'s wrap
    pointer: jax.Array  # int32[]: where the next push starts
    count: jax.Array  # int32[]: how many slots hold real features (<= size)


def queue_init(size: int, dim: int, dtype=jnp.float32) -> Queue:
    return Queue(jnp.zeros((size, dim), dtype), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def queue_push(queue: Queue, features) -> Queue:
    """Writes float[B, D] at pointer, pointer+1, ... (mod size); B may exceed or not divide size."""
    size, batch = queue.features.shape[0], features.shape[0]
    if batch > size:  # only the newest `size` rows survive
        features, batch = features[-size:], size
    slots = (queue.pointer + jnp.arange(batch)) % size
    return Queue(
        queue.features.at[slots].set(features.astype(queue.features.dtype)),
        (queue.pointer + batch) % size,
        jnp.minimum(queue.count + batch, size),
    )


def queue_ordered(queue: Queue):
    """The queue's features oldest first: float[size, D] (the first size - count rows are empty)."""
    return jnp.roll(queue.features, -queue.pointer, axis=0)


def queue_valid(queue: Queue):
    """bool[size]: which rows of `queue_ordered(queue)` hold real features (the newest `count`)."""
    size = queue.features.shape[0]
    return jnp.arange(size) >= size - queue.count
