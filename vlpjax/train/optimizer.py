"""The optimizer from `config.optimizer`: AdamW, warmup + decay, clipping, weight-decay mask,
per-regex learning-rate multipliers and frozen parameters.

Parameters are matched by their path, e.g. `image_encoder/transformer/layer_0/mlp/fc1/kernel`.
Frozen parameters go through `optax.set_to_zero` and carry no optimizer state (LiT's frozen
image tower costs no Adam moments).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from vlpjax.utils.config import take
from vlpjax.utils.errors import ConfigError

DEFAULTS = {
    "name": "adamw",
    "learning_rate": 1e-3,
    "schedule": "cosine",  # cosine | linear | constant
    "warmup_steps": 0,
    "end_factor": 0.0,  # final lr = learning_rate * end_factor
    "b1": 0.9,
    "b2": 0.98,
    "eps": 1e-6,
    "weight_decay": 0.1,
    # parameters whose path matches one of these get no weight decay
    "no_decay": (
        r"bias$",
        r"norm/",
        r"scale$",
        r"embed/",
        r"logit_scale",
        r"temperature",
        r"class_token",
        r"queries",
    ),
    "grad_clip_norm": 1.0,  # 0 = no clipping
    "lr_multipliers": (),  # ((regex, multiplier), ...): first match wins
    "freeze": (),  # (regex, ...): matching parameters are not updated
}


def param_paths(params) -> dict:
    """A tree like `params` whose leaves are their slash-joined paths."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), params
    )


def schedule(opts: dict, total_steps: int) -> optax.Schedule:
    lr, warmup = opts["learning_rate"], opts["warmup_steps"]
    decay_steps = max(total_steps - warmup, 1)
    end = lr * opts["end_factor"]
    if opts["schedule"] == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=opts["end_factor"])
    elif opts["schedule"] == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    elif opts["schedule"] == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ConfigError(
            f"optimizer.schedule '{opts['schedule']}' not in ['constant', 'cosine', 'linear']"
        )
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _first_match(path: str, table, default):
    for pattern, value in table:
        if re.search(pattern, path):
            return value
    return default


def build_optimizer(
    cfg, total_steps: int, params
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (transformation, learning-rate schedule). `params` may be abstract (shapes only)."""
    opts = take(cfg, DEFAULTS, "optimizer")
    if opts["name"] != "adamw":
        raise ConfigError(f"optimizer.name '{opts['name']}' is not supported (valid: ['adamw'])")
    for pattern in [*opts["no_decay"], *opts["freeze"], *(p for p, _ in opts["lr_multipliers"])]:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"optimizer: bad regex '{pattern}': {e}") from None
    paths = param_paths(params)
    frozen = jax.tree.map(lambda p: any(re.search(f, p) for f in opts["freeze"]), paths)
    if opts["freeze"] and not any(jax.tree.leaves(frozen)):
        raise ConfigError(f"optimizer.freeze {opts['freeze']} matches no parameter")
    decay_mask = jax.tree.map(lambda p: not any(re.search(r, p) for r in opts["no_decay"]), paths)
    multipliers = jax.tree.map(lambda p: float(_first_match(p, opts["lr_multipliers"], 1.0)), paths)
    lr = schedule(opts, total_steps)

    trainable = [optax.scale_by_adam(b1=opts["b1"], b2=opts["b2"], eps=opts["eps"])]
    if opts["weight_decay"]:
        trainable.append(optax.add_decayed_weights(opts["weight_decay"], mask=decay_mask))
    if opts["lr_multipliers"]:
        trainable.append(_scale_by_tree(multipliers))
    trainable.append(optax.scale_by_learning_rate(lr))
    tx = optax.multi_transform(
        {"trainable": optax.chain(*trainable), "frozen": optax.set_to_zero()},
        jax.tree.map(lambda f: "frozen" if f else "trainable", frozen),
    )
    if opts["grad_clip_norm"]:
        tx = optax.chain(optax.clip_by_global_norm(opts["grad_clip_norm"]), tx)
    return tx, lr


def _scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-parameter factor."""

    def update(updates, state, params=None):
        del params
        masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 (frozen parameters)
        scaled = jax.tree.map(
            lambda u, m: u if masked(u) else u * jnp.asarray(m, u.dtype),
            updates,
            multipliers,
            is_leaf=masked,
        )
        return scaled, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
