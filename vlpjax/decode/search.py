"""Greedy, sampling and beam-search decoding, each one `lax.while_loop` over a step function.

The model side is a step function and a state:

    step_fn(tokens int32[N], state) -> (logits float[N, V], state)

`state` holds whatever the model needs to continue a row: a preallocated KV cache (cached
decoding), or the whole token buffer (uncached decoding, the reference). Beam search keeps
`N = B * beam_size` rows and moves state between rows with `take_rows(state, rows int32[N])`;
that is the only thing it needs to know about the state's layout.

Every strategy returns `tokens int32[B, max_length]` (the generated tokens after the start
token; after an EOS only `pad_id`) and `scores float32[B]` (summed log-probabilities; for beam
search, divided by the length penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

STRATEGIES = ("greedy", "sample", "beam")
NEG_INF = -1.0e9  # finite, so that -inf - -inf never makes a NaN in the score arithmetic


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode. `length_penalty` is GNMT's alpha: scores / ((5 + length) / 6) ** alpha."""

    strategy: str = "greedy"
    max_length: int = 32
    beam_size: int = 4
    length_penalty: float = 0.0
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decode strategy '{self.strategy}' is not one of {STRATEGIES}")
        if self.max_length < 1 or self.beam_size < 1:
            raise ValueError(
                f"decode needs max_length >= 1 and beam_size >= 1, got {self.max_length}, {self.beam_size}"
            )
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0.0:
            raise ValueError(
                f"decode needs 0 < top_p <= 1 and temperature > 0, got {self.top_p}, {self.temperature}"
            )


def gather_rows(tree, rows, batch_axis: int = 0):
    """`take_rows` for states whose arrays all carry the rows on `batch_axis`; arrays with no
    such axis (a scalar cache index, or one per scanned layer) are shared and kept."""

    return jax.tree.map(
        lambda x: jnp.take(x, rows, axis=batch_axis) if x.ndim > batch_axis else x, tree
    )


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Sets logits outside the top-k and outside the nucleus (smallest set with mass >= top_p)
    to -inf. logits: float[N, V]."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, -1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token if the mass before it is < top_p (the first token is always kept).
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _sequential(step_fn, state, start_tokens, config, eos_id, pad_id, rng):
    """Greedy (argmax) or sampling: one token per row per iteration."""
    batch = start_tokens.shape[0]
    sample = config.strategy == "sample"

    def cond(carry):
        i, _, _, done, _, _, _ = carry
        return (i < config.max_length) & ~jnp.all(done)

    def body(carry):
        i, tokens, last, done, scores, state, rng = carry
        logits, state = step_fn(last, state)
        logits = logits.astype(jnp.float32)
        if sample:
            rng, key = jax.random.split(rng)
            filtered = filter_logits(logits / config.temperature, config.top_k, config.top_p)
            chosen = jax.random.categorical(key, filtered, axis=-1)
            logprobs = jax.nn.log_softmax(filtered, axis=-1)
        else:
            chosen = jnp.argmax(logits, axis=-1)
            logprobs = jax.nn.log_softmax(logits, axis=-1)
        chosen = chosen.astype(jnp.int32)
        step_score = jnp.take_along_axis(logprobs, chosen[:, None], -1)[:, 0]
        scores = scores + jnp.where(done, 0.0, step_score)
        chosen = jnp.where(done, pad_id, chosen)
        tokens = jax.lax.dynamic_update_slice(tokens, chosen[:, None], (0, i))
        done = done | (chosen == eos_id)
        return i + 1, tokens, chosen, done, scores, state, rng

    init = (
        jnp.array(0, jnp.int32),
        jnp.full((batch, config.max_length), pad_id, jnp.int32),
        start_tokens.astype(jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.float32),
        state,
        rng if rng is not None else jax.random.key(0),
    )
    _, tokens, _, _, scores, _, _ = jax.lax.while_loop(cond, body, init)
    return tokens, scores


def _length_penalty(length, alpha: float):
    return ((5.0 + length) / 6.0) ** alpha


def _beam(step_fn, state, start_tokens, config, eos_id, pad_id, take_rows):
    """Beam search: keeps `beam_size` live hypotheses per example and the `beam_size` best
    finished ones; stops when no live hypothesis can still beat the worst finished one."""
    batch, k, length = start_tokens.shape[0], config.beam_size, config.max_length
    alpha = config.length_penalty
    rows = jnp.repeat(jnp.arange(batch), k)
    state = take_rows(state, rows)  # every example's state copied to its k beams

    def cond(carry):
        i, alive_scores, _, finished_scores, _, _, _ = carry
        # The best a live beam can reach: its score now, at the kindest length penalty.
        best_alive = alive_scores[:, 0] / _length_penalty(length, alpha)
        worst_finished = jnp.min(finished_scores, axis=1)
        can_improve = jnp.any(best_alive > worst_finished) if alpha >= 0 else True
        return (i < length) & can_improve

    def body(carry):
        i, alive_scores, alive_tokens, finished_scores, finished_tokens, last, state = carry
        logits, state = step_fn(last, state)
        vocab = logits.shape[-1]
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        candidates = (alive_scores[:, :, None] + logprobs).reshape(batch, k * vocab)
        # 2k candidates: even if k of them end in EOS, k live ones remain.
        top_scores, top_ids = jax.lax.top_k(candidates, 2 * k)
        top_beams, top_tokens = top_ids // vocab, (top_ids % vocab).astype(jnp.int32)
        top_seqs = jnp.take_along_axis(alive_tokens, top_beams[:, :, None], axis=1)
        top_seqs = jax.lax.dynamic_update_slice(top_seqs, top_tokens[:, :, None], (0, 0, i))
        ended = top_tokens == eos_id

        # Live beams: the best k candidates that did not end; their state follows them.
        live_scores, live_pick = jax.lax.top_k(jnp.where(ended, NEG_INF, top_scores), k)
        new_alive_tokens = jnp.take_along_axis(top_seqs, live_pick[:, :, None], axis=1)
        source_beam = jnp.take_along_axis(top_beams, live_pick, axis=1)
        state = take_rows(state, (jnp.arange(batch)[:, None] * k + source_beam).reshape(-1))
        last = jnp.take_along_axis(top_tokens, live_pick, axis=1).reshape(-1)

        # Finished: merge the candidates that ended with the finished so far, keep the best k.
        ended_scores = jnp.where(ended, top_scores / _length_penalty(i + 1.0, alpha), NEG_INF)
        merged_scores = jnp.concatenate([finished_scores, ended_scores], axis=1)
        merged_tokens = jnp.concatenate([finished_tokens, top_seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(merged_scores, k)
        finished_tokens = jnp.take_along_axis(merged_tokens, keep[:, :, None], axis=1)
        return i + 1, live_scores, new_alive_tokens, finished_scores, finished_tokens, last, state

    alive_scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    empty = jnp.full((batch, k, length), pad_id, jnp.int32)
    init = (
        jnp.array(0, jnp.int32),
        alive_scores,
        empty,
        jnp.full((batch, k), NEG_INF, jnp.float32),
        empty,
        jnp.repeat(start_tokens.astype(jnp.int32), k),
        state,
    )
    _, alive_scores, alive_tokens, finished_scores, finished_tokens, _, _ = jax.lax.while_loop(
        cond, body, init
    )
    # A live hypothesis that reached max_length unfinished competes at full length (after an
    # early stop none of them can win).
    alive_final = alive_scores[:, 0] / _length_penalty(length, alpha)
    use_alive = alive_final > finished_scores[:, 0]
    tokens = jnp.where(use_alive[:, None], alive_tokens[:, 0], finished_tokens[:, 0])
    scores = jnp.where(use_alive, alive_final, finished_scores[:, 0])
    return tokens, scores


def decode(
    step_fn,
    state,
    start_tokens,
    config: DecodeConfig,
    *,
    eos_id: int,
    pad_id: int = 0,
    rng=None,
    take_rows=gather_rows,
):
    """Decodes from `start_tokens` int32[B] (each row's last given token); `pad_id` is never
    generated. Returns
    (tokens int32[B, config.max_length], scores float32[B]). Jit the caller, not this: the whole
    loop is one `lax.while_loop`, so one compiled program serves every call of the same shapes."""
    model_step = step_fn

    def step_fn(tokens, state):  # pad only fills rows after their EOS; never generated
        logits, state = model_step(tokens, state)
        return logits.at[:, pad_id].set(-jnp.inf), state

    if config.strategy == "beam":
        return _beam(step_fn, state, start_tokens, config, eos_id, pad_id, take_rows)
    if config.strategy == "sample" and rng is None:
        raise ValueError("decode strategy 'sample' needs an rng")
    return _sequential(step_fn, state, start_tokens, config, eos_id, pad_id, rng)
