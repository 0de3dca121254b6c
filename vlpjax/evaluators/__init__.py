"""Evaluators, plugged in from `config.evals`; each gets a predictor (embedding functions over
the current parameters) and never imports models or the trainer.

Metric names: `eval/<evaluator>/<metric>`, each with its `chance_*` level beside it.
"""

from __future__ import annotations

from vlpjax.data.sources import make_records, tfds_classnames, tfds_labels
from vlpjax.evaluators.captioning import CaptionEvaluator
from vlpjax.evaluators.common import EvalData
from vlpjax.evaluators.grounding import GroundingEvaluator
from vlpjax.evaluators.retrieval import RetrievalEvaluator
from vlpjax.evaluators.vqa import VqaEvaluator
from vlpjax.evaluators.zeroshot import ZeroShotEvaluator
from vlpjax.utils.config import REQUIRED, closest, take
from vlpjax.utils.errors import ConfigError


def _eval_data(opts: dict, data: dict) -> EvalData:
    split = opts["split"] or data["eval_split"]
    return EvalData(
        records_fn=lambda: make_records(data, split, 0, 1),
        image_size=data["image_size"],
        crop=data["eval_crop"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        max_examples=opts["max_examples"],
    )


def _retrieval(cfg, data, workdir):
    where = "evals.retrieval"
    opts = take(
        cfg, {"split": None, "max_examples": 0, "picture_examples": 8, "rerank_k": 0}, where
    )
    rerank_k = opts["rerank_k"]
    if isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < 0:
        raise ConfigError(
            f"{where}.rerank_k must be an integer >= 0 (0 = ITC only), got {rerank_k!r}"
        )
    return RetrievalEvaluator(_eval_data(opts, data), workdir, opts["picture_examples"], rerank_k)


def _zeroshot(cfg, data, workdir):
    opts = take(cfg, {"split": None, "max_examples": 0, "tasks": REQUIRED}, "evals.zeroshot")
    if data["source"] != "tfds":
        raise ConfigError(
            "evals.zeroshot reads class labels from a TFDS dataset (data.source='tfds')"
        )
    split = opts["split"] or data["eval_split"]
    tasks = {}
    for task, spec in opts["tasks"].items():
        spec = take(
            spec,
            {"label_field": REQUIRED, "prompts": REQUIRED, "classnames": None},
            f"evals.zeroshot.tasks.{task}",
        )

        def labels(field=spec["label_field"]):
            return tfds_labels(data["name"], split, data["data_dir"], field)

        classnames = spec["classnames"]
        if classnames is None:
            classnames = tfds_classnames(data["name"], data["data_dir"], spec["label_field"])
        tasks[task] = {
            "classnames": list(classnames),
            "prompts": list(spec["prompts"]),
            "labels": labels,
        }
    return ZeroShotEvaluator(_eval_data(opts, data), tasks)


DECODE = {"strategy": "beam", "max_length": 32, "beam_size": 4, "length_penalty": 0.6}


def _decode_options(opts: dict, where: str) -> dict:
    return take(opts["decode"] or {}, DECODE, f"{where}.decode")


def _caption(cfg, data, workdir):
    where = "evals.caption"
    opts = take(
        cfg,
        {
            "split": None,
            "max_examples": 0,
            "picture_examples": 8,
            "prompt": "",
            "object_field": None,  # a field of tag strings naming each image's objects
            "decode": None,
        },
        where,
    )
    if opts["object_field"] and opts["object_field"] not in data["fields"]:
        raise ConfigError(f"{where}.object_field '{opts['object_field']}' is not in data.fields")
    return CaptionEvaluator(
        _eval_data(opts, data),
        _decode_options(opts, where),
        workdir,
        opts["picture_examples"],
        opts["prompt"],
        opts["object_field"],
    )


def _vqa(cfg, data, workdir):
    where = "evals.vqa"
    opts = take(cfg, {"split": None, "max_examples": 0, "max_questions": 0, "decode": None}, where)
    missing = [f for f in ("questions", "answers") if f not in data["fields"]]
    if missing:
        raise ConfigError(f"{where} needs data.fields {missing}")
    return VqaEvaluator(_eval_data(opts, data), _decode_options(opts, where), opts["max_questions"])


def _grounding(cfg, data, workdir):
    where = "evals.grounding"
    opts = take(cfg, {"split": None, "max_examples": 0, "max_objects": 0, "decode": None}, where)
    missing = [f for f in ("boxes", "tags") if f not in data["fields"]]
    if missing:
        raise ConfigError(f"{where} needs data.fields {missing} (object boxes and their tags)")
    if int(data.get("location_bins", 0)) < 2:
        raise ConfigError(f"{where} reads boxes as location tokens: set data.location_bins >= 2")
    decode = take(
        opts["decode"] or {},
        {**DECODE, "strategy": "greedy", "max_length": 5, "beam_size": 1},
        f"{where}.decode",
    )
    return GroundingEvaluator(
        _eval_data(opts, data),
        decode,
        int(data.get("location_bins", 0)),
        opts["max_objects"],
        source_length=data["source_length"] or data["text_length"],
    )


EVALUATORS = {
    "retrieval": _retrieval,
    "zeroshot": _zeroshot,
    "caption": _caption,
    "vqa": _vqa,
    "grounding": _grounding,
}


def build_evaluators(cfg, data: dict, workdir: str | None) -> list:
    evaluators = []
    for name in cfg.keys() if cfg else ():
        if name not in EVALUATORS:
            raise ConfigError(f"unknown evaluator 'evals.{name}'{closest(name, EVALUATORS)}")
        evaluators.append(EVALUATORS[name](cfg[name], data, workdir))
    return evaluators
