"""BART noising: statistics and invariants on many random rows (tokens + eos + pads)."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vlpjax.data import noising as nz

PAD, BOS, EOS, MASK, DOT = 0, 2, 3, 4, 5


def _batch(seed, batch=4096, length=32, max_len=None, distinct=False, dot_rate=0.0):
    """Rows of random text (ids 5..255, or distinct ids per row) of varying length, eos, pads."""
    rs = np.random.default_rng(seed)
    max_len = length - 1 if max_len is None else max_len
    n = rs.integers(1, max_len + 1, batch)
    if distinct:
        text = np.argsort(rs.random((batch, 251)), axis=1)[:, :length] + 5
    else:
        text = rs.integers(6 if dot_rate else 5, 256, (batch, length))
    if dot_rate:
        text = np.where(rs.random(text.shape) < dot_rate, DOT, text)
    i = np.arange(length)
    tokens = np.where(i < n[:, None], text, PAD)
    tokens[np.arange(batch), n] = EOS
    return tokens.astype(np.int32), n


def _run(fn, rng, tokens, *args, **kw):
    out = fn(jax.random.key(rng), jnp.asarray(tokens), *args, **kw)
    assert out.shape == tokens.shape and out.dtype == jnp.int32
    return np.asarray(out)


def _assert_layout(out):
    """Every row is text, one eos, then pads."""
    text = (out != PAD) & (out != EOS) & (out != BOS)
    n = text.sum(1)
    i = np.arange(out.shape[1])
    assert (text == (i < n[:, None])).all()
    assert (out[np.arange(len(out)), n] == EOS).all()
    assert (out[i > n[:, None]] == PAD).all()
    return n


def _close(observed, expected, se, k=4.0):
    assert abs(observed - expected) < k * se, (observed, expected, se)


def _is_subsequence(sub, seq):
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


def test_token_masking():
    tokens, n = _batch(0)
    rate = 0.15
    out = _run(nz.token_masking, 1, tokens, rate)
    _assert_layout(out)
    text = tokens >= 5
    hit = out != tokens
    assert (out[hit] == MASK).all() and text[hit].all()  # only text changes, only to mask
    frac = hit.sum() / text.sum()
    _close(frac, rate, math.sqrt(rate * (1 - rate) / text.sum()))
    assert (_run(nz.token_masking, 1, tokens, 0.0) == tokens).all()
    assert (_run(nz.token_masking, 1, tokens, 1.0)[text] == MASK).all()
    print(f"masking: fraction {frac:.4f} (rate {rate})")


def test_token_deletion():
    tokens, n = _batch(2)
    rate = 0.2
    out = _run(nz.token_deletion, 3, tokens, rate)
    m = _assert_layout(out)
    assert all(_is_subsequence(o[:k], t[:j]) for o, k, t, j in zip(out, m, tokens, n))
    frac = 1 - m.sum() / n.sum()
    _close(frac, rate, math.sqrt(rate * (1 - rate) / n.sum()))
    assert (_run(nz.token_deletion, 3, tokens, 0.0) == tokens).all()
    assert (_assert_layout(_run(nz.token_deletion, 3, tokens, 1.0)) == 0).all()
    print(f"deletion: fraction {frac:.4f} (rate {rate})")


def _spans(out, tokens, n):
    """Per mask: (row, start in the input, covered input tokens, row length); checks the text."""
    spans = []
    for b in range(len(out)):
        where = {t: i for i, t in enumerate(tokens[b, : n[b]])}
        row = out[b][(out[b] != PAD) & (out[b] != EOS)]
        assert not ((row[1:] == MASK) & (row[:-1] == MASK)).any()  # masks never touch
        prev = -1  # input index of the last kept token
        for j, t in enumerate(row):
            if t != MASK:
                assert where[t] > prev  # kept text in order...
                assert where[t] == prev + 1 or row[j - 1] == MASK  # ...and only spans dropped
                prev = where[t]
                continue
            nxt = row[j + 1] if j + 1 < len(row) else None
            spans.append((b, prev + 1, (where[nxt] if nxt is not None else n[b]) - prev - 1, n[b]))
        if not len(row) or row[-1] != MASK:
            assert prev == n[b] - 1  # the tail after the last span is kept
    return np.array(spans)


def test_text_infilling():
    # Distinct ids so each output token maps back to its input position; rows short of L - 5
    # so insertions (practically) never truncate.
    tokens, n = _batch(4, batch=8192, length=64, max_len=58, distinct=True)
    rate, lam = 0.3, 3.0
    out = _run(nz.text_infilling, 5, tokens, rate, lam)
    _assert_layout(out)
    spans = _spans(out, tokens, n)
    masked = np.bincount(spans[:, 0], spans[:, 2], minlength=len(n))
    frac = masked.sum() / n.sum()
    # Per-row masked counts are span-correlated: use their own spread for the standard error.
    se = np.std(masked - rate * n) / (np.sqrt(len(n)) * n.mean())
    _close(frac, rate, se)
    # Span lengths: skip the first span (it may start before the row) and spans starting within
    # 12 tokens of the end (a selection that does not depend on the span's own length).
    lengths = spans[(spans[:, 1] > 0) & (spans[:, 3] - spans[:, 1] > 12), 2]
    _close(lengths.mean(), lam, math.sqrt(lam / len(lengths)))
    observed = np.bincount(np.minimum(lengths, 9), minlength=10)
    pmf = stats.poisson.pmf(np.arange(9), lam)
    expected = len(lengths) * np.append(pmf, 1 - pmf.sum())
    chi2 = ((observed - expected) ** 2 / expected).sum()
    p = stats.chi2.sf(chi2, 9)
    assert p > 1e-3, (observed, expected.round(1))
    assert (spans[:, 2] == 0).any()  # 0-length spans insert a mask
    print(
        f"infilling: fraction {frac:.4f}±{se:.4f} (rate {rate}); {len(lengths)} spans, "
        f"mean length {lengths.mean():.3f}, chi2 {chi2:.1f} (9 dof, p={p:.2f}), "
        f"observed {observed.tolist()} expected {expected.round(0).astype(int).tolist()}"
    )


def test_text_infilling_edges():
    tokens, n = _batch(6, length=32, distinct=True)
    assert (_run(nz.text_infilling, 7, tokens, 0.0) == tokens).all()
    # lambda ~ 0 and a high rate: a mask inserted before nearly every token, so rows overflow and
    # are truncated at L with eos in the last slot, the kept text still an in-order prefix.
    out = _run(nz.text_infilling, 7, tokens, 0.5, 1e-3)
    m = _assert_layout(out)
    full = m == out.shape[1] - 1
    assert full.mean() > 0.4
    assert all(_is_subsequence(o[:k][o[:k] != MASK], t) for o, t, k in zip(out, tokens, m))
    # The rate saturates at lambda / (1 + lambda) rather than exceeding it.
    tokens, n = _batch(8, batch=1024, length=64, max_len=58, distinct=True)
    spans = _spans(_run(nz.text_infilling, 9, tokens, 1.0), tokens, n)
    _close(spans[:, 2].sum() / n.sum(), 0.75, 0.005)


def _text(row):
    return tuple(row[(row != PAD) & (row != EOS)].tolist())


def _sentences(row):
    text = np.array(_text(row))
    return [tuple(s) for s in np.split(text, np.flatnonzero(text == DOT) + 1) if len(s)]


def _concat_of(text, sents):
    """Whether ``text`` is the concatenation of ``sents`` in some order."""
    if not sents:
        return not text
    return any(
        text[: len(s)] == s and _concat_of(text[len(s) :], sents[:i] + sents[i + 1 :])
        for i, s in enumerate(sents)
    )


def test_sentence_permutation():
    tokens, n = _batch(10, dot_rate=0.2)
    out = _run(nz.sentence_permutation, 11, tokens, DOT)
    assert (_assert_layout(out) == n).all()
    assert all(_concat_of(_text(o), _sentences(t)) for o, t in zip(out, tokens))
    assert (out != tokens).any(1).mean() > 0.5
    # One 3-sentence row (the last without its '.') repeated: each order ~1/6 of the time.
    row = [10, 11, DOT, 20, DOT, 30, 31, EOS, PAD]
    reps = np.tile(np.array(row, np.int32), (6000, 1))
    out = _run(nz.sentence_permutation, 12, reps, DOT)
    sents = [(10, 11, DOT), (20, DOT), (30, 31)]
    perms = {sum(p, ()): i for i, p in enumerate(itertools.permutations(sents))}
    counts = np.bincount([perms[tuple(o[:7])] for o in out], minlength=6)
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert stats.chi2.sf(chi2, 5) > 1e-3, counts
    changed = (_run(nz.sentence_permutation, 12, reps, DOT, prob=0.5) != reps).any(1).mean()
    _close(changed, 0.5 * 5 / 6, math.sqrt(0.25 / 6000))
    print(f"permutation: counts {counts.tolist()} (expect 1000 each), chi2 {chi2:.1f} (5 dof)")


def test_document_rotation():
    tokens, n = _batch(13, distinct=True)
    out = _run(nz.document_rotation, 14, tokens)
    assert (_assert_layout(out) == n).all()
    shift = np.array([np.flatnonzero(t[:k] == o[0])[0] for o, t, k in zip(out, tokens, n)])
    assert all((o[:k] == np.roll(t[:k], -s)).all() for o, t, k, s in zip(out, tokens, n, shift))
    # Start uniform over the n positions: chi-square pooled over the (length, start) cells.
    chi2, dof = 0.0, 0
    for k in np.unique(n[n > 1]):
        counts = np.bincount(shift[n == k], minlength=k)
        chi2 += ((counts - counts.mean()) ** 2 / counts.mean()).sum()
        dof += k - 1
    p = stats.chi2.sf(chi2, dof)
    assert p > 1e-3
    assert (_run(nz.document_rotation, 14, tokens, prob=0.0) == tokens).all()
    print(f"rotation: chi2 {chi2:.0f} on {dof} dof (p={p:.2f})")


SPEC = {
    "token_masking": 0.1,
    "token_deletion": 0.1,
    "text_infilling": 0.3,
    "sentence_permutation": 1.0,
    "document_rotation": 0.5,
}


@pytest.mark.parametrize(
    "fn",
    [
        functools.partial(nz.token_masking, rate=0.3),
        functools.partial(nz.token_deletion, rate=0.3),
        functools.partial(nz.text_infilling, rate=0.3),
        functools.partial(nz.sentence_permutation, sentence_end_id=DOT),
        nz.document_rotation,
        functools.partial(nz.noise, spec=SPEC, sentence_end_id=DOT),
    ],
    ids=["masking", "deletion", "infilling", "permutation", "rotation", "noise"],
)
def test_jit_deterministic(fn):
    tokens = jnp.asarray(_batch(15, batch=64, dot_rate=0.2)[0])
    key = jax.random.key(0)
    out = jax.jit(fn)(key, tokens)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert (out == fn(key, tokens)).all() and (out == jax.jit(fn)(key, tokens)).all()
    assert (out != jax.jit(fn)(jax.random.key(1), tokens)).any()
    _assert_layout(np.asarray(out))


def test_traced_rate():
    tokens = jnp.asarray(_batch(16, batch=64)[0])
    f = jax.jit(nz.text_infilling)
    assert (
        f(jax.random.key(0), tokens, 0.3) == nz.text_infilling(jax.random.key(0), tokens, 0.3)
    ).all()
    assert (f(jax.random.key(0), tokens, 0.0) == tokens).all()


def test_noise():
    tokens, n = _batch(17, dot_rate=0.2)
    key = jax.random.key(0)
    out = np.asarray(nz.noise(key, jnp.asarray(tokens), SPEC, sentence_end_id=DOT))
    _assert_layout(out)
    assert (out == MASK).any() and (nz.noise(key, tokens, {}) == tokens).all()
    # Only permutation: each function has its own key, the others being off changes nothing.
    perm = nz.noise(key, tokens, {"sentence_permutation": 1.0}, sentence_end_id=DOT)
    alone = nz.sentence_permutation(jax.random.split(key, 5)[0], tokens, DOT)
    assert (perm == alone).all()
    with pytest.raises(ValueError, match="sentence_end_id"):
        nz.noise(key, tokens, {"sentence_permutation": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        nz.noise(key, tokens, {"span_masking": 0.3})
