"""Gradient caching == the full-batch step; EMA parameters == a hand-written reference; the
feature queue holds exactly the last features of every device's rows, in order; LiT's locked
tower is bit-identical after training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.smoke import random_batch, smoke_config

from vlpjax.sharding import batch_sharding, make_mesh, replicated
from vlpjax.train.checkpoint import Checkpointer
from vlpjax.train.momentum import queue_init, queue_ordered, queue_push
from vlpjax.train.trainer import Setup, train_and_evaluate
from vlpjax.utils.config import load_config
from vlpjax.utils.errors import VlpError


@pytest.mark.parametrize("steps", [4])
def test_gradient_caching_equals_full_batch_step(steps):
    results = []
    for cache in (1, steps):
        setup = Setup(smoke_config(grad_cache_steps=cache, batch_size=32), None)
        state = setup.init_state()
        new_state, metrics = setup.jit_train_step()(state, random_batch(setup))
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, new_state.params)))
    (loss, params), (cached_loss, cached_params) = results
    np.testing.assert_allclose(cached_loss, loss, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), cached_params, params
    )


def test_gradient_caching_config_errors():
    with pytest.raises(VlpError, match="cannot both be > 1"):
        Setup(smoke_config(grad_cache_steps=2, grad_accum_steps=2), None)
    with pytest.raises(VlpError, match="not divisible by data x fsdp = 8 x grad_cache_steps 4"):
        Setup(smoke_config(grad_cache_steps=4, batch_size=16), None)


def test_ema_parameters_follow_the_reference():
    setup = Setup(smoke_config(ema_decay=0.9), None)
    state = setup.init_state()
    ema = jax.tree.map(np.asarray, state.params)
    step = setup.jit_train_step()
    for seed in range(3):
        state, _ = step(state, random_batch(setup, seed))
        ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p), ema, state.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_params, ema
    )


def test_queue_holds_the_last_global_features_in_order():
    mesh = make_mesh({"data": -1})  # 8 devices, each holding 3 of the 24 rows
    size, batch, dim = 40, 24, 4
    push = jax.jit(
        queue_push,
        in_shardings=(replicated(mesh), batch_sharding(mesh, 2)),
        out_shardings=replicated(mesh),
    )
    queue = queue_init(size, dim)
    history = []
    for step in range(5):  # 120 rows through a 40-slot queue: wraps mid-batch
        features = np.arange(batch * dim, dtype=np.float32).reshape(batch, dim) + 1000 * step
        history.append(features)
        queue = push(queue, jax.device_put(features, batch_sharding(mesh, 2)))
        expected = np.concatenate(history)[-size:]
        got = np.asarray(queue_ordered(queue))[size - min(len(np.concatenate(history)), size) :]
        np.testing.assert_array_equal(got, expected)
    assert int(queue.count) == size and int(queue.pointer) == (5 * batch) % size


def test_queue_keeps_the_newest_when_the_batch_is_larger():
    queue = queue_push(queue_init(4, 1), jnp.arange(6.0)[:, None])
    np.testing.assert_array_equal(np.asarray(queue_ordered(queue))[:, 0], [2, 3, 4, 5])


def test_lit_locked_image_tower_is_bit_identical(tmp_path):
    """LiT: start from a CLIP run's image tower, lock it, train the text tower."""
    clip_dir = str(tmp_path / "clip")
    train_and_evaluate(smoke_config(total_steps=2, progress_bar=False, evals={}), clip_dir)
    config = load_config("configs/lit.py:smoke")
    with config.unlocked():
        config.init_from.path = clip_dir
        config.progress_bar = False
        config.total_steps = 3
    setup = Setup(config, None)
    start = jax.tree.map(np.asarray, setup.init_state().params)
    from vlpjax.train.trainer import latest_params

    clip = latest_params(clip_dir)
    jax.tree.map(np.testing.assert_array_equal, start["image_encoder"], clip["image_encoder"])
    lit_dir = str(tmp_path / "lit")
    metrics = train_and_evaluate(config, lit_dir)
    after = latest_params(lit_dir)
    for group in ("image_encoder", "image_projection"):
        jax.tree.map(np.testing.assert_array_equal, after[group], clip[group])
    assert not np.array_equal(
        after["text_projection"]["kernel"], start["text_projection"]["kernel"]
    )
    assert "eval/retrieval/i2t_r1" in metrics


def test_ema_starts_from_init_from_and_steps(tmp_path):
    """init_from with ema_decay > 0: the EMA copy starts at the loaded weights, in buffers of
    its own (the jitted step donates params and EMA separately)."""
    source = str(tmp_path / "source")
    checkpointer = Checkpointer(source, async_save=False)
    loaded_state = Setup(smoke_config(seed=7), None, with_data=False).init_state()
    checkpointer.save(0, loaded_state)
    checkpointer.close()
    config = smoke_config(ema_decay=0.9, init_from={"format": "vlpjax", "path": source})
    setup = Setup(config, None, with_data=False)
    state = setup.init_state()
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b), state.ema_params, loaded_state.params
    )
    state, metrics = setup.jit_train_step()(state, random_batch(setup))
    assert np.isfinite(float(metrics["loss"]))
