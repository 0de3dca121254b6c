"""The train step: a module-level pure function, jitted by the trainer with explicit shardings.

Three ways to get the gradient of one global batch:
- plain: one forward/backward over the batch;
- gradient accumulation (`accum_steps=k`): k micro-batches, gradients averaged. Exact only
  for losses that are means over examples (a contrastive loss sees k smaller batches);
- gradient caching (`cache_steps=k`, GradCache): for losses that couple examples only through
  embeddings. Embed every micro-batch without keeping activations, take the loss over the whole
  batch and its gradient with respect to the embeddings, then re-run each micro-batch under
  `vjp` with its slice of that gradient. The result is the full-batch gradient, with the
  activation memory of one micro-batch.
Micro-batch j takes rows j, j+k, ... so every device splits its own rows (no data moves).

Momentum models (ALBEF, BLIP: a `momentum` method) also see, beside their own outputs, the
momentum (EMA) copy's outputs `momentum/<key>` (no gradient), the feature queues
`queue/<key>` float[Q, D] oldest first with `queue/valid` bool[Q], and `step`; after the update
the momentum features of the global batch are pushed into the queues.

A step whose loss or gradients are not finite leaves parameters, optimizer, model state and
queues untouched and is counted (`nonfinite_total`, `nonfinite_run`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlpjax.train.momentum import ema_update, queue_ordered, queue_push, queue_valid
from vlpjax.train.state import TrainState


def objectives_loss(out, batch, objectives):
    """Sum of weighted objectives over model outputs. Returns (loss, metrics)."""
    total = 0.0
    metrics = {}
    for objective in objectives:
        loss, extra = objective.fn(out, batch)
        total = total + objective.weight * loss
        metrics[f"{objective.name}_loss"] = loss
        metrics.update({f"{objective.name}/{k}": v for k, v in extra.items()})
    metrics["loss"] = total
    return total, metrics


def apply_model(params, model_state, batch, rng, *, model, inputs, train=True):
    """Runs the model; returns (out, new model state) (model state: e.g. BatchNorm statistics)."""
    model_inputs = {key: batch[key] for key in inputs}
    variables = {"params": params, **model_state}
    if model_state:
        (_, out), new_state = model.apply(
            variables, **model_inputs, train=train, rngs={"dropout": rng}, mutable=list(model_state)
        )
        return out, new_state
    _, out = model.apply(variables, **model_inputs, train=train, rngs={"dropout": rng})
    return out, model_state


def uses_momentum(model) -> bool:
    return callable(getattr(model, "momentum", None))


def momentum_outputs(state: TrainState, batch, *, model, inputs) -> dict:
    """What a momentum model's objectives read beside its own outputs (see the module doc)."""
    if state.ema_params is None or not uses_momentum(model):
        return {}
    momentum = model.apply(
        {"params": state.ema_params, **state.model_state},
        **{key: batch[key] for key in inputs},
        method="momentum",
    )
    extras = {f"momentum/{k}": jax.lax.stop_gradient(v) for k, v in momentum.items()}
    if state.queues is not None:
        for key, queue in zip(model.queued_outputs, state.queues):
            extras[f"queue/{key}"] = queue_ordered(queue)
        extras["queue/valid"] = queue_valid(state.queues[0])
    extras["step"] = state.step
    return extras


def compute_loss(
    params, batch, rng, *, model, objectives, inputs, model_state=None, train=True, extras=None
):
    """Forward + objectives (which also see `extras`). Returns (loss, (metrics, new model state))."""
    out, new_state = apply_model(
        params, model_state or {}, batch, rng, model=model, inputs=inputs, train=train
    )
    loss, metrics = objectives_loss({**out, **(extras or {})}, batch, objectives)
    return loss, (metrics, new_state)


def micro_batches(tree, k: int):
    """[B, ...] -> [k, B/k, ...] where micro-batch j holds rows j, j+k, ..."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), tree)


def join_micro_batches(tree):
    """The inverse of `micro_batches`: [k, B/k, ...] -> [B, ...] in the original row order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def _accumulated_grads(state, batch, rng, k, grad_fn):
    micro = micro_batches(batch, k)

    def body(carry, xs):
        grads_sum, metrics_sum, model_state = carry
        index, micro_batch = xs
        (_, (m, model_state)), g = grad_fn(
            state.params, micro_batch, jax.random.fold_in(rng, index), model_state
        )
        return (
            jax.tree.map(jnp.add, grads_sum, g),
            jax.tree.map(jnp.add, metrics_sum, m),
            model_state,
        ), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(state.params, first, rng, state.model_state))
    (_, (metric_shapes, _)), grad_shapes = shapes
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)  # noqa: E731
    init = (zeros(grad_shapes), zeros(metric_shapes), state.model_state)
    (grads, metrics, model_state), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))
    grads, metrics = jax.tree.map(lambda x: x / k, (grads, metrics))
    return grads, metrics, model_state


def _cached_grads(state, batch, rng, k, *, model, objectives, inputs):
    """GradCache: full-batch gradient of a loss that couples examples only via `coupled` outputs."""
    coupled = model.coupled_outputs
    micro = micro_batches(batch, k)
    indices = jnp.arange(k)

    def embed(params, micro_batch, index):
        out, _ = apply_model(
            params, {}, micro_batch, jax.random.fold_in(rng, index), model=model, inputs=inputs
        )
        return {key: out[key] for key in coupled if key in out}

    # 1. Embeddings of every micro-batch; nothing is kept for a backward pass.
    stacked = jax.lax.map(lambda xs: embed(state.params, xs[1], xs[0]), (indices, micro))
    batched = {key: v.ndim > 1 for key, v in stacked.items()}  # per-example vs shared (scale)
    full = {key: join_micro_batches(v) if batched[key] else v[0] for key, v in stacked.items()}

    # 2. The loss over the whole batch and its gradient with respect to the embeddings.
    (_, metrics), d_full = jax.value_and_grad(
        lambda o: objectives_loss(o, batch, objectives), has_aux=True
    )(full)

    # 3. Each micro-batch again, under vjp, with its slice of that gradient. Shared outputs
    #    (the temperature) get 1/k of theirs from each, k times.
    d_micro = {
        key: micro_batches(d, k) if batched[key] else jnp.broadcast_to(d / k, (k, *d.shape))
        for key, d in d_full.items()
    }

    def body(grads_sum, xs):
        index, micro_batch, cotangent = xs
        _, vjp = jax.vjp(lambda p: embed(p, micro_batch, index), state.params)
        return jax.tree.map(jnp.add, grads_sum, vjp(cotangent)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, _ = jax.lax.scan(body, zeros, (indices, micro, d_micro))
    return grads, metrics, state.model_state


def train_step(
    state: TrainState,
    batch,
    *,
    model,
    objectives,
    inputs,
    tx,
    accum_steps: int = 1,
    cache_steps: int = 1,
    ema_decay: float = 0.0,
    transform=None,
):
    """One optimizer update. Returns (new state, metrics). `transform(rng, batch)` (a
    vlpjax.data.device_transforms function) prepares the model's inputs first."""
    rng = state.step_rng()
    if transform is not None:
        batch = transform(jax.random.fold_in(rng, 0x7A5C), batch)
    extras = momentum_outputs(state, batch, model=model, inputs=inputs)
    grad_fn = jax.value_and_grad(
        lambda p, b, r, s: compute_loss(
            p, b, r, model=model, objectives=objectives, inputs=inputs, model_state=s, extras=extras
        ),
        has_aux=True,
    )
    if cache_steps > 1:
        grads, metrics, model_state = _cached_grads(
            state, batch, rng, cache_steps, model=model, objectives=objectives, inputs=inputs
        )
    elif accum_steps > 1:
        grads, metrics, model_state = _accumulated_grads(state, batch, rng, accum_steps, grad_fn)
    else:
        (_, (metrics, model_state)), grads = grad_fn(state.params, batch, rng, state.model_state)

    finite = jnp.isfinite(metrics["loss"]) & jnp.all(
        jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    ema = state.ema_params
    if ema is not None:  # momentum (EMA) copy of the parameters: ALBEF/BLIP/MoCo style
        ema = keep(ema_update(ema, params, ema_decay), ema)
    queues = state.queues
    if queues is not None:  # the global batch's momentum features, after this step used them
        pushed = [
            queue_push(q, extras[f"momentum/{k}"]) for k, q in zip(model.queued_outputs, queues)
        ]
        queues = keep(tuple(pushed), queues)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        model_state=keep(model_state, state.model_state),
        ema_params=ema,
        queues=queues,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
    )
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["skipped_nonfinite"] = new_state.nonfinite_total
    metrics["nonfinite_run"] = new_state.nonfinite_run
    return new_state, metrics
