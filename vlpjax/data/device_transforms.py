"""Batch transforms that run inside the jitted train step (fixed shapes, vectorised, keyed by
the step's rng), between the host pipeline and the model:

  prefix_lm   SimVLM's PrefixLM: a caption row (empty source) is split at a random point; the
              first part joins the encoder's source, the decoder writes the rest. Some rows
              hide their image (text-only PrefixLM, the paper's mixture with text data).
  denoise     BART: the source is the target corrupted by vlpjax.data.noising.
  mlm         BERT-style masking of `text` for an image-conditioned masked LM (ALBEF): adds
              `masked_text`, `mlm_labels` and `mlm_weights`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.data import noising
from vlpjax.utils.config import take
from vlpjax.utils.errors import ConfigError


def prefix_lm(
    rng,
    batch: dict,
    *,
    no_prefix_fraction: float = 0.5,
    text_only_fraction: float = 0.0,
    pad_id: int = 0,
    eos_id: int = 3,
):
    """batch: `source` int[B, Ls] (all pad = split this row), `target` int[B, Lt] (tokens, eos,
    pads). Returns the batch with the split applied and `image_valid` bool[B].

    A split row moves its first k target tokens to the source: k = 0 with probability
    `no_prefix_fraction` (plain captioning, what evaluation asks for), else uniform in
    [1, n - 1] for n content tokens. Text-only rows (probability `text_only_fraction`, split
    rows with n >= 2 only) hide the image and always keep k >= 1, so the encoder reads text;
    rows the batch marks `text_only` (bool[B], optional) are text-only too.
    """
    source, target = batch["source"], batch["target"]
    rows, source_length = source.shape
    target_length = target.shape[1]
    k_full, k_uniform, k_text = jax.random.split(rng, 3)
    splittable = jnp.all(source == pad_id, axis=1)
    content = jnp.sum((target != pad_id) & (target != eos_id), axis=1)
    max_k = jnp.minimum(content - 1, source_length)
    # Text-only: drawn here, or marked by the host (rows of a text corpus, vlpjax.data.text_corpus).
    # A marked row too short to split keeps its (blank) image, so its encoder is never empty.
    marked = batch.get("text_only", jnp.zeros((rows,), bool))
    drawn = jax.random.uniform(k_text, (rows,)) < text_only_fraction
    text_only = splittable & (content >= 2) & (drawn | marked)
    uniform_k = 1 + jnp.floor(
        jax.random.uniform(k_uniform, (rows,)) * jnp.maximum(max_k, 0)
    ).astype(jnp.int32)
    no_prefix = (jax.random.uniform(k_full, (rows,)) < no_prefix_fraction) & ~text_only
    k = jnp.where(no_prefix | (max_k < 1), 0, jnp.minimum(uniform_k, max_k))
    k = jnp.where(splittable, k, 0)

    positions = jnp.arange(source_length)[None]
    moved = jnp.take_along_axis(target, jnp.minimum(positions, target_length - 1), axis=1)
    new_source = jnp.where(
        splittable[:, None], jnp.where(positions < k[:, None], moved, pad_id), source
    )
    shifted = jnp.arange(target_length)[None] + k[:, None]
    rest = jnp.take_along_axis(target, jnp.minimum(shifted, target_length - 1), axis=1)
    new_target = jnp.where(shifted < target_length, rest, pad_id)
    return {**batch, "source": new_source, "target": new_target, "image_valid": ~text_only}


def denoise(rng, batch: dict, *, spec: dict, **ids):
    """BART: `source` = noised `target` (text_infilling, sentence_permutation, ...)."""
    return {**batch, "source": noising.noise(rng, batch["target"], spec, **ids)}


def mlm_mask(
    rng,
    batch: dict,
    *,
    rate: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    vocab_size: int,
    mask_id: int,
    pad_id: int = 0,
    eos_id: int = 3,
    bos_id: int = 2,
):
    """BERT's masking of `text` int[B, L]: each text token (not pad, bos or eos) is chosen with
    probability `rate`; a chosen token becomes `mask_id` (`mask_fraction`), a random token
    (`random_fraction`) or stays. Adds `masked_text`, `mlm_labels` (= text) and `mlm_weights`
    float32[B, L] (1 where chosen). ALBEF masks 15% with 80/10/10."""
    text = batch["text"]
    k_pick, k_kind, k_random = jax.random.split(rng, 3)
    chosen = noising.is_text(text, pad_id, eos_id, bos_id) & (
        jax.random.uniform(k_pick, text.shape) < rate
    )
    kind = jax.random.uniform(k_kind, text.shape)
    random_tokens = jax.random.randint(k_random, text.shape, 0, vocab_size, text.dtype)
    masked = jnp.where(kind < mask_fraction, jnp.asarray(mask_id, text.dtype), text)
    masked = jnp.where(
        (kind >= mask_fraction) & (kind < mask_fraction + random_fraction), random_tokens, masked
    )
    return {
        **batch,
        "masked_text": jnp.where(chosen, masked, text),
        "mlm_labels": text,
        "mlm_weights": chosen.astype(jnp.float32),
    }


def build_device_transform(cfg, tokenizer):
    """config.data.device_transform -> (rng, batch) -> batch, or None."""
    if not cfg:
        return None
    name = cfg.get("name")
    ids = dict(pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    if name == "prefix_lm":
        opts = take(
            cfg,
            {"name": "prefix_lm", "no_prefix_fraction": 0.5, "text_only_fraction": 0.0},
            "data.device_transform",
        )
        return lambda rng, batch: prefix_lm(
            rng,
            batch,
            no_prefix_fraction=float(opts["no_prefix_fraction"]),
            text_only_fraction=float(opts["text_only_fraction"]),
            **ids,
        )
    if name == "denoise":
        opts = take(
            cfg,
            {"name": "denoise", "sentence_end": ".", **{k: 0.0 for k in noising.NOISE_ORDER}},
            "data.device_transform",
        )
        spec = {k: float(opts[k]) for k in noising.NOISE_ORDER if float(opts[k]) > 0}
        sentence_end = tokenizer.piece_to_id(opts["sentence_end"]) if opts["sentence_end"] else None
        return lambda rng, batch: denoise(
            rng,
            batch,
            spec=spec,
            bos_id=tokenizer.bos_id,
            mask_id=tokenizer.mask_id,
            sentence_end_id=sentence_end,
            **ids,
        )
    if name == "mlm":
        where = "data.device_transform"
        opts = take(
            cfg,
            {"name": "mlm", "rate": 0.15, "mask_fraction": 0.8, "random_fraction": 0.1},
            where,
        )
        fractions = float(opts["mask_fraction"]) + float(opts["random_fraction"])
        if not 0.0 < float(opts["rate"]) <= 1.0 or fractions > 1.0:
            raise ConfigError(
                f"{where}: rate must be in (0, 1] and mask_fraction + random_fraction <= 1, got "
                f"{opts['rate']}, {opts['mask_fraction']} + {opts['random_fraction']}"
            )
        return lambda rng, batch: mlm_mask(
            rng,
            batch,
            rate=float(opts["rate"]),
            mask_fraction=float(opts["mask_fraction"]),
            random_fraction=float(opts["random_fraction"]),
            vocab_size=tokenizer.vocab_size,
            mask_id=tokenizer.mask_id,
            bos_id=tokenizer.bos_id,
            **ids,
        )
    raise ConfigError(
        f"data.device_transform.name '{name}' is not one of ['denoise', 'mlm', 'prefix_lm']"
    )
