"""Fusion models (ALBEF, BLIP): the train step's momentum pass fills the queues with the EMA
model's features of the global batch; the queue-aware ITC equals a numpy loop; hard negatives
inside the model are the same on 8 devices as on one; BLIP's shared text transformer keeps its
three paths apart and decodes with a cache exactly as without; ITM re-ranking reorders only the
top k; BERT masking; config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.smoke import config_with, random_batch

from vlpjax.data.device_transforms import mlm_mask
from vlpjax.decode import DecodeConfig
from vlpjax.evaluators.retrieval import reranked_scores, top_k_candidates
from vlpjax.models import build_model
from vlpjax.objectives.distillation import itc_from_outputs
from vlpjax.sharding import batch_sharding, make_mesh
from vlpjax.train.generation import generate
from vlpjax.train.momentum import queue_ordered, queue_valid
from vlpjax.train.trainer import Setup
from vlpjax.utils.config import load_config
from vlpjax.utils.errors import ConfigError, VlpError


def config_of(system, **changes):
    return config_with(f"configs/{system}.py:smoke", **changes)


def test_train_step_pushes_the_momentum_features_of_the_global_batch():
    setup = Setup(config_of("albef", queue_size=48), None, with_data=False)  # 8 devices, B=16
    state = setup.init_state()
    step = setup.jit_train_step()
    expected = []
    for seed in range(4):  # 64 rows through a 48-slot queue: it wraps
        batch = random_batch(setup, seed)
        momentum = setup.model.apply(
            {"params": state.ema_params}, batch["image"], batch["text"], method="momentum"
        )
        expected.append([np.asarray(momentum["img/embed"]), np.asarray(momentum["txt/embed"])])
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    for column, queue in enumerate(state.queues):
        want = np.concatenate([e[column] for e in expected])[-48:]
        np.testing.assert_allclose(np.asarray(queue_ordered(queue)), want, rtol=1e-5, atol=1e-6)
        assert bool(queue_valid(queue).all())
    for key in ("itc_loss", "itm_loss", "mlm_loss", "itm/accuracy", "mlm/accuracy"):
        assert np.isfinite(float(metrics[key])), key


def naive_itc(image, text, image_m, text_m, queue_image, queue_text, queue_ok, scale, alpha):
    """ALBEF's ITC, one row at a time in float64."""
    columns_t = np.concatenate([text_m, queue_text[queue_ok]])
    columns_i = np.concatenate([image_m, queue_image[queue_ok]])

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    losses = []
    for rows, rows_m, columns in ((image, image_m, columns_t), (text, text_m, columns_i)):
        total = 0.0
        for r in range(len(rows)):
            logits = scale * columns @ rows[r]
            soft = softmax(scale * columns @ rows_m[r])
            hard = np.eye(len(columns))[r]
            target = (1 - alpha) * hard + alpha * soft
            total -= (target * np.log(softmax(logits))).sum()
        losses.append(total / len(rows))
    return np.mean(losses)


def test_queue_itc_matches_a_loop():
    rng = np.random.default_rng(0)
    b, q, d = 6, 10, 8

    def unit(*shape):
        x = rng.normal(size=shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    image, text, image_m, text_m = (unit(b, d) for _ in range(4))
    queue_image, queue_text = unit(q, d), unit(q, d)
    queue_ok = np.arange(q) >= 3  # 7 of 10 slots filled
    out = {
        "img/embed": image,
        "txt/embed": text,
        "momentum/img/embed": image_m,
        "momentum/txt/embed": text_m,
        "queue/img/embed": queue_image,
        "queue/txt/embed": queue_text,
        "queue/valid": queue_ok,
        "logit_scale": 1 / 0.07,
        "step": 5,
    }
    out = {k: jnp.asarray(v, jnp.float32) if k != "step" else v for k, v in out.items()}
    loss, _ = itc_from_outputs(out, alpha=0.4, warmup_steps=10)  # alpha ramped to 0.2
    want = naive_itc(image, text, image_m, text_m, queue_image, queue_text, queue_ok, 1 / 0.07, 0.2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("system", ["albef", "blip"])
def test_hard_negatives_in_the_model_are_the_same_on_8_devices(system):
    config = config_of(system)
    model = build_model(config.model)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
    text = rng.integers(7, 200, (16, 24)).astype(np.int32)
    text[:, 0], text[:, 12:] = 2, 0  # bos ... pads
    text[3] = text[5]  # a duplicate caption: never a negative for its twin
    params = model.init(jax.random.key(0), image[:2], text[:2])
    key = {"dropout": jax.random.key(3)}

    def run(m, *arrays):
        return jax.jit(lambda p, i, t: m.apply(p, i, t, rngs=key)[1])(params, *arrays)

    single = run(model, image, text)
    mesh = make_mesh({"data": -1})
    placed = [jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in (image, text)]
    sharded = run(model.clone(mesh=mesh), *placed)
    np.testing.assert_array_equal(single["itm/labels"], sharded["itm/labels"])
    np.testing.assert_array_equal(single["itm/weights"], sharded["itm/weights"])
    np.testing.assert_allclose(single["itm/logits"], sharded["itm/logits"], rtol=1e-4, atol=1e-5)
    # The negative pairs differ from the positives: no row drew itself or its duplicate.
    assert not np.allclose(single["itm/logits"][0], single["itm/logits"][2])


def test_blip_paths_share_weights_but_not_self_attention():
    config = config_of("blip")
    model = build_model(config.model)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    text = rng.integers(7, 200, (4, 24)).astype(np.int32)
    text[:, 0], text[:, 15:] = 2, 0
    params = model.init(jax.random.key(0), image, text)
    _, out = model.apply(params, image, text)

    def perturbed(name):
        def bump(path, x):
            keys = [getattr(p, "key", None) for p in path]
            return x + 0.5 if name in keys else x

        return jax.tree_util.tree_map_with_path(bump, params)

    _, own = model.apply(perturbed("decoder_attention"), image, text)
    np.testing.assert_array_equal(own["txt/embed"], out["txt/embed"])  # ITC: not the decoder's
    np.testing.assert_array_equal(own["itm/logits"], out["itm/logits"])
    assert np.abs(own["dec/logits"] - out["dec/logits"]).max() > 1e-3
    _, shared = model.apply(perturbed("mlp"), image, text)  # shared by all three paths
    for key in ("txt/embed", "itm/logits", "dec/logits"):
        assert np.abs(shared[key] - out[key]).max() > 1e-4, key
    # The unimodal path never sees the image; the decoder is causal.
    _, other_image = model.apply(params, image[::-1], text)
    np.testing.assert_array_equal(other_image["txt/embed"], out["txt/embed"])
    changed = text.copy()
    changed[:, 8] = 9
    _, later = model.apply(params, image, changed)
    np.testing.assert_allclose(later["dec/logits"][:, :8], out["dec/logits"][:, :8], atol=1e-6)
    assert np.abs(later["dec/logits"][:, 8:] - out["dec/logits"][:, 8:]).max() > 1e-4


def test_blip_cached_decoding_equals_uncached():
    config = config_of("blip")
    model = build_model(config.model)
    image = np.random.default_rng(3).normal(size=(3, 32, 32, 3)).astype(np.float32)
    params = model.init(jax.random.key(1), image, np.full((3, 24), 7, np.int32))
    decode = DecodeConfig(strategy="greedy", max_length=10)
    results = [
        generate(model, params, {"image": image}, decode, start_id=2, eos_id=3, cached=cached)
        for cached in (True, False)
    ]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_rerank_orders_the_top_k_by_itm_and_keeps_the_rest():
    rng = np.random.default_rng(4)
    sims = rng.uniform(-1, 1, size=(5, 9))
    candidates = top_k_candidates(sims, 3)
    itm = rng.uniform(0, 1, size=(5, 3))
    scores = reranked_scores(sims, candidates, itm)
    for r in range(5):
        order = np.argsort(-scores[r])
        want_top = candidates[r][np.argsort(-itm[r])]
        np.testing.assert_array_equal(order[:3], want_top)
        rest = [c for c in np.argsort(-sims[r]) if c not in candidates[r]]
        np.testing.assert_array_equal(order[3:], rest)


def test_mlm_mask_follows_bert():
    rng = np.random.default_rng(5)
    text = rng.integers(7, 250, (512, 24)).astype(np.int32)
    text[:, 0], text[:, 20], text[:, 21:] = 2, 3, 0
    out = mlm_mask(
        jax.random.key(0), {"text": jnp.asarray(text)}, vocab_size=256, mask_id=4, bos_id=2
    )
    chosen = np.asarray(out["mlm_weights"]) > 0
    masked = np.asarray(out["masked_text"])
    assert not chosen[:, [0, 20, 21, 22, 23]].any()  # bos, eos, pads are never chosen
    assert abs(chosen[:, 1:20].mean() - 0.15) < 0.01
    as_mask = (masked == 4)[chosen].mean()
    kept = (masked == text)[chosen].mean()
    assert abs(as_mask - 0.8) < 0.03 and 0.07 < kept < 0.13  # 10% kept (+ random hits)
    np.testing.assert_array_equal(masked[~chosen], text[~chosen])
    np.testing.assert_array_equal(out["mlm_labels"], text)


def test_config_errors_name_the_key():
    with pytest.raises(VlpError, match="queue_size 64: the queues hold the momentum"):
        Setup(config_of("albef", ema_decay=0.0), None, with_data=False)
    with pytest.raises(VlpError, match="grad_accum_steps and grad_cache_steps must be 1"):
        Setup(config_of("albef", grad_accum_steps=2), None, with_data=False)
    clip = load_config("configs/clip.py:smoke")
    with clip.unlocked():
        clip.evals.retrieval.rerank_k = 4
    with pytest.raises(VlpError, match=r"evals.retrieval: model 'clip' has no \['image_tokens'"):
        Setup(clip, None)
    with pytest.raises(ConfigError, match="rerank_k must be an integer >= 0"):
        Setup(config_of("albef", **{"evals.retrieval.rerank_k": -1}), None)
    with pytest.raises(ConfigError, match="objectives.itc.alpha must be in"):
        Setup(config_of("albef", **{"objectives.itc.alpha": 1.5}), None, with_data=False)
