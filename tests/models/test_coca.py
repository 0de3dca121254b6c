"""CoCa: one forward gives the contrastive and captioning losses (gradients reach the pooler and
the multimodal layers); the text embedding ignores the image and the padding; the captioner is
causal; cached == uncached greedy decoding; configs/coca.py:smoke trains through the one
trainer and reports retrieval and caption metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vlpjax.decode import DecodeConfig
from vlpjax.encoders import ViT
from vlpjax.models.coca import CoCa
from vlpjax.objectives import build_objectives
from vlpjax.train.generation import generate
from vlpjax.train.trainer import train_and_evaluate
from vlpjax.utils.config import load_config
from vlpjax.utils.errors import ConfigError

BOS, EOS, PAD = 2, 3, 0
VOCAB, QUERIES = 32, 4
# "tokens eos pads": the model puts bos in front itself.
TEXT = jnp.asarray([[5, 6, 7, EOS, PAD, PAD, PAD, PAD], [8, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
                    [9, 10, 11, 12, 13, 14, 15, EOS]])  # fmt: skip


def coca(**kw):
    image = ViT(
        image_size=16, patch_size=4, width=24, depth=1, num_heads=4, mlp_dim=48,
        class_token=False, pool="none",
    )  # fmt: skip
    fields = dict(
        embed_dim=16, vocab_size=VOCAB, max_length=13, width=32, unimodal_depth=1,
        multimodal_depth=1, num_heads=4, mlp_dim=64, num_queries=QUERIES, pooler_heads=4,
    )  # fmt: skip
    return CoCa(image, **{**fields, **kw})


def images(batch=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, 16, 16, 3)), jnp.float32)


@pytest.fixture(scope="module")
def model_and_variables():
    model = coca()
    variables = jax.jit(model.init)(jax.random.key(0), images(), TEXT)
    return model, {"params": nn.unbox(variables["params"])}


@pytest.fixture(scope="module")
def forward(model_and_variables):
    """The outputs for images float[3, 16, 16, 3] and/or text rows, one compile per shape."""
    model, variables = model_and_variables
    apply = jax.jit(lambda image, text: model.apply(variables, image, text)[1])
    return lambda image=None, text=None: apply(image, text)


def test_one_forward_gives_both_losses(model_and_variables):
    model, variables = model_and_variables
    objectives = build_objectives(
        {"contrastive": {"implementation": "naive"}, "lm": {"weight": 2.0}}, None
    )
    assert [(o.name, o.weight) for o in objectives] == [("contrastive", 1.0), ("lm", 2.0)]

    @jax.jit
    def loss_fn(params):
        primary, out = model.apply({"params": params}, images(), TEXT, train=True)
        losses = {o.name: o.fn(out, {})[0] for o in objectives}
        total = sum(o.weight * losses[o.name] for o in objectives)
        return total, (primary, out, losses)

    (total, (primary, out, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"]
    )
    assert np.isfinite(total) and all(np.isfinite(v) and v > 0 for v in losses.values())
    assert out["img/embed"].shape == out["txt/embed"].shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(out["txt/embed"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        primary, out["logit_scale"] * out["img/embed"] @ out["txt/embed"].T, atol=1e-5
    )
    # Teacher forcing on [bos; text]: every row token, the eos included, is a target.
    assert out["dec/logits"].shape == (3, TEXT.shape[1], VOCAB)
    assert out["dec/logits"].dtype == jnp.float32
    np.testing.assert_array_equal(out["dec/targets"], TEXT)
    np.testing.assert_array_equal(out["dec/weights"], np.asarray(TEXT != PAD, np.float32))

    def reached(*path):
        tree = grads
        for key in path:
            tree = tree[key]
        return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(tree)) > 0

    assert reached("pooler", "queries") and reached("pooler", "attention")
    assert reached("multimodal", "transformer", "layer_0", "cross_attention")
    assert reached("unimodal", "cls_token") and reached("image_encoder")
    assert reached("image_projection") and reached("text_projection") and reached("logit_scale")


def test_text_embedding_ignores_image_and_padding(forward):
    out = forward(images(), TEXT)
    other = forward(images(seed=5), TEXT)
    np.testing.assert_array_equal(other["txt/embed"], out["txt/embed"])
    assert np.abs(np.asarray(other["dec/logits"] - out["dec/logits"])).max() > 1e-3
    # Either input alone gives the same embeddings as both together.
    text_only, image_only = forward(text=TEXT), forward(image=images())
    assert set(text_only) == {"txt/embed", "logit_scale"}
    assert set(image_only) == {"img/embed", "logit_scale"}
    np.testing.assert_allclose(text_only["txt/embed"], out["txt/embed"], atol=1e-6)
    np.testing.assert_allclose(image_only["img/embed"], out["img/embed"], atol=1e-6)
    # The CLS token reads the real tokens only: more padding leaves the embedding as it was;
    # a row's other tokens do change it.
    longer = forward(text=jnp.pad(TEXT, ((0, 0), (0, 4)), constant_values=PAD))
    np.testing.assert_allclose(longer["txt/embed"], out["txt/embed"], atol=1e-5)
    changed = forward(text=TEXT.at[0, 1].set(20))
    assert np.abs(np.asarray(changed["txt/embed"][0] - out["txt/embed"][0])).max() > 1e-4


def test_captioner_is_causal(forward):
    """dec/logits[:, i] reads bos and text[:, :i]: a change at token t moves positions > t
    only."""
    t = 4
    out, changed = forward(images(), TEXT), forward(images(), TEXT.at[:, t].set(21))
    diff = np.abs(np.asarray(changed["dec/logits"] - out["dec/logits"])).max(axis=(0, 2))
    np.testing.assert_array_equal(diff[: t + 1], 0.0)
    assert diff[t + 1] > 1e-4


def test_decode_logits_needs_image_tokens(model_and_variables):
    model, variables = model_and_variables
    with pytest.raises(ValueError, match="needs the image tokens"):
        model.apply(variables, TEXT, method="decode_logits")


def test_flops():
    model = coca()
    flops = model.flops_per_example(8)
    assert flops > model.image_encoder.flops() > 0
    assert model.flops_per_example(16) > flops


def test_cached_equals_uncached_greedy(model_and_variables):
    model, variables = model_and_variables
    # Doubled token embeddings, so that random-weight greedy decoding is no coin toss, and
    # eos's zeroed, so that every row runs (and compares) all the steps; larger positions vary
    # the tokens along a row.
    params = variables["params"]
    embedding = 2.0 * params["token_embed"]["embedding"]
    positions = 25.0 * params["unimodal"]["position_embed"]["embedding"]
    params = {
        **params,
        "token_embed": {"embedding": embedding.at[EOS].set(0.0)},
        "unimodal": {**params["unimodal"], "position_embed": {"embedding": positions}},
    }
    config = DecodeConfig("greedy", max_length=10)

    def run(cached):
        fn = jax.jit(
            lambda v, x: generate(
                model,
                v,
                {"image": x},
                config,
                start_id=BOS,
                eos_id=EOS,
                pad_id=PAD,
                cached=cached,
            )  # fmt: skip
        )
        return jax.device_get(fn({"params": params}, images()))

    cached_tokens, cached_scores = run(True)
    tokens, scores = run(False)
    np.testing.assert_array_equal(cached_tokens, tokens)
    np.testing.assert_allclose(cached_scores, scores, rtol=1e-4, atol=1e-4)
    assert len({tuple(t) for t in tokens}) > 1  # the images caption differently
    assert all(len(set(row.tolist())) > 2 for row in tokens)  # not one token repeated


def test_smoke_config_trains_and_reports(tmp_path):
    config = load_config("configs/coca.py:smoke")
    with config.unlocked():
        config.progress_bar = False
        config.checkpoint_every = 8  # one save, at the end
    last = train_and_evaluate(config, str(tmp_path))
    for key in ("train/loss", "train/contrastive_loss", "train/lm_loss"):
        assert np.isfinite(last[key]) and last[key] > 0, key
    for key in (
        "eval/retrieval/i2t_r1",
        "eval/retrieval/t2i_r1",
        "eval/caption/cider",
        "eval/caption/bleu4",
        "eval/caption/objects_correct",
        "eval/caption/chance_cider",
    ):
        assert key in last and np.isfinite(last[key]), key
    assert any(k.startswith("eval/retrieval/chance") for k in last)
    assert last["eval/caption/num_images"] == 16


def test_configs_load():
    for arg in ("", "base"):
        config = load_config("configs/coca.py" + (f":{arg}" if arg else ""))
        assert config.model.name == "coca"
        assert config.model.max_length == config.data.text_length + 1
        assert dict(config.objectives.lm)["weight"] == 2.0
        assert not config.data.get("add_bos", False)
    with pytest.raises(ConfigError, match="unknown argument 'large'"):
        load_config("configs/coca.py:large")
