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
from vlpjax.objectives.generative import make_lm
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


OBJECTIVES = {"contrastive": _contrastive, "sigmoid": _sigmoid, "lm": _lm}


def build_objectives(cfg, mesh) -> list[Objective]:
    if not cfg or not len(cfg):
        raise ConfigError("config.objectives is empty: name at least one objective")
    built = []
    for name in cfg.keys():
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective 'objectives.{name}'{closest(name, OBJECTIVES)}")
        built.append(OBJECTIVES[name](cfg[name], mesh))
    return built
