"""Captioning: CIDEr-D and BLEU-4 (the COCO caption toolkit's definitions, vlpjax's own code),
exact match, and, on vlp_shapes, whether a caption names every object's colour and shape.

Chance levels: the same scores for a caption of another (random) image of the split, which is
what a model that ignores the image can reach at best on average.
"""

from __future__ import annotations

import os
import re

import numpy as np

from vlpjax.data.vlp_shapes import COLORS, SHAPES
from vlpjax.evaluators.caption_metrics import bleu, cider_d, tokenize_caption
from vlpjax.evaluators.common import EvalData

_PLURALS = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
_OBJECT = re.compile(
    rf"\b({'|'.join(COLORS)})\s+(?:(?:small|large)\s+)?({'|'.join((*SHAPES, *_PLURALS))})\b"
)


def named_objects(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a vlp_shapes caption or tag string names."""
    return {(c, _PLURALS.get(s, s)) for c, s in _OBJECT.findall(text.lower())}


def caption_scores(generated: list[str], references: list[list[str]]) -> dict[str, float]:
    ids = range(len(generated))
    candidates = {i: generated[i] for i in ids}
    refs = {i: references[i] for i in ids}
    bleus, _ = bleu(candidates, refs)
    cider, _ = cider_d(candidates, refs)
    normal = [" ".join(tokenize_caption(t)) for t in generated]
    exact = [normal[i] in {" ".join(tokenize_caption(r)) for r in refs[i]} for i in ids]
    return {"cider": float(cider), "bleu4": float(bleus[3]), "exact_match": float(np.mean(exact))}


class CaptionEvaluator:
    """Generates a caption per validation image (optionally after a `prompt` in the encoder)."""

    name = "caption"

    def __init__(
        self,
        data: EvalData,
        decode_config,
        workdir: str | None = None,
        picture_examples: int = 8,
        prompt: str = "",
        object_field: str | None = None,
    ):
        self.data = data
        self.decode_config = decode_config
        self.workdir = workdir
        self.picture_examples = picture_examples
        self.prompt = prompt
        self.object_field = object_field

    def run(self, predictor, variables, step: int) -> dict[str, float]:
        images, references = self.data.load()
        sources = [self.prompt] * len(images) if self.prompt else None  # None: image only
        generated = predictor.generate(variables, images, sources, self.decode_config)
        metrics = caption_scores(generated, references)
        # Chance: every image gets the first reference of another image.
        other = np.random.default_rng(0).permutation(len(images))
        other = np.where(other == np.arange(len(images)), (other + 1) % len(images), other)
        chance = caption_scores([references[j][0] for j in other], references)
        metrics.update({f"chance_{k}": v for k, v in chance.items()})
        if self.object_field:
            truth = [named_objects(t) for t in self.data.field(self.object_field)]
            metrics["objects_correct"] = float(
                np.mean([named_objects(g) == t for g, t in zip(generated, truth)])
            )
            metrics["chance_objects_correct"] = float(
                np.mean([truth[j] == truth[i] for i, j in enumerate(other)])
            )
        metrics["num_images"] = float(len(images))
        if self.workdir and self.picture_examples:
            from vlpjax.evaluators.pictures import image_text_picture

            n = self.picture_examples
            rows = [
                [
                    (f"generated: {generated[i]}", "blue"),
                    (f"reference: {references[i][0]}", "black"),
                ]
                for i in range(min(n, len(images)))
            ]
            image_text_picture(
                self.data.raw_images(images[:n]),
                rows,
                "validation images: generated and reference captions",
                os.path.join(self.workdir, "pictures", f"captions_{step:07d}.png"),
            )
        return metrics
