"""BART noising functions (Lewis et al. 2019) as fixed-shape, jittable JAX ops.

Every function maps an int32[B, L] batch of rows laid out as ``tokens + eos + pads`` (no bos) to
a batch of the same shape and layout, so the result is again a valid encoder input:

- ``token_masking``: each text token becomes ``mask_id`` with probability ``rate``.
- ``token_deletion``: each text token is dropped with probability ``rate``; the rest shift left.
- ``text_infilling``: spans with Poisson(``poisson_lambda``) lengths are each replaced by ONE mask
  token; a 0-length span inserts a mask. About ``rate`` of the text tokens end up masked. Masks
  never touch; rows that insertions overflow are truncated to L, eos last.
- ``sentence_permutation``: the sentences of a row (runs ending in ``sentence_end_id``; the last
  may lack it, and then runs into whichever sentence follows it, as in fairseq) are shuffled.
- ``document_rotation``: the text is rotated so a uniformly chosen token starts it.
- ``noise``: a configured subset, in fairseq's ``DenoisingDataset`` order: permute, mask
  (infilling, token masking, token deletion), rotate.

Special tokens (pad, eos, bos) are never masked or deleted, and eos and pads stay at the end.

Why fixed shapes: the functions are meant to run inside the jitted train step on TPU, where every
array needs a static shape. So there are no per-example Python loops, host callbacks or
data-dependent shapes: random draws cover all L positions, lengths are masks, and compaction is a
cumsum + scatter (out-of-range writes dropped), reordering is a stable argsort, rotation a gather.
Rates and probabilities may be traced values; the token ids are static Python ints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

NOISE_ORDER = (
    "sentence_permutation",
    "text_infilling",
    "token_masking",
    "token_deletion",
    "document_rotation",
)


def is_text(tokens, pad_id, eos_id, bos_id):
    """Mask of the text tokens: everything but pad, eos and bos."""
    return (tokens != pad_id) & (tokens != eos_id) & (tokens != bos_id)


def _rows(tokens):
    return jnp.arange(tokens.shape[0])[:, None]


def _exclusive_cumsum(x):
    return jnp.cumsum(x, axis=1) - x


def token_masking(rng, tokens, rate, mask_id=4, *, pad_id=0, eos_id=3, bos_id=2):
    """Replace each text token by ``mask_id`` with probability ``rate``."""
    hit = is_text(tokens, pad_id, eos_id, bos_id) & (jax.random.uniform(rng, tokens.shape) < rate)
    return jnp.where(hit, jnp.asarray(mask_id, tokens.dtype), tokens)


def token_deletion(rng, tokens, rate, *, pad_id=0, eos_id=3, bos_id=2):
    """Delete each text token with probability ``rate``; survivors (and eos) shift left."""
    drop = is_text(tokens, pad_id, eos_id, bos_id) & (jax.random.uniform(rng, tokens.shape) < rate)
    keep = ~drop & (tokens != pad_id)
    # Cumsum-scatter compaction: O(L), order-preserving, fixed shape.
    pos = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, tokens.shape[1])
    return jnp.full_like(tokens, pad_id).at[_rows(tokens), pos].set(tokens, mode="drop")


def text_infilling(
    rng, tokens, rate, poisson_lambda=3.0, *, mask_id=4, pad_id=0, eos_id=3, bos_id=2
):
    """Replace Poisson(``poisson_lambda``)-long spans by one ``mask_id`` each (0-length: insert).

    The text is cut into "events" in parallel: with probability q a span of Poisson(lambda) tokens
    (replaced by one mask), then always one kept token. Starts are therefore exclusive cumsums of
    the event lengths, with no sequential sampling, and every mask stands for exactly one
    Poisson-length span: spans never overlap or touch, so two masks are never adjacent (fairseq
    lets spans merge, which skews the lengths). The masked fraction is q*lambda / (1 + q*lambda);
    q is solved from ``rate``, so rates above lambda / (1 + lambda) (0.75 for lambda=3) saturate.
    The first event is drawn from the stationary distribution (position 0 lies inside a span with
    probability ``rate``, the span's remainder then size-biased), so the expected masked fraction
    is ``rate`` for every row length, not just long ones; that first span may be cut at the start.
    Spans that reach the end of the text are cut there.

    Insertions can make a row longer than its input; the output is then truncated to L tokens
    with eos in the last slot (only near-full rows with several 0-length spans are affected).
    """
    batch, length = tokens.shape
    n = is_text(tokens, pad_id, eos_id, bos_id).sum(axis=1, keepdims=True)
    lam = jnp.asarray(poisson_lambda, jnp.float32)
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    q = jnp.clip(rate / (lam * (1.0 - rate)), 0.0, 1.0)
    # Span lengths 0..L-1 and ">= L" (covers any row); tails are lumped in the last bin so
    # the tables stay exact without renormalising.
    k = jnp.arange(length, dtype=jnp.float32)
    pmf = jnp.exp(k * jnp.log(lam) - lam - gammaln(k + 1.0))
    sf = 1.0 - jnp.cumsum(pmf) + pmf  # P(X >= k)
    pmf = jnp.append(pmf, 1.0 - pmf.sum())
    residual = jnp.append(sf[1:], lam - sf[1:].sum())  # P(rest of a span = j) * lambda
    # Event tables over {0: no span, x + 1: span of x tokens}, sampled by inverse CDF.
    table = jnp.concatenate([(1.0 - q)[None], q * pmf])
    first = jnp.concatenate([(1.0 - q * pmf[0])[None], q * pmf[:1], q * residual]) / (1 + q * lam)

    def draw(probs, u):
        cdf = jnp.cumsum(probs)
        return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), probs.shape[0] - 1)

    # L events suffice: each consumes at least one token.
    u = jax.random.uniform(rng, (batch, length))
    idx = jnp.concatenate([draw(first, u[:, :1]), draw(table, u[:, 1:])], axis=1)
    span = jnp.maximum(idx - 1, 0)
    start = _exclusive_cumsum(span + 1)
    kept = start + span  # the token that closes the event
    has_mask = (idx > 0) & (start < n)
    has_tok = kept < n
    n_out = has_mask.astype(jnp.int32) + has_tok
    out_pos = _exclusive_cumsum(n_out)
    rows = _rows(tokens)
    vals = jnp.take_along_axis(tokens, jnp.minimum(kept, length - 1), axis=1)
    out = jnp.full_like(tokens, pad_id)
    out = out.at[rows, jnp.where(has_mask, out_pos, length)].set(mask_id, mode="drop")
    out = out.at[rows, jnp.where(has_tok, out_pos + has_mask, length)].set(vals, mode="drop")
    end = jnp.minimum(n_out.sum(axis=1, keepdims=True), length - 1)
    return out.at[rows, end].set(eos_id)


def sentence_permutation(rng, tokens, sentence_end_id, *, prob=1.0, pad_id=0, eos_id=3, bos_id=2):
    """Shuffle each row's sentences uniformly (applied to a row with probability ``prob``)."""
    k_perm, k_apply = jax.random.split(rng)
    text = is_text(tokens, pad_id, eos_id, bos_id)
    is_end = text & (tokens == sentence_end_id)
    sentence = _exclusive_cumsum(is_end.astype(jnp.int32))
    # iid uniform key per sentence -> sorting by key is a uniform permutation; the stable sort
    # keeps each sentence's tokens in order, and the key 2 keeps eos and pads at the end.
    keys = jax.random.uniform(k_perm, tokens.shape)
    keys = jnp.where(text, jnp.take_along_axis(keys, sentence, axis=1), 2.0)
    order = jnp.argsort(keys, axis=1, stable=True)
    out = jnp.take_along_axis(tokens, order, axis=1)
    apply = jax.random.uniform(k_apply, (tokens.shape[0], 1)) < prob
    return jnp.where(apply, out, tokens)


def document_rotation(rng, tokens, *, prob=1.0, pad_id=0, eos_id=3, bos_id=2):
    """Rotate each row's text to start at a uniform token (with probability ``prob``)."""
    k_shift, k_apply = jax.random.split(rng)
    n = jnp.maximum(is_text(tokens, pad_id, eos_id, bos_id).sum(axis=1, keepdims=True), 1)
    shift = jax.random.randint(k_shift, n.shape, 0, n)
    shift = jnp.where(jax.random.uniform(k_apply, n.shape) < prob, shift, 0)
    i = jnp.arange(tokens.shape[1])
    return jnp.take_along_axis(tokens, jnp.where(i < n, (i + shift) % n, i), axis=1)


def noise(rng, tokens, spec, *, pad_id=0, eos_id=3, bos_id=2, mask_id=4, sentence_end_id=None):
    """Apply the noising functions named in ``spec`` in ``NOISE_ORDER``.

    ``spec`` maps names in ``NOISE_ORDER`` to rates (masking, deletion, infilling) or per-row
    probabilities (permutation, rotation; fairseq's permute ratio is a fraction of sentences
    instead); zero or missing entries are skipped, so the values must be static Python numbers.
    An optional ``"poisson_lambda"`` sets the infilling span mean (3). Each function gets
    its own key from ``rng``, so toggling one does not reshuffle the others.
    """
    unknown = set(spec) - set(NOISE_ORDER) - {"poisson_lambda"}
    if unknown:
        raise ValueError(f"unknown noise {sorted(unknown)}; expected some of {NOISE_ORDER}")
    if spec.get("sentence_permutation") and sentence_end_id is None:
        raise ValueError("sentence_permutation needs sentence_end_id")
    ids = dict(pad_id=pad_id, eos_id=eos_id, bos_id=bos_id)
    keys = dict(zip(NOISE_ORDER, jax.random.split(rng, len(NOISE_ORDER))))
    apply = {
        "sentence_permutation": lambda k, t, p: sentence_permutation(
            k, t, sentence_end_id, prob=p, **ids
        ),
        "text_infilling": lambda k, t, p: text_infilling(
            k, t, p, spec.get("poisson_lambda", 3.0), mask_id=mask_id, **ids
        ),
        "token_masking": lambda k, t, p: token_masking(k, t, p, mask_id, **ids),
        "token_deletion": lambda k, t, p: token_deletion(k, t, p, **ids),
        "document_rotation": lambda k, t, p: document_rotation(k, t, prob=p, **ids),
    }
    for name in NOISE_ORDER:
        if spec.get(name):
            tokens = apply[name](keys[name], tokens, spec[name])
    return tokens
