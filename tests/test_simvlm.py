"""SimVLM end to end: a short run on vlp_shapes/tiny answers questions above chance, captions
the validation images and writes the captions picture; the paper sizes build."""

import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

from vlpjax.models import build_model
from vlpjax.train.trainer import train_and_evaluate
from vlpjax.utils.config import load_config


def test_short_simvlm_run_answers_above_chance_and_captions(tmp_path):
    config = load_config("configs/simvlm.py:smoke")
    with config.unlocked():
        config.total_steps = 150
        config.batch_size = 32
        config.log_every = 50
        config.checkpoint_every = 150
        config.progress_bar = False
        config.optimizer.learning_rate = 3e-3
        config.optimizer.warmup_steps = 10
        config.model.width = 64
        config.model.mlp_dim = 256
        config.evals.caption.max_examples = 64
        config.evals.vqa.max_examples = 64
    workdir = str(tmp_path / "run")
    metrics = train_and_evaluate(config, workdir)
    # Answers come first (counting and yes/no in 150 steps); captions need the longer default
    # run to beat another image's reference caption (README), so here they only have to exist.
    assert metrics["eval/vqa/accuracy"] > metrics["eval/vqa/chance_accuracy"] + 0.1, metrics
    assert metrics["eval/caption/num_images"] == 64 and metrics["eval/caption/cider"] > 0
    assert os.path.isfile(os.path.join(workdir, "pictures", "captions_0000150.png"))
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    assert losses[-1] < 0.35 * math.log(config.model.vocab_size), losses  # 5.55 at the start


@pytest.mark.parametrize("arg", ["base", "large", "huge"])
def test_paper_sizes_build(arg):
    config = load_config(f"configs/simvlm.py:{arg}")
    model = build_model(config.model)
    size = config.model.image_size
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            image=jnp.zeros((1, size, size, 3)),
            source=jnp.zeros((1, 8), jnp.int32),
            target=jnp.zeros((1, 8), jnp.int32),
        )
    )
    params = sum(x.size for x in jax.tree.leaves(shapes))
    width = config.model.width
    layers = config.model.encoder_depth + config.model.decoder_depth
    # Transformer blocks dominate: ~12 D^2 per encoder block, ~16 D^2 per decoder block.
    assert 12 * width**2 * layers < params < 20 * width**2 * layers + 4e7, params
    assert model.num_patches == 196  # the conv stem's 56x56 map in 4x4 patches
