"""Sequence-to-sequence tasks: each training example becomes a (source, target) text pair.

Encoder-decoders (SimVLM, OFA, BART) and language models learn from a mixture of tasks drawn
per example, inside tf.data, from the fields of one record:

  caption           source: "" (or an instruction)      target: one of the captions
  vqa               source: one of the questions        target: its answer
  document          source: ""                          target: all captions, one after another
  grounding         source: which region does the text " red circle " describe?
                    target: <loc_x1> <loc_y1> <loc_x2> <loc_y2>   (that object's box)
  grounded_caption  source: what does the region describe? region: <loc_..> x4
                    target: red circle
  itm               source: does the image describe " {caption} "?
                    target: yes (a true caption) | no (half the time: one colour word of the
                    caption replaced by a colour no object of the image has; a caption that
                    names no colour of vlp_shapes.COLORS is always a "yes" example)

The last three are OFA's (Wang et al. 2022, Table 1) and always use its instruction wording;
`instructions` only switches the caption task's source between "" and its instruction. They read
the object boxes (`data.fields.boxes`, a TFDS BBoxFeature: (ymin, xmin, ymax, xmax) normalised)
and the tags (`data.fields.tags`: one "colour shape" pair per object, in object order), as
vlp_shapes has them; boxes become location tokens (vlpjax.data.tokenizer) with `location_bins`.

`source` is the text the encoder reads after the image; `target` is what the decoder writes.
The draws are stateless functions of (seed, position in the epoch), so a resumed run draws the
same tasks. Device-side transforms (the PrefixLM split, BART's noising) then run in the jitted
step: vlpjax/data/device_transforms.py.
"""

from __future__ import annotations

import tensorflow as tf

from vlpjax.data.vlp_shapes import COLORS
from vlpjax.utils.errors import VlpError

# OFA phrases every task as an instruction (Wang et al. 2022, Table 1).
INSTRUCTIONS = {
    "caption": "what does the image describe?",
    "document": "",
    "grounding": 'which region does the text " {} " describe?',
    "grounded_caption": "what does the region describe? region: {}",
    "itm": 'does the image describe " {} "?',
}
TASKS = ("caption", "vqa", "document", "grounding", "grounded_caption", "itm")
# The record fields each task reads (beyond image and captions).
TASK_FIELDS = {
    "caption": (),
    "vqa": ("questions", "answers"),
    "document": (),
    "grounding": ("boxes", "tags"),
    "grounded_caption": ("boxes", "tags"),
    "itm": ("tags",),
}
# Tasks that write boxes as location tokens.
LOCATION_TASKS = ("grounding", "grounded_caption")


def _pick(seed, position, stream: int, count):
    return tf.random.stateless_uniform(
        [],
        seed=tf.stack([tf.cast(seed, tf.int64) * 7919 + stream, position]),
        maxval=tf.cast(count, tf.int64),
        dtype=tf.int64,
    )


def _pick_true(seed, position, stream: int, mask):
    """A uniformly drawn index where bool[K] `mask` is True (the caller checks there is one)."""
    k = _pick(seed, position, stream, tf.reduce_sum(tf.cast(mask, tf.int64)))
    return tf.gather(tf.where(mask)[:, 0], k)


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


def box_tokens(box_yxyx, bins: int):
    """tf: a TFDS box (ymin, xmin, ymax, xmax) in [0, 1] -> "<loc_x1> <loc_y1> <loc_x2> <loc_y2>",
    the same string as vlpjax.data.tokenizer.box_to_tokens of its (x1, y1, x2, y2)."""
    xyxy = tf.gather(tf.cast(box_yxyx, tf.float64), [1, 0, 3, 2])
    index = tf.cast(tf.round(tf.clip_by_value(xyxy, 0.0, 1.0) * (bins - 1)), tf.int64)
    tokens = tf.strings.join(["<loc_", tf.strings.as_string(index), ">"])
    return tf.strings.reduce_join(tokens, separator=" ")


def _objects(record):
    """(boxes float[N, 4], phrases string[N]: "colour shape" per object) of a record."""
    words = tf.strings.split(record["tags"])
    pairs = tf.reshape(words[: 2 * (tf.shape(words)[0] // 2)], [-1, 2])
    return record["boxes"], tf.strings.reduce_join(pairs, axis=1, separator=" ")


def text_task(weights: dict, instructions: bool, seed: int, location_bins: int = 0):
    """(position int64, record) -> {"source": tf.string, "target": tf.string}."""
    names = [n for n in TASKS if float(weights.get(n, 0.0)) > 0]
    boxed = [n for n in names if n in LOCATION_TASKS]
    if boxed and location_bins < 2:
        raise VlpError(
            f"data.tasks.{boxed[0]} writes boxes as location tokens: set data.location_bins >= 2 "
            f"(got {location_bins})"
        )
    logits = tf.math.log(tf.constant([float(weights[n]) for n in names], tf.float32))[None]
    colors = tf.constant(COLORS)
    color_patterns = tf.constant([rf"\b{c}\b" for c in COLORS])

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

    def grounding(record, position):
        boxes, phrases = _objects(record)
        i = _pick(seed, position, 3, tf.shape(phrases)[0])
        source = tf.strings.join(['which region does the text " ', phrases[i], ' " describe?'])
        return source, box_tokens(boxes[i], location_bins)

    def grounded_caption(record, position):
        boxes, phrases = _objects(record)
        i = _pick(seed, position, 4, tf.shape(phrases)[0])
        source = tf.strings.join(
            ["what does the region describe? region: ", box_tokens(boxes[i], location_bins)]
        )
        return source, phrases[i]

    def itm(record, position):
        captions = record["captions"]
        text = captions[_pick(seed, position, 5, tf.shape(captions)[0])]
        in_image = tf.strings.split(record["tags"])
        absent = tf.reduce_all(tf.not_equal(colors[:, None], in_image[None, :]), axis=1)
        words = tf.strings.split(tf.strings.regex_replace(text, r"[^a-z]+", " "))
        named = tf.reduce_any(tf.equal(colors[:, None], words[None, :]), axis=1)
        coin = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.cast(seed, tf.int64) * 7919 + 6, position])
        )
        negative = (coin < 0.5) & tf.reduce_any(named) & tf.reduce_any(absent)

        def swapped():
            old = _pick_true(seed, position, 7, named)
            new = _pick_true(seed, position, 8, absent)
            return tf.strings.regex_replace(
                text, color_patterns[old], colors[new], replace_global=False
            )

        text = tf.cond(negative, swapped, lambda: text)
        source = tf.strings.join(['does the image describe " ', text, ' "?'])
        return source, tf.where(negative, tf.constant("no"), tf.constant("yes"))

    builders = {
        "caption": caption,
        "vqa": vqa,
        "document": document,
        "grounding": grounding,
        "grounded_caption": grounded_caption,
        "itm": itm,
    }

    def fn(position, record):
        sample_seed = tf.stack([tf.cast(seed, tf.int64) * 7919, position])
        choice = tf.random.stateless_categorical(logits, 1, seed=sample_seed)[0, 0]
        branches = [lambda n=n: builders[n](record, position) for n in names]
        source, target = tf.switch_case(tf.cast(choice, tf.int32), branches)
        return {"source": source, "target": target}

    return fn
