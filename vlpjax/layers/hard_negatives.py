"""Image-text matching (ITM) with hard negatives drawn from the global batch (ALBEF, BLIP).

Each image gets one negative text, drawn from the global batch with probability softmax(sim_i2t)
over the texts that are not positives for it; each text gets one negative image, likewise from
softmax(sim_t2i). The sims are the ITC logits (similarity / temperature) of the global batch,
float[B, B] (slice off any queue columns). Pair (image r, text c) is a positive when c == r, when
both rows carry the same image id (several captions of one image) or when text c's tokens equal
text r's (one caption on two images). ALBEF and BLIP exclude only c == r, so a duplicate can be
drawn as a "negative" that in fact matches; LAVIS draws with a Python loop over examples, and
BLIP-1 pretraining only within each GPU's batch. Here every row draws at once with
`jax.random.categorical` on masked logits (-inf on positives), from the whole global batch.

Row r draws with `fold_in(key, r)` (r its index in the global batch): rows on different devices
draw independently, and the draw is the same on every mesh, so the sharded version equals the
single-device one exactly. A row whose every column is a positive has no negative: it draws
uniformly among the other rows (so the fusion encoder still gets a fixed-shape input) and is
marked invalid, and `itm_targets` gives that pair weight 0.

The fusion encoder scores the (pos, neg_img, neg_txt) layout, float[3, B, 2]: (image r, text r),
(image `image_index[r]`, text r), (image r, text `text_index[r]`). Stacking on a new leading axis
keeps each device's rows where they are; concatenating to [3B] would move rows between devices.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vlpjax.sharding import BATCH_AXES
from vlpjax.utils.errors import VlpError


class HardNegatives(NamedTuple):
    text_index: jax.Array  # int32[B]: the negative text for image r (a global batch row)
    image_index: jax.Array  # int32[B]: the negative image for text r
    valid: jax.Array  # bool[B]: row r has a negative (the mask is the same both ways)


def positives_mask(size: int, image_ids=None, text_keys=None, rows=None):
    """bool[n, B]: (image r, text c) is a positive, for the global rows `rows` int[n] (default
    all B = `size`) against all B columns. image_ids: int[B]; text_keys: int[B, ...] (e.g.
    caption tokens; rows equal when every element is). Self pairs are always positives."""
    rows = jnp.arange(size) if rows is None else rows
    positives = rows[:, None] == jnp.arange(size)[None, :]
    if image_ids is not None:
        image_ids = jnp.asarray(image_ids)
        positives |= image_ids[rows][:, None] == image_ids[None, :]
    if text_keys is not None:
        flat = jnp.asarray(text_keys).reshape(size, -1)
        positives |= (flat[rows][:, None, :] == flat[None, :, :]).all(-1)
    return positives


def _masked_logits(sim, positives):
    return jnp.where(positives, -jnp.inf, jax.lax.stop_gradient(sim).astype(jnp.float32))


def hard_negative_weights(sim_i2t, sim_t2i, image_ids=None, text_keys=None):
    """The sampling distributions, float32[B, B] each (i2t, t2i): softmax over each row's
    non-positive columns, 0 on positives; a row with no negative is all 0."""
    positives = positives_mask(sim_i2t.shape[1], image_ids, text_keys)
    valid = ~positives.all(-1, keepdims=True)

    def weights(sim):
        logits = jnp.where(valid, _masked_logits(sim, positives), 0.0)  # no NaN in empty rows
        return jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)

    return weights(sim_i2t), weights(sim_t2i)


def _draw(key, sim, positives, rows):
    """One column per row from softmax(sim) over its non-positive columns: int32[n]."""
    valid = ~positives.all(-1, keepdims=True)
    others = jnp.where(rows[:, None] == jnp.arange(sim.shape[1])[None, :], -jnp.inf, 0.0)
    logits = jnp.where(valid, _masked_logits(sim, positives), others)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _sample_rows(key, sim_i2t, sim_t2i, rows, image_ids=None, text_keys=None) -> HardNegatives:
    """Draws for the global rows `rows`; sims float[n, B], ids and keys of the global batch."""
    positives = positives_mask(sim_i2t.shape[1], image_ids, text_keys, rows)
    # Both directions in one batched draw: one random-bits computation to compile, not two.
    draw = jax.vmap(_draw, in_axes=(0, 0, None, None))
    text_index, image_index = draw(
        jax.random.split(key), jnp.stack([sim_i2t, sim_t2i]), positives, rows
    )
    return HardNegatives(text_index, image_index, ~positives.all(-1))


def _check_sims(sim_i2t, sim_t2i, mesh):
    if sim_i2t.ndim != 2 or sim_i2t.shape[0] != sim_i2t.shape[1] or sim_t2i.shape != sim_i2t.shape:
        raise VlpError(
            f"hard negatives need square sims over the global batch, float[B, B], got "
            f"{sim_i2t.shape} and {sim_t2i.shape} (slice off queue columns: sim[:, :B])"
        )
    devices = 1 if mesh is None else math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if sim_i2t.shape[0] % devices:
        raise VlpError(
            f"hard negatives: global batch {sim_i2t.shape[0]} is not divisible by {devices} "
            f"devices (data x fsdp)"
        )


def sample_hard_negatives(
    key, sim_i2t, sim_t2i, image_ids=None, text_keys=None, *, mesh: Mesh | None = None
) -> HardNegatives:
    """One negative text per image and one negative image per text, from the global batch.

    sim_*: float[B, B] ITC logits; image_ids: int[B]; text_keys: int[B, ...]; all split over the
    batch axes. Without a mesh this is plain jnp on global arrays: correct under jit too, where
    XLA may shard it as it likes. With a mesh each device draws its own rows inside `shard_map`:
    the only communication is one all_gather of the small ids and keys, and each device builds
    only its [B_local, B] mask. The draw is the same either way (keys fold in the global row).
    """
    _check_sims(sim_i2t, sim_t2i, mesh)
    extras = {"image_ids": image_ids, "text_keys": text_keys}
    extras = {name: value for name, value in extras.items() if value is not None}
    if mesh is None:
        return _sample_rows(key, sim_i2t, sim_t2i, jnp.arange(sim_i2t.shape[0]), **extras)

    def local(key, sim_i2t, sim_t2i, extras):
        n = sim_i2t.shape[0]
        rows = jax.lax.axis_index(BATCH_AXES) * n + jnp.arange(n)
        extras = jax.lax.all_gather(extras, BATCH_AXES, tiled=True)
        return _sample_rows(key, sim_i2t, sim_t2i, rows, **extras)

    batch = P(BATCH_AXES)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), batch, batch, batch), out_specs=batch)(
        key, sim_i2t, sim_t2i, extras
    )


def gather_rows(array, index, *, mesh: Mesh | None = None):
    """array[index]: rows of a global-batch array float[B, ...] at global indices int32[n], both
    split over the batch axes. Differentiable (in shard_map the all_gather's transpose is a
    reduce-scatter, which sends each row's gradient home). Costs one all_gather of `array`."""
    if mesh is None:
        return jnp.take(array, index, axis=0)

    def local(array, index):
        return jnp.take(jax.lax.all_gather(array, BATCH_AXES, tiled=True), index, axis=0)

    batch = P(BATCH_AXES)
    return jax.shard_map(local, mesh=mesh, in_specs=(batch, batch), out_specs=batch)(array, index)


def itm_pairs(negatives: HardNegatives, images, texts, *, mesh: Mesh | None = None):
    """The fusion encoder's inputs in the (pos, neg_img, neg_txt) layout: pytrees of [B, ...]
    arrays (e.g. image embeddings; text tokens and mask) -> the same pytrees of [3, B, ...]."""

    def stacked(tree, negative_index, negative_slot):
        def leaf(x):
            parts = [x, x, x]
            parts[negative_slot] = gather_rows(x, negative_index, mesh=mesh)
            return jnp.stack(parts)

        return jax.tree.map(leaf, tree)

    return stacked(images, negatives.image_index, 1), stacked(texts, negatives.text_index, 2)


def itm_targets(negatives: HardNegatives):
    """Labels int32[3, B] (1 = match) and weights float32[3, B] for the (pos, neg_img, neg_txt)
    layout; a negative drawn for a row with no valid negative weighs 0."""
    ones = jnp.ones(negatives.valid.shape, jnp.int32)
    labels = jnp.stack([ones, 0 * ones, 0 * ones])
    weights = jnp.stack([ones, negatives.valid, negatives.valid]).astype(jnp.float32)
    return labels, weights
