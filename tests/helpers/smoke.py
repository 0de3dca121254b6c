"""Shared by the trainer tests: the CLIP smoke config with changes, and a random batch for it."""

import jax
import numpy as np

from vlpjax.utils.config import load_config


def smoke_config(**changes):
    """configs/clip.py:smoke with dotted-key changes, e.g. smoke_config(**{"mesh.data": 2})."""
    return config_with("configs/clip.py:smoke", **changes)


def config_with(spec: str, **changes):
    """A recipe (configs/NAME.py[:ARG]) with dotted-key changes."""
    config = load_config(spec)
    with config.unlocked():
        for key, value in changes.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def random_batch(setup, seed=0, nan=False):
    """A global batch for `setup` (images, token ids ending in eos), placed on its mesh."""
    rng = np.random.default_rng(seed)
    b, s, length = setup.top["batch_size"], setup.data["image_size"], setup.data["text_length"]
    image = rng.normal(size=(b, s, s, 3)).astype(np.float32)
    if nan:
        image[0, 0, 0, 0] = np.nan
    text = rng.integers(4, min(100, setup.tokenizer.vocab_size), (b, length)).astype(np.int32)
    text[:, -1] = setup.tokenizer.eos_id
    batch = {"image": image, "text": text}
    return {k: jax.device_put(v, setup.batch_shardings()[k]) for k, v in batch.items()}
