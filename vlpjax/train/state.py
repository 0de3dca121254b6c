"""The train state: everything a step reads and writes, saved whole in a checkpoint."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32[]
    params: Any
    opt_state: Any
    rng: jax.Array  # base key data; step s uses fold_in(rng, s), so resuming needs nothing else
    nonfinite_total: jax.Array  # int32[]: skipped steps so far
    nonfinite_run: jax.Array  # int32[]: consecutive skipped steps ending at `step`
    model_state: Any = struct.field(default_factory=dict)  # non-trained variables (batch_stats)
    ema_params: Any = None  # momentum copy of params (when config.ema_decay > 0)
    # Feature queues (vlpjax.train.momentum.Queue), one per `model.queued_outputs` (queue_size > 0)
    queues: Any = None

    @classmethod
    def create(cls, params, tx, rng, model_state=None, ema: bool = False, queues=None):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(rng),
            nonfinite_total=jnp.zeros((), jnp.int32),
            nonfinite_run=jnp.zeros((), jnp.int32),
            model_state=model_state or {},
            ema_params=jax.tree.map(jnp.copy, params) if ema else None,
            queues=queues,
        )

    def step_rng(self):
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def variables(self) -> dict:
        """What `model.apply` takes: params plus any model state."""
        return {"params": self.params, **self.model_state}
