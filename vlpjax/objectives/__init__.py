"""Objectives: pure functions (model outputs, batch) -> (loss, metrics), built from config.

`config.objectives` maps an objective name to its options plus a `weight`; the trainer sums
weight * loss and logs each as `train/<name>_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from vlpjax.objectives.contrastive import (
    IMPLEMENTATIONS,
    SIGMOID_IMPLEMENTATIONS,
    make_contrastive,
    make_sigmoid,
)
from vlpjax.objectives.distillation import alpha_ramp, itc_from_outputs, mlm_distilled_loss
from vlpjax.objectives.generative import make_lm
from vlpjax.objectives.matching import itm_loss
from vlpjax.utils.config import closest, take
from vlpjax.utils.errors import ConfigError


class Objective(NamedTuple):
    name: str
    weight: float
    fn: Callable


def _implementation(opts, where: str, valid: tuple[str, ...]) -> str:
    value = opts["implementation"]
    if value not in valid:
        raise ConfigError(
            f"{where}.implementation '{value}' is not one of {', '.join(valid)}"
            f"{closest(str(value), valid)}"
        )
    return value


def _tile_size(opts, where: str) -> int:
    value = opts["tile_size"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"{where}.tile_size must be an integer >= 0 (0 = whole blocks), got {value!r}"
        )
    return value


def _contrastive(cfg, mesh):
    where = "objectives.contrastive"
    opts = take(
        cfg,
        {"weight": 1.0, "implementation": "gather", "label_smoothing": 0.0, "tile_size": 0},
        where,
    )
    implementation = _implementation(opts, where, IMPLEMENTATIONS)
    smoothing = float(opts["label_smoothing"])
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"{where}.label_smoothing must be in [0, 1), got {smoothing}")
    tile_size = _tile_size(opts, where)
    fn = make_contrastive(implementation, smoothing, mesh, tile_size=tile_size)
    return Objective("contrastive", float(opts["weight"]), fn)


def _sigmoid(cfg, mesh):
    where = "objectives.sigmoid"
    opts = take(cfg, {"weight": 1.0, "implementation": "ring", "tile_size": 0}, where)
    implementation = _implementation(opts, where, SIGMOID_IMPLEMENTATIONS)
    fn = make_sigmoid(implementation, mesh, tile_size=_tile_size(opts, where))
    return Objective("sigmoid", float(opts["weight"]), fn)


def _lm(cfg, mesh):
    where = "objectives.lm"
    opts = take(cfg, {"weight": 1.0, "label_smoothing": 0.0}, where)
    smoothing = float(opts["label_smoothing"])
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"{where}.label_smoothing must be in [0, 1), got {smoothing}")
    return Objective("lm", float(opts["weight"]), make_lm(smoothing))


def _distillation(cfg, where: str) -> dict:
    opts = take(cfg, {"weight": 1.0, "alpha": 0.4, "alpha_warmup_steps": 0}, where)
    if not 0.0 <= float(opts["alpha"]) < 1.0:
        raise ConfigError(f"{where}.alpha must be in [0, 1), got {opts['alpha']}")
    return opts


def _itc(cfg, mesh):
    """ALBEF/BLIP's ITC: queue negatives, momentum distillation (fusion models)."""
    opts = _distillation(cfg, "objectives.itc")
    alpha, warmup = float(opts["alpha"]), int(opts["alpha_warmup_steps"])
    return Objective(
        "itc", float(opts["weight"]), lambda out, batch: itc_from_outputs(out, alpha, warmup)
    )


def _itm(cfg, mesh):
    """Image-text matching on the fusion model's (pos, neg_img, neg_txt) pairs."""
    opts = take(cfg, {"weight": 1.0}, "objectives.itm")

    def itm(out, batch):
        return itm_loss(out["itm/logits"], out["itm/labels"], out["itm/weights"])

    return Objective("itm", float(opts["weight"]), itm)


def _mlm(cfg, mesh):
    """ALBEF's image-conditioned masked LM (data.device_transform 'mlm'), distilled."""
    opts = _distillation(cfg, "objectives.mlm")
    alpha, warmup = float(opts["alpha"]), int(opts["alpha_warmup_steps"])

    def mlm(out, batch):
        if "mlm_labels" not in batch:
            raise ConfigError(
                "objectives.mlm needs masked text: set data.device_transform.name='mlm'"
            )
        momentum = out.get("momentum/mlm/logits")
        if momentum is None and alpha > 0:
            raise ConfigError(
                "objectives.mlm.alpha > 0 distils from the momentum model: set ema_decay > 0"
            )
        ramped = alpha_ramp(out.get("step", 0), alpha, warmup)
        return mlm_distilled_loss(
            out["mlm/logits"], momentum, batch["mlm_labels"], batch["mlm_weights"], ramped
        )

    return Objective("mlm", float(opts["weight"]), mlm)


OBJECTIVES = {
    "contrastive": _contrastive,
    "sigmoid": _sigmoid,
    "lm": _lm,
    "itc": _itc,
    "itm": _itm,
    "mlm": _mlm,
}


def build_objectives(cfg, mesh) -> list[Objective]:
    if not cfg or not len(cfg):
        raise ConfigError("config.objectives is empty: name at least one objective")
    built = []
    for name in cfg.keys():
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective 'objectives.{name}'{closest(name, OBJECTIVES)}")
        built.append(OBJECTIVES[name](cfg[name], mesh))
    return built
