"""Sequence-to-sequence tasks: each training example becomes a (source, target) text pair.

Encoder-decoders (SimVLM, OFA, BART) and language models learn from a mixture of tasks drawn
per example, inside tf.data, from the fields of one record:

  caption   source: "" (or an instruction)         target: one of the captions
  vqa       source: one of the questions            target: its answer
  document  source: ""                              target: all captions, one after another

`source` is the text the encoder reads after the image; `target` is what the decoder writes.
The draws are stateless functions of (seed, position in the epoch), so a resumed run draws the
same tasks. Device-side transforms (the PrefixLM split, BART's noising) then run in the jitted
step: vlpjax/data/device_transforms.py.
"""

from __future__ import annotations

import tensorflow as tf

from vlpjax.utils.errors import VlpError

# OFA phrases every task as an instruction (Wang et al. 2022, Table 1).
INSTRUCTIONS = {"caption": "what does the image describe?", "document": ""}
TASKS = ("caption", "vqa", "document")
# The record fields each task reads (beyond image and captions).
TASK_FIELDS = {"caption": (), "vqa": ("questions", "answers"), "document": ()}


def _pick(seed, position, stream: int, count):
    return tf.random.stateless_uniform(
        [],
        seed=tf.stack([tf.cast(seed, tf.int64) * 7919 + stream, position]),
        maxval=tf.cast(count, tf.int64),
        dtype=tf.int64,
    )


def check_tasks(weights: dict, fields: dict) -> None:
    """Unknown tasks, negative or all-zero weights, and missing record fields are errors."""
    for name, weight in weights.items():
        if name not in TASKS:
            raise VlpError(f"data.tasks: unknown task '{name}'; valid: {', '.join(TASKS)}")
        if float(weight) < 0:
            raise VlpError(f"data.tasks.{name}: weight must be >= 0, got {weight}")
        missing = [f for f in TASK_FIELDS[name] if f not in fields]
        if missing and float(weight) > 0:
            raise VlpError(
                f"data.tasks.{name} needs record fields {missing}: add them to data.fields"
            )
    if not any(float(w) > 0 for w in weights.values()):
        raise VlpError("data.tasks: every weight is 0")


def text_task(weights: dict, instructions: bool, seed: int):
    """(position int64, record) -> {"source": tf.string, "target": tf.string}."""
    names = [n for n in TASKS if float(weights.get(n, 0.0)) > 0]
    logits = tf.math.log(tf.constant([float(weights[n]) for n in names], tf.float32))[None]

    def caption(record, position):
        captions = record["captions"]
        target = captions[_pick(seed, position, 1, tf.shape(captions)[0])]
        source = INSTRUCTIONS["caption"] if instructions else ""
        return tf.constant(source), target

    def vqa(record, position):
        i = _pick(seed, position, 2, tf.shape(record["questions"])[0])
        return record["questions"][i], record["answers"][i]

    def document(record, position):
        return tf.constant(""), tf.strings.reduce_join(record["captions"], separator=" ")

    builders = {"caption": caption, "vqa": vqa, "document": document}

    def fn(position, record):
        sample_seed = tf.stack([tf.cast(seed, tf.int64) * 7919, position])
        choice = tf.random.stateless_categorical(logits, 1, seed=sample_seed)[0, 0]
        branches = [lambda n=n: builders[n](record, position) for n in names]
        source, target = tf.switch_case(tf.cast(choice, tf.int32), branches)
        return {"source": source, "target": target}

    return fn
