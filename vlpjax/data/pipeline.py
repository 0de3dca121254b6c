"""tf.data input pipeline: records -> decoded, resized, tokenised batches, resumable exactly.

Training stream (per process):

  records --shuffle(seed, per epoch)--> enumerate --map(decode, resize, pick caption)-->
  ignore_errors (corrupt images vanish) --repeat--> batch --prefetch--> tokenise (host)

Every element keeps its position in the epoch, so the host counts how many records were skipped
(gaps in positions) without a second pass. The tf.data iterator state (shuffle buffer,
positions, prefetched batches) plus those counters is the "data position" a checkpoint saves, so
a resumed run sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from vlpjax.data.sources import Records
from vlpjax.data.tokenizer import Tokenizer
from vlpjax.utils.errors import VlpError

# tf.data runs on the host; keep TensorFlow off the accelerators JAX owns.
tf.config.set_visible_devices([], "GPU")
tf.get_logger().setLevel("ERROR")

# Skips are only judged once this many records were read, so one bad file early is no error.
MIN_RECORDS_FOR_SKIP_RATIO = 50


def preprocess_image(encoded, image_size: int, crop: str, mean, std):
    """Encoded bytes -> float32[S, S, 3] normalised. crop: "resize" (squash) | "center"."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    if crop == "center":  # shortest side to S, then the central S x S (CLIP evaluation)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = image_size / tf.reduce_min(shape)
        new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        image = tf.image.resize(image, new, antialias=True)
        image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    else:
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


class TrainIterator:
    """Endless iterator of local (this process's) numpy batches with a saveable position.

    Batches: `image` float32[b, S, S, 3], `text` int32[b, L] (one caption drawn per example),
    where b = the global batch / process count. With a `text_task` (vlpjax.data.tasks), `source`
    int32[b, source_length] (no eos) and `target` int32[b, L] (eos-terminated) instead of `text`.
    """

    def __init__(
        self,
        records: Records,
        *,
        batch_size: int,
        image_size: int,
        text_length: int,
        tokenizer: Tokenizer,
        seed: int,
        shuffle_buffer: int = 10_000,
        crop: str = "resize",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        max_skip_ratio: float = 0.01,
        text_task=None,
        source_length: int = 0,
        add_bos: bool = False,
    ):
        self.records_per_epoch = records.length
        self.tokenizer = tokenizer
        self.text_length = text_length
        self.source_length = source_length or text_length
        self.text_task = text_task
        self.add_bos = add_bos
        self.max_skip_ratio = max_skip_ratio
        self.delivered = 0  # examples handed out
        self.completed_epochs = 0
        self.last_position = -1  # position in the current epoch of the last delivered example

        def prepare(position, record):
            image = preprocess_image(record["image"], image_size, crop, mean, std)
            if text_task is not None:
                return {"image": image, **text_task(position, record), "position": position}
            captions = record["captions"]
            pick = tf.random.stateless_uniform(
                [],
                seed=tf.stack([tf.cast(seed, tf.int64), position]),
                maxval=tf.shape(captions, out_type=tf.int64)[0],
                dtype=tf.int64,
            )
            return {
                "image": image,
                "caption": captions[pick],
                "position": position,
            }

        ds = records.dataset
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors().repeat().batch(batch_size, drop_remainder=True).prefetch(2)
        options = tf.data.Options()
        options.deterministic = True
        # Byte-range reads of tar shards run in tf.py_function; they are pure, so the iterator
        # state stays exact without their (nonexistent) internal state.
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        self._iterator = iter(ds.with_options(options))
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    @property
    def records_read(self) -> int:
        return self.completed_epochs * self.records_per_epoch + self.last_position + 1

    @property
    def skipped(self) -> int:
        return self.records_read - self.delivered

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise VlpError(
                f"data: no readable example in {self.records_per_epoch} records "
                "(every image failed to decode)"
            ) from None
        for position in batch["position"].numpy():
            if position <= self.last_position:  # the stream wrapped into a new epoch
                self.completed_epochs += 1
            self.last_position = int(position)
        self.delivered += len(batch["position"])
        if (
            self.records_read >= MIN_RECORDS_FOR_SKIP_RATIO
            and self.skipped > self.max_skip_ratio * self.records_read
        ):
            raise VlpError(
                f"data: {self.skipped} of {self.records_read} images could not be decoded "
                f"({self.skipped / self.records_read:.1%} > data.max_skip_ratio={self.max_skip_ratio})"
            )
        if self.text_task is not None:
            decoded = {
                k: [t.decode("utf-8") for t in batch[k].numpy()] for k in ("source", "target")
            }
            return {
                "image": batch["image"].numpy(),
                "source": self.tokenizer.encode(
                    decoded["source"], self.source_length, add_eos=False
                ),
                "target": self.tokenizer.encode(decoded["target"], self.text_length),
            }
        captions = [c.decode("utf-8") for c in batch["caption"].numpy()]
        return {
            "image": batch["image"].numpy(),
            "text": self.tokenizer.encode(captions, self.text_length, add_bos=self.add_bos),
        }

    def save(self, directory: str) -> None:
        """Writes the iterator position into `directory` (one process's files)."""
        os.makedirs(directory, exist_ok=True)
        self._checkpoint.write(os.path.join(directory, "tf_iterator"))
        counters = {k: getattr(self, k) for k in ("delivered", "completed_epochs", "last_position")}
        with open(os.path.join(directory, "counters.json"), "w") as f:
            json.dump(counters, f)

    def restore(self, directory: str) -> None:
        self._checkpoint.read(os.path.join(directory, "tf_iterator")).assert_consumed()
        with open(os.path.join(directory, "counters.json")) as f:
            for key, value in json.load(f).items():
                setattr(self, key, value)


def eval_batches(
    records: Records,
    *,
    batch_size: int,
    image_size: int,
    crop: str = "resize",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
):
    """One ordered pass: yields dicts with `image` float32[b, S, S, 3], `captions` (list of lists of
    str), `id` (list of str), `valid` bool[b], and the records' extra fields (lists, strings
    decoded); the last batch is padded to `batch_size`.
    Corrupt images are skipped (evaluation reports how many examples it used)."""

    def prepare(record):
        extras = {k: v for k, v in record.items() if k not in ("image", "captions", "id")}
        return {
            "image": preprocess_image(record["image"], image_size, crop, mean, std),
            "captions": record["captions"],
            "id": record["id"],
            **extras,
        }

    ds = records.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().padded_batch(batch_size).prefetch(2)
    for batch in ds.as_numpy_iterator():
        n = len(batch["id"])
        image = batch["image"]
        if n < batch_size:
            image = np.concatenate(
                [image, np.zeros((batch_size - n, *image.shape[1:]), image.dtype)]
            )
        extras = {k: batch[k] for k in batch if k not in ("image", "captions", "id")}
        yield {
            "image": image,
            "captions": [[c.decode("utf-8") for c in row if c] for row in batch["captions"]],
            "id": [i.decode("utf-8") for i in batch["id"]],
            "valid": np.arange(batch_size) < n,
            **{k: [_decoded(row) for row in v] for k, v in extras.items()},
        }


def _decoded(value):
    """Byte strings (and arrays of them) from tf.data as str; other values unchanged."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [v.decode("utf-8") for v in value.reshape(-1) if v]
    return value
