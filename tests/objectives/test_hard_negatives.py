"""ITM hard negatives: the positives mask and sampling weights against plain numpy loops; draws
over a sharded global batch (8 devices) follow softmax(sim) with every positive excluded,
duplicates included; a row with no negative falls back to a uniform non-self row marked invalid;
the sharded draw equals the single-device one exactly; row gathers and the ITM loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpjax.layers.hard_negatives import (
    HardNegatives,
    gather_rows,
    hard_negative_weights,
    itm_pairs,
    itm_targets,
    positives_mask,
    sample_hard_negatives,
)
from vlpjax.objectives.matching import itm_loss
from vlpjax.sharding import batch_sharding, make_mesh
from vlpjax.utils.errors import VlpError

B = 16


def batch_with_duplicates(seed=0):
    """Rows 1, 3, 15 show one image and rows 5, 11 another; captions 7 == 9 and 2 == 13 on
    different images. Sims spread over about [-3, 3] so that no probability is tiny."""
    rng = np.random.default_rng(seed)
    image_ids = np.array([0, 1, 2, 1, 4, 5, 6, 7, 8, 9, 10, 5, 12, 13, 14, 1], np.int32)
    tokens = rng.integers(1, 50, size=(B, 6)).astype(np.int32)
    tokens[9], tokens[13] = tokens[7], tokens[2]
    sim_i2t = rng.uniform(-3, 3, size=(B, B)).astype(np.float32)
    sim_t2i = rng.uniform(-3, 3, size=(B, B)).astype(np.float32)
    return sim_i2t, sim_t2i, image_ids, tokens


def batch_with_one_row_all_positive(seed=1):
    """Row 0 shares its image with rows 1-7 and its caption with rows 8-15: it has no negative.
    Every other row has some (rows 1-7 vs 8-15)."""
    sim_i2t, sim_t2i, _, tokens = batch_with_duplicates(seed)
    image_ids = np.array([0] * 8 + list(range(8, 16)), np.int32)
    tokens[8:] = tokens[0]
    return sim_i2t, sim_t2i, image_ids, tokens


BATCHES = {
    "duplicates": batch_with_duplicates,
    "one_row_all_positive": batch_with_one_row_all_positive,
}


def numpy_positives(image_ids, tokens):
    positives = np.zeros((B, B), bool)
    for r in range(B):
        for c in range(B):
            same_caption = all(tokens[r] == tokens[c])
            positives[r, c] = r == c or image_ids[r] == image_ids[c] or same_caption
    return positives


def numpy_weights(sim, positives):
    """Row r: exp(sim) over its non-positive columns, normalised; all 0 when there are none."""
    weights = np.zeros((B, B))
    for r in range(B):
        for c in range(B):
            if not positives[r, c]:
                weights[r, c] = np.exp(float(sim[r, c]))
        if weights[r].sum() > 0:
            weights[r] /= weights[r].sum()
    return weights


@pytest.mark.parametrize("name", list(BATCHES))
def test_positives_and_weights_match_numpy_loops(name):
    sim_i2t, sim_t2i, image_ids, tokens = BATCHES[name]()
    positives = numpy_positives(image_ids, tokens)
    np.testing.assert_array_equal(positives_mask(B, image_ids, tokens), positives)
    rows = jnp.array([3, 9])
    np.testing.assert_array_equal(positives_mask(B, image_ids, tokens, rows), positives[[3, 9]])
    np.testing.assert_array_equal(positives_mask(B), np.eye(B, dtype=bool))
    w_i2t, w_t2i = hard_negative_weights(sim_i2t, sim_t2i, image_ids, tokens)
    np.testing.assert_allclose(w_i2t, numpy_weights(sim_i2t, positives), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w_t2i, numpy_weights(sim_t2i, positives), rtol=1e-5, atol=1e-7)


def _sharded(mesh, sim_i2t, sim_t2i, image_ids, tokens):
    return (
        jax.device_put(sim_i2t, batch_sharding(mesh, 2)),
        jax.device_put(sim_t2i, batch_sharding(mesh, 2)),
        jax.device_put(image_ids, batch_sharding(mesh, 1)),
        jax.device_put(tokens, batch_sharding(mesh, 2)),
    )


def _frequencies(index):
    """int[draws, B] -> float[B, B]: how often row r drew column c."""
    counts = np.zeros((B, B))
    for r in range(B):
        counts[r] = np.bincount(index[:, r], minlength=B)
    return counts / len(index)


@functools.cache
def many_draws(mesh):
    """A jitted sampler over a batch of keys, compiled once per mesh for every test batch."""

    def sample(key, sim_i2t, sim_t2i, image_ids, tokens):
        return sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids, tokens, mesh=mesh)

    return jax.jit(jax.vmap(sample, in_axes=(0, None, None, None, None)))


@pytest.mark.parametrize("name", list(BATCHES))
def test_draws_follow_the_masked_softmax_on_8_devices(name):
    """20k draws (one key each) on the 4x2 mesh. Each cell's frequency is within 5 binomial
    standard deviations, 5 sqrt(p (1 - p) / N) + 1 / N, of its probability: numpy_weights for rows
    with a negative, 1/15 on every non-self column for a row without. Positives (and, for a row
    without negatives, itself) are never drawn."""
    draws = 20_000
    data = BATCHES[name]()
    mesh = make_mesh({"data": 4, "fsdp": 2})
    positives = numpy_positives(data[2], data[3])
    keys = jax.random.split(jax.random.key(0), draws)
    negatives = jax.device_get(many_draws(mesh)(keys, *_sharded(mesh, *data)))
    valid = ~positives.all(1)
    assert valid.sum() == (B if name == "duplicates" else B - 1)
    assert (negatives.valid == valid[None, :]).all()
    fallback = (1 - np.eye(B)) / (B - 1)
    for sim, index in ((data[0], negatives.text_index), (data[1], negatives.image_index)):
        want = np.where(valid[:, None], numpy_weights(sim, positives), fallback)
        got = _frequencies(index)
        tolerance = 5 * np.sqrt(want * (1 - want) / draws) + 1 / draws
        assert (np.abs(got - want) <= tolerance).all(), np.abs(got - want).max()
        assert (got[want == 0] == 0).all()  # positives never drawn


MESHES = {
    "2": (2, {"data": -1}),
    "8=4x2": (8, {"data": 4, "fsdp": 2}),
    "8=2x2x2": (8, {"data": 2, "fsdp": 2, "tensor": 2}),
}
EQUALITY_KEYS = (0, 1, 2)


def draws_with_and_without_ids(mesh, sim_i2t, sim_t2i, image_ids, tokens):
    """[with ids and tokens, with neither] for each of EQUALITY_KEYS, one compile."""

    @jax.jit
    def both(key, sim_i2t, sim_t2i, image_ids, tokens):
        return [
            sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids, tokens, mesh=mesh),
            sample_hard_negatives(key, sim_i2t, sim_t2i, mesh=mesh),
        ]

    args = (sim_i2t, sim_t2i, image_ids, tokens)
    return [both(jax.random.key(seed), *args) for seed in EQUALITY_KEYS]


@pytest.fixture(scope="module")
def single_device_draws():
    return jax.device_get(draws_with_and_without_ids(None, *batch_with_one_row_all_positive()))


@pytest.mark.parametrize("devices", list(MESHES))
def test_sharded_draw_equals_single_device(devices, single_device_draws):
    """Keys fold in the global row, so every mesh draws exactly what one device draws, with and
    without ids and tokens, for 3 keys; the indices stay split over the batch axes."""
    count, sizes = MESHES[devices]
    mesh = make_mesh(sizes, jax.devices()[:count])
    results = draws_with_and_without_ids(mesh, *_sharded(mesh, *batch_with_one_row_all_positive()))
    assert results[0][0].text_index.sharding.is_equivalent_to(batch_sharding(mesh, 1), 1)
    got, want = jax.device_get(results), single_device_draws
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)
    assert not (want[0][0].text_index == want[1][0].text_index).all()  # keys matter


def test_gather_rows_values_grads_and_itm_pairs():
    """Sharded gathers equal numpy indexing; the gradient scatters back to the source rows, as
    the plain jnp gather's does; itm_pairs stacks (pos, neg_img, neg_txt)."""
    mesh = make_mesh({"data": 4, "fsdp": 2})
    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, 3, 2)).astype(np.float32)
    index = rng.integers(0, B, size=B).astype(np.int32)
    weights = rng.normal(size=(B, 3, 2)).astype(np.float32)

    def weighted(mesh):
        return lambda a, i: (gather_rows(a, i, mesh=mesh) * weights).sum()

    sharded = (
        jax.device_put(x, batch_sharding(mesh, 3)),
        jax.device_put(index, batch_sharding(mesh)),
    )
    got = jax.jit(lambda a, i: gather_rows(a, i, mesh=mesh))(*sharded)
    np.testing.assert_array_equal(got, x[index])
    got_grad = jax.jit(jax.grad(weighted(mesh)))(*sharded)
    want_grad = np.zeros_like(x)
    for r in range(B):
        want_grad[index[r]] += weights[r]
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.grad(weighted(None))(x, index), want_grad, rtol=1e-6, atol=1e-6)

    negatives = HardNegatives(index, index[::-1].copy(), np.ones(B, bool))
    tokens = {"ids": x[..., 0].astype(np.int32), "mask": x[..., 1] > 0}
    images, texts = jax.jit(lambda a, t: itm_pairs(negatives, a, t, mesh=mesh))(sharded[0], tokens)
    np.testing.assert_array_equal(images, np.stack([x, x[negatives.image_index], x]))
    for key in tokens:
        want = np.stack([tokens[key], tokens[key], tokens[key][negatives.text_index]])
        np.testing.assert_array_equal(texts[key], want)


def test_itm_loss_ignores_rows_without_negatives():
    """Against a plain loop: 2-way cross-entropy averaged over weighted pairs, accuracy likewise;
    [3, B, 2] and flat [3B, 2] layouts agree; weights default to 1."""
    index = np.arange(B, dtype=np.int32)[::-1]
    negatives = HardNegatives(index, index, np.arange(B) != 0)  # row 0 has no negative
    labels, weights = jax.device_get(itm_targets(negatives))
    assert labels.shape == weights.shape == (3, B)
    np.testing.assert_array_equal(labels[0], 1)
    np.testing.assert_array_equal(labels[1:], 0)
    assert weights[1, 0] == weights[2, 0] == 0 and weights.sum() == 3 * B - 2
    logits = np.random.default_rng(4).normal(size=(3, B, 2)).astype(np.float32)

    total = hits = count = 0.0
    for k in range(3):
        for r in range(B):
            w, y, z = float(weights[k, r]), int(labels[k, r]), logits[k, r].astype(np.float64)
            total += w * -(z[y] - np.log(np.exp(z).sum()))
            hits += w * (np.argmax(z) == y)
            count += w
    loss, metrics = itm_loss(logits, labels, weights)
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], hits / count, rtol=1e-6)
    assert metrics["pairs"] == count
    flat, _ = itm_loss(logits.reshape(-1, 2), labels.reshape(-1), weights.reshape(-1))
    np.testing.assert_allclose(flat, loss, rtol=1e-6)
    unweighted, _ = itm_loss(logits, labels)
    np.testing.assert_allclose(unweighted, itm_loss(logits, labels, jnp.ones((3, B)))[0])


def test_bad_sims_are_named():
    sim = jnp.zeros((B, B + 4))
    with pytest.raises(VlpError, match=r"slice off queue columns"):
        sample_hard_negatives(jax.random.key(0), sim, sim)
    sim = jnp.zeros((12, 12))
    with pytest.raises(VlpError, match=r"global batch 12 is not divisible by 8 devices"):
        sample_hard_negatives(jax.random.key(0), sim, sim, mesh=make_mesh({"data": -1}))
