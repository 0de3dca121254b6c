"""Visual grounding (OFA's referring-expression task on vlp_shapes): for each object of a
validation image, the model reads the grounding instruction with the object's "colour shape"
phrase and writes its box as four location tokens; a box with IoU >= 0.5 against the object's
true box is correct (vlpjax.evaluators.answer_metrics.grounding_accuracy). An output without four
location tokens is wrong and counted in `unparsed`.

Chance: every query answered with the box of a random other object of the split (seeded), the
best a model that ignores the phrase and the image can do on average.
"""

from __future__ import annotations

import numpy as np

from vlpjax.data.tasks import INSTRUCTIONS
from vlpjax.data.tokenizer import tokens_to_box
from vlpjax.evaluators.answer_metrics import box_iou, grounding_accuracy
from vlpjax.evaluators.common import EvalData


def object_queries(tags: list[str], boxes: list, max_objects: int = 0):
    """(image row, phrase, true box (x1, y1, x2, y2)) for each object of each image.

    tags: per image, "colour shape" pairs in object order; boxes: per image, float[>= N, 4]
    (ymin, xmin, ymax, xmax) as TFDS stores them (rows past the N objects are batch padding).
    """
    rows, phrases, truth = [], [], []
    for i, (tag, box) in enumerate(zip(tags, boxes)):
        words = tag.split()
        pairs = [" ".join(words[j : j + 2]) for j in range(0, len(words) - 1, 2)]
        keep = len(pairs) if not max_objects else min(max_objects, len(pairs))
        box = np.asarray(box, np.float64).reshape(-1, 4)
        for j in range(keep):
            rows.append(i)
            phrases.append(pairs[j])
            truth.append(box[j, [1, 0, 3, 2]])
    return np.asarray(rows, np.int64), phrases, np.asarray(truth, np.float64).reshape(-1, 4)


class GroundingEvaluator:
    name = "grounding"

    def __init__(
        self,
        data: EvalData,
        decode_config,
        location_bins: int,
        max_objects: int = 0,
        source_length: int | None = None,
        boxes_field: str = "boxes",
        tags_field: str = "tags",
    ):
        self.data = data
        self.decode_config = decode_config
        self.location_bins = location_bins
        self.max_objects = max_objects  # per image; 0 = all
        self.source_length = source_length
        self.boxes_field = boxes_field
        self.tags_field = tags_field

    def run(self, predictor, variables, step: int) -> dict[str, float]:
        images, _ = self.data.load()
        rows, phrases, truth = object_queries(
            self.data.field(self.tags_field), self.data.field(self.boxes_field), self.max_objects
        )
        if not len(rows):
            raise ValueError("grounding: the evaluation images have no objects")
        sources = [INSTRUCTIONS["grounding"].format(p) for p in phrases]
        generated = predictor.generate(
            variables, images[rows], sources, self.decode_config, self.source_length
        )
        boxes = [tokens_to_box(g, self.location_bins) for g in generated]
        parsed = np.array([b is not None for b in boxes])
        predicted = np.stack([b if b is not None else np.full(4, np.nan) for b in boxes])
        predicted = np.nan_to_num(predicted)  # unparsed: an empty box, IoU 0
        correct = parsed & grounding_accuracy(predicted, truth)
        iou = np.where(parsed, box_iou(predicted, truth), 0.0)
        # Chance: the box of another object of the split, drawn per query.
        n = len(truth)
        if n > 1:
            other = np.random.default_rng(0).integers(0, n - 1, n)
            other = other + (other >= np.arange(n))  # skips the query's own object
            chance = grounding_accuracy(truth[other], truth)
        else:
            chance = np.zeros(1, bool)
        return {
            "accuracy": float(correct.mean()),
            "chance_accuracy": float(chance.mean()),
            "mean_iou": float(iou.mean()),
            "unparsed": float((~parsed).sum()),
            "num_queries": float(n),
        }
