"""Text generation from a model's predict functions with vlpjax.decode.

A generating model exposes two methods:

  encode(**inputs) -> (encoded float[B, S, D] or None, valid bool[B, S] or None)
  decode_logits(tokens int[B, T], encoded, valid) -> float[B, T, vocab]

and a `decode` attribute: a clone with `decode=True` keeps a KV cache in the `cache` collection
(self-attention keys/values, the encoder's projected keys/values, the position). `cached=False`
decodes by re-running the whole prefix at every step: the reference that cached decoding must
equal token for token, and the baseline of `python -m vlpjax.bench decode`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.decode import DecodeConfig, decode, gather_rows


def cached_decoding(model, variables, encoded, valid, batch: int, max_length: int):
    """(step_fn, state, take_rows) over a preallocated cache of `max_length` positions. The call
    that sizes the cache also projects the encoder output's keys and values, once."""
    decoder = model.clone(decode=True)
    sizing = jnp.zeros((batch, max_length), jnp.int32)
    _, filled = decoder.apply(
        variables, sizing, encoded, valid, method="decode_logits", mutable=["cache"]
    )
    params = {k: v for k, v in variables.items() if k != "cache"}

    def step_fn(tokens, state):
        logits, updated = decoder.apply(
            {**params, "cache": state["cache"]},
            tokens[:, None],
            None,
            state["valid"],
            method="decode_logits",
            mutable=["cache"],
        )
        return logits[:, -1], {"cache": updated["cache"], "valid": state["valid"]}

    # Scanned layers stack the cache on a leading layer axis, so rows sit on axis 1.
    cache_axis = 1 if getattr(model, "scan", False) else 0

    def take_rows(state, rows):
        return {
            "cache": gather_rows(state["cache"], rows, cache_axis),
            "valid": None if state["valid"] is None else gather_rows(state["valid"], rows),
        }

    return step_fn, {"cache": filled["cache"], "valid": valid}, take_rows


def uncached_decoding(model, variables, encoded, valid, batch: int, max_length: int):
    """(step_fn, state, take_rows) that re-runs the decoder over the whole token buffer."""

    def step_fn(tokens, state):
        index = state["index"]
        buffer = jax.lax.dynamic_update_slice(state["tokens"], tokens[:, None], (0, index))
        logits = model.apply(
            variables, buffer, state["encoded"], state["valid"], method="decode_logits"
        )
        next_logits = jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
        return next_logits, {**state, "tokens": buffer, "index": index + 1}

    state = {
        # Not yet generated positions hold a non-pad id: causal attention never reads them,
        # and a pad there would only change which keys count as padding.
        "tokens": jnp.full((batch, max_length), 1, jnp.int32),
        "index": jnp.array(0, jnp.int32),
        "encoded": encoded,
        "valid": valid,
    }
    return step_fn, state, gather_rows


def generate(
    model,
    variables,
    inputs: dict,
    config: DecodeConfig,
    *,
    start_id: int,
    eos_id: int,
    pad_id: int = 0,
    cached: bool = True,
    rng=None,
):
    """Encodes `inputs` and decodes. Returns (tokens int32[B, max_length], scores float32[B])."""
    encoded, valid = model.apply(variables, **inputs, method="encode")
    batch = jax.tree.leaves(inputs)[0].shape[0]
    return decode_encoded(
        model,
        variables,
        encoded,
        valid,
        batch,
        config,
        start_id=start_id,
        eos_id=eos_id,
        pad_id=pad_id,
        cached=cached,
        rng=rng,
    )


def decode_encoded(
    model,
    variables,
    encoded,
    valid,
    batch: int,
    config: DecodeConfig,
    *,
    start_id: int,
    eos_id: int,
    pad_id: int = 0,
    cached: bool = True,
    rng=None,
):
    """Decodes `batch` rows from an encoder output (`encode`'s (encoded, valid))."""
    make = cached_decoding if cached else uncached_decoding
    step_fn, state, take_rows = make(model, variables, encoded, valid, batch, config.max_length)
    start = jnp.full((batch,), start_id, jnp.int32)
    return decode(
        step_fn, state, start, config, eos_id=eos_id, pad_id=pad_id, rng=rng, take_rows=take_rows
    )
