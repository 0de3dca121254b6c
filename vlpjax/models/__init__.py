"""Models by family; `build_model(config.model)` turns a config section into a Flax module.

Every model returns `(primary, out)` with `out` a flat dict of namespaced intermediates
(`img/...`, `txt/...`, `fusion/...`, `dec/...`) that objectives and evaluators pick from.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vlpjax.encoders import TextTransformer, ViT
from vlpjax.encoders.efficientnet import EfficientNet
from vlpjax.models.coca import CoCa
from vlpjax.models.dual_encoder import DualEncoder
from vlpjax.models.encoder_decoder import EncoderDecoder
from vlpjax.models.fusion import FusionModel
from vlpjax.models.generative import ClipCap, DecoderOnlyLM
from vlpjax.utils.config import REQUIRED, take
from vlpjax.utils.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def module_fields(cls) -> dict:
    """A module's configurable attributes and defaults (REQUIRED where there is none)."""
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in ("parent", "name", "dtype", "mesh"):  # mesh: set by the trainer
            continue
        if f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = f.default_factory()
        else:
            fields[f.name] = REQUIRED
    return fields


def build_tower(cls, section, where: str, dtype):
    return cls(**take(section, module_fields(cls), where), dtype=dtype)


def build_dual_encoder(cfg, dtype, image_tower, text_tower):
    """A DualEncoder whose towers are built from `model.image` and `model.text`."""
    own = {
        k: v
        for k, v in module_fields(DualEncoder).items()
        if k not in ("image_encoder", "text_encoder")
    }
    kwargs = take(
        cfg,
        {"name": REQUIRED, "dtype": "float32", "image": REQUIRED, "text": REQUIRED, **own},
        "model",
    )
    return DualEncoder(
        image_encoder=build_tower(image_tower, cfg.image, "model.image", dtype),
        text_encoder=build_tower(text_tower, cfg.text, "model.text", dtype),
        **{k: kwargs[k] for k in own},
        dtype=dtype,
    )


def flat_fields(cls, cfg) -> dict:
    """`config.model` of a model whose fields sit directly in it, next to `name` and `dtype`:
    checked, defaults filled, `name` and `dtype` included (builders and converters read it)."""
    fields = {k: v for k, v in module_fields(cls).items() if k not in ("decode", "embed")}
    return take(cfg, {"name": REQUIRED, "dtype": "float32", **fields}, "model")


def build_flat(cls, cfg, dtype):
    """A model whose fields sit directly in `config.model` (next to `name` and `dtype`)."""
    kwargs = flat_fields(cls, cfg)
    return cls(**{k: v for k, v in kwargs.items() if k not in ("name", "dtype")}, dtype=dtype)


def build_clipcap(cfg, dtype):
    """A ClipCap whose CLIP image tower is built from `model.image` (its other fields top-level)."""
    own = {k: v for k, v in module_fields(ClipCap).items() if k not in ("image_encoder", "decode")}
    kwargs = take(cfg, {"name": REQUIRED, "dtype": "float32", "image": REQUIRED, **own}, "model")
    return ClipCap(
        image_encoder=build_tower(ViT, cfg.image, "model.image", dtype),
        **{k: kwargs[k] for k in own},
        dtype=dtype,
    )


def build_with_image_tower(cls, cfg, dtype):
    """A model whose ViT is built from `model.image` and whose other fields are top-level."""
    own = {k: v for k, v in module_fields(cls).items() if k not in ("image_encoder", "decode")}
    kwargs = take(cfg, {"name": REQUIRED, "dtype": "float32", "image": REQUIRED, **own}, "model")
    return cls(
        image_encoder=build_tower(ViT, cfg.image, "model.image", dtype),
        **{k: kwargs[k] for k in own},
        dtype=dtype,
    )


SEQ2SEQ_INPUTS = ("image", "source", "target", "image_valid")

# name -> (builder, the batch keys its __call__ takes)
MODELS = {
    "clip": (
        lambda cfg, dtype: build_dual_encoder(cfg, dtype, ViT, TextTransformer),
        ("image", "text"),
    ),
    "align": (
        lambda cfg, dtype: build_dual_encoder(cfg, dtype, EfficientNet, TextTransformer),
        ("image", "text"),
    ),
    "simvlm": (lambda cfg, dtype: build_flat(EncoderDecoder, cfg, dtype), SEQ2SEQ_INPUTS),
    "ofa": (
        lambda cfg, dtype: build_flat(EncoderDecoder, cfg, dtype),
        ("image", "source", "target"),
    ),
    "bart": (lambda cfg, dtype: build_flat(EncoderDecoder, cfg, dtype), ("source", "target")),
    "gpt": (lambda cfg, dtype: build_flat(DecoderOnlyLM, cfg, dtype), ("text",)),
    "clipcap": (build_clipcap, ("image", "text")),
    "coca": (lambda cfg, dtype: build_with_image_tower(CoCa, cfg, dtype), ("image", "text")),
    "albef": (
        lambda cfg, dtype: build_with_image_tower(FusionModel, cfg, dtype),
        ("image", "text", "masked_text"),
    ),
    "blip": (lambda cfg, dtype: build_with_image_tower(FusionModel, cfg, dtype), ("image", "text")),
}


def model_inputs(cfg) -> tuple[str, ...]:
    return MODELS[cfg.get("name")][1]


def build_model(cfg):
    """config.model -> a Flax module. `cfg.name` picks the builder; `cfg.dtype` the compute dtype."""
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"model.name '{name}' is not one of {sorted(MODELS)}")
    dtype_name = cfg.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise ConfigError(f"model.dtype '{dtype_name}' is not one of {sorted(DTYPES)}")
    return MODELS[name][0](cfg, DTYPES[dtype_name])
