"""Decoding: cached == uncached (greedy, beam), beam(1) == greedy, beam search == exhaustive
search on a small Markov model, filters, and one compile per shape."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpjax.decode import DecodeConfig, decode, filter_logits
from vlpjax.models.encoder_decoder import EncoderDecoder
from vlpjax.train.generation import generate

EOS = 3


def tiny_model(scan=False):
    return EncoderDecoder(
        vocab_size=32,
        max_source_length=6,
        max_target_length=12,
        width=32,
        encoder_depth=2,
        decoder_depth=2,
        num_heads=4,
        mlp_dim=64,
        image_size=16,
        patch_size=4,
        scan=scan,
    )


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scanned"])
def model_and_inputs(request):
    model = tiny_model(scan=request.param)
    rng = np.random.default_rng(0)
    inputs = {
        "image": jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32),
        "source": jnp.asarray([[5, 6, 7, 3, 0, 0], [8, 3, 0, 0, 0, 0], [9, 10, 11, 12, 13, 3]]),
    }
    target = jnp.zeros((3, 12), jnp.int32)
    variables = model.init(jax.random.key(2), **inputs, target=target)
    # Sharpen the random output distribution so that decoding is not a coin toss.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 2.0 if "token_embed" in jax.tree_util.keystr(path) else x,
        variables["params"],
    )
    return model, {"params": params}, inputs


def run(model, variables, inputs, config, cached):
    fn = jax.jit(lambda v, i: generate(model, v, i, config, start_id=2, eos_id=EOS, cached=cached))
    return jax.device_get(fn(variables, inputs))


@pytest.mark.parametrize(
    "config",
    [
        DecodeConfig("greedy", max_length=10),
        DecodeConfig("beam", max_length=10, beam_size=3, length_penalty=0.6),
    ],
    ids=["greedy", "beam"],
)
def test_cached_equals_uncached(model_and_inputs, config):
    model, variables, inputs = model_and_inputs
    cached_tokens, cached_scores = run(model, variables, inputs, config, cached=True)
    tokens, scores = run(model, variables, inputs, config, cached=False)
    np.testing.assert_array_equal(cached_tokens, tokens)
    np.testing.assert_allclose(cached_scores, scores, rtol=1e-4, atol=1e-4)
    assert len({tuple(t) for t in tokens}) > 1  # the rows decode differently


def test_beam_of_one_is_greedy(model_and_inputs):
    model, variables, inputs = model_and_inputs
    greedy, greedy_scores = run(
        model, variables, inputs, DecodeConfig("greedy", max_length=10), True
    )
    beam, beam_scores = run(
        model, variables, inputs, DecodeConfig("beam", max_length=10, beam_size=1), True
    )
    np.testing.assert_array_equal(greedy, beam)
    np.testing.assert_allclose(greedy_scores, beam_scores, rtol=1e-5)


def test_top_k_one_sampling_is_greedy(model_and_inputs):
    model, variables, inputs = model_and_inputs
    greedy, _ = run(model, variables, inputs, DecodeConfig("greedy", max_length=10), True)
    fn = jax.jit(
        lambda v, i, r: generate(
            model,
            v,
            i,
            DecodeConfig("sample", max_length=10, top_k=1),
            start_id=2,
            eos_id=EOS,
            rng=r,
        )
    )
    sampled, _ = fn(variables, inputs, jax.random.key(5))
    np.testing.assert_array_equal(greedy, sampled)


def test_no_recompilation_for_the_same_shapes(model_and_inputs):
    model, variables, inputs = model_and_inputs
    config = DecodeConfig("beam", max_length=8, beam_size=2)
    fn = jax.jit(lambda v, i: generate(model, v, i, config, start_id=2, eos_id=EOS))
    fn(variables, inputs)
    other = {k: v[::-1] for k, v in inputs.items()}
    jax.block_until_ready(fn(variables, other))
    assert fn._cache_size() == 1


# A Markov "language model": the next-token distribution depends on the last token only, so
# every sequence's score can be enumerated.
VOCAB, LENGTH = 6, 4  # token 0 is pad: never generated


def markov_logits():
    rng = np.random.default_rng(3)
    return jnp.asarray(rng.normal(size=(VOCAB, VOCAB)) * 2.0, jnp.float32)


def markov_step(table):
    def step_fn(tokens, state):
        return table[tokens], state

    return step_fn


def exhaustive_best(table, start, alpha):
    logp = np.asarray(jax.nn.log_softmax(table.at[:, 0].set(-jnp.inf), axis=-1))  # no pad
    best, best_score = None, -np.inf
    for n in range(1, LENGTH + 1):
        for seq in itertools.product(range(1, VOCAB), repeat=n):
            # A hypothesis is finished at its first EOS, or unfinished at full length.
            if EOS in seq[:-1] or (seq[-1] != EOS and n < LENGTH):
                continue
            prev, total = start, 0.0
            for t in seq:
                total += logp[prev, t]
                prev = t
            score = total / ((5.0 + n) / 6.0) ** alpha
            if score > best_score:
                best, best_score = seq, score
    return best, best_score


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize("start", [1, 2, 5])
def test_wide_beam_finds_the_best_sequence(alpha, start):
    table = markov_logits()
    config = DecodeConfig(
        "beam", max_length=LENGTH, beam_size=(VOCAB - 1) ** LENGTH, length_penalty=alpha
    )
    tokens, scores = decode(
        markov_step(table), {"dummy": jnp.zeros((1, 1))}, jnp.array([start]), config, eos_id=EOS
    )
    best, best_score = exhaustive_best(table, start, alpha)
    got = [int(t) for t in tokens[0]]
    assert tuple(got[: len(best)]) == best and all(t == 0 for t in got[len(best) :])
    np.testing.assert_allclose(float(scores[0]), best_score, rtol=1e-5)


def test_greedy_stops_at_eos_and_pads():
    table = jnp.full((VOCAB, VOCAB), -5.0).at[:, EOS].set(5.0)  # EOS is always the best token
    tokens, _ = decode(
        markov_step(table), {}, jnp.array([1, 2]), DecodeConfig(max_length=4), eos_id=EOS
    )
    np.testing.assert_array_equal(tokens, [[EOS, 0, 0, 0], [EOS, 0, 0, 0]])


def test_filters_keep_the_top_k_and_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.7)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.71)) == [True, True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.1)) == [True, False, False, False, False]


def test_sampling_follows_the_filtered_distribution():
    table = jnp.log(jnp.array([[0.05, 0.5, 0.2, 0.15, 0.1, 1e-9]] * VOCAB))
    config = DecodeConfig("sample", max_length=1, top_p=0.8)
    starts = jnp.ones((20000,), jnp.int32)
    tokens, _ = jax.jit(lambda r: decode(markov_step(table), {}, starts, config, eos_id=99, rng=r))(
        jax.random.key(0)
    )
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=VOCAB) / len(starts)
    expected = np.array([0, 0.5, 0.2, 0.15, 0, 0]) / 0.85  # pad banned, then the nucleus
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="strategy 'beem'"):
        DecodeConfig("beem")
