"""Pieces every evaluator shares: the evaluation split in memory and recall/chance arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlpjax.data.pipeline import eval_batches
from vlpjax.data.sources import Records


@dataclass
class EvalData:
    """A split read once (every process reads all of it) and kept: images and their captions."""

    records_fn: object  # () -> Records
    image_size: int
    crop: str = "resize"
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    max_examples: int = 0  # 0 = the whole split
    _cache: tuple | None = field(default=None, repr=False)
    _extras: dict = field(default_factory=dict, repr=False)

    def load(self) -> tuple[np.ndarray, list[list[str]]]:
        """float32[N, S, S, 3] normalised images and each image's captions."""
        if self._cache is None:
            records: Records = self.records_fn()
            images, captions, extras = [], [], {}
            for batch in eval_batches(
                records,
                batch_size=256,
                image_size=self.image_size,
                crop=self.crop,
                mean=self.mean,
                std=self.std,
            ):
                n = int(batch["valid"].sum())
                images.append(batch["image"][:n])
                captions.extend(batch["captions"])
                for key in set(batch) - {"image", "captions", "id", "valid"}:
                    extras.setdefault(key, []).extend(batch[key][:n])
            images = np.concatenate(images)
            if self.max_examples:
                images, captions = images[: self.max_examples], captions[: self.max_examples]
                extras = {k: v[: self.max_examples] for k, v in extras.items()}
            self._cache = (images, captions)
            self._extras = extras
        return self._cache

    def field(self, name: str) -> list:
        """An extra record field (`data.fields`), one entry per loaded example."""
        self.load()
        if name not in self._extras:
            raise KeyError(f"evaluation data has no field '{name}': add it to data.fields")
        return self._extras[name]

    def raw_images(self, images: np.ndarray) -> np.ndarray:
        """Undoes the normalisation for pictures: uint8[N, S, S, 3]."""
        pixels = images * np.asarray(self.std) + np.asarray(self.mean)
        return (np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def recall_at_k(scores: np.ndarray, match: np.ndarray, ks) -> dict[int, np.ndarray]:
    """For each query row, whether a correct column is among its top k scores: {k: bool[Q]}."""
    kmax = min(max(ks), scores.shape[1])
    top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    hits = np.take_along_axis(match, top, 1)
    return {k: hits[:, :k].any(1) for k in ks}


def chance_at_k(num_correct: np.ndarray, num_items: int, k: int) -> np.ndarray:
    """P(a random ranking of `num_items` puts one of `num_correct` in the top k), per query."""
    num_correct = np.asarray(num_correct, np.float64)
    miss = np.ones_like(num_correct)
    for j in range(min(k, num_items)):
        miss *= np.clip((num_items - num_correct - j) / (num_items - j), 0.0, 1.0)
    return 1.0 - miss
