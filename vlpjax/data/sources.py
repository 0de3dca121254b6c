"""Where image-text records come from: TFDS datasets, JSONL manifests, webdataset tar shards.

Every source gives, for one process, a finite `tf.data.Dataset` of records
`{"image": tf.string, "captions": tf.string[None], "id": tf.string}` in a fixed order, its
length, and `read`, which turns a record's `image` into encoded bytes (TFDS records hold the
bytes; user data holds a path or a byte range, read only when the pipeline decodes it). So an
unreadable or corrupt image is skipped, counted and named in one place, and shuffle buffers
hold small strings.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from vlpjax.utils.errors import VlpError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTENSIONS = ("txt",)


@dataclass
class Records:
    dataset: tf.data.Dataset  # finite, this process's shard, fixed order
    length: int  # records in this process's shard
    read: Callable = tf.identity  # a record's `image` -> encoded bytes (tf.string -> tf.string)


def _field(example, path: str):
    for part in path.split("/"):
        example = example[part]
    return example


def check_feature(builder, name: str, path: str, where: str) -> None:
    """`path` (e.g. "captions/text") must be a feature of TFDS dataset `name`."""
    try:
        _field(builder.info.features, path)
    except (KeyError, TypeError):
        raise VlpError(f"{where}: '{path}' is not a feature of {name}") from None


def process_shard(builder, name: str, split: str, process_index: int, process_count: int, where):
    """This process's contiguous slice of `split` (checked); the slices' union is the split."""
    import tensorflow_datasets as tfds

    if split.split("[")[0] not in builder.info.splits:
        raise VlpError(f"{where} '{split}' not in {name}: {sorted(builder.info.splits)}")
    return tfds.even_splits(split, n=process_count)[process_index] if process_count > 1 else split


def tfds_builder(name: str, data_dir: str | None):
    """A prepared TFDS builder; vlp_shapes is built on first use, anything else must be there."""
    import tensorflow_datasets as tfds

    if name.split("/")[0] == "vlp_shapes":
        from vlpjax.data import vlp_shapes

        config_name = name.split("/")[1] if "/" in name else "default"
        return vlp_shapes.ensure_built(config_name, data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
        message = f"data.name: TFDS dataset '{name}' not found ({type(e).__name__}: {e})"
        raise VlpError(message.split("\n")[0]) from None
    if not builder.is_prepared():
        raise VlpError(
            f"data.name: TFDS dataset '{name}' is not prepared in {builder.data_dir}; "
            f"run `tfds build {name} --data_dir=...` first (no downloads at train time)"
        )
    return builder


def tfds_records(
    name: str,
    split: str,
    data_dir: str | None,
    fields: dict,
    process_index: int,
    process_count: int,
) -> Records:
    """A TFDS image-text dataset; `fields` maps `image`, `captions` (and optional `id`) to
    feature paths, e.g. coco_captions: {"image": "image", "captions": "captions/text"}; any other
    key (`questions`, `answers`, ...) is carried into the records under that key."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    shard = process_shard(builder, name, split, process_index, process_count, "data split")
    image_key = fields.get("image", "image")
    caption_key = fields.get("captions", "captions")
    for key in (image_key, caption_key):
        check_feature(builder, name, key, "data.fields")
    decoders = {image_key.split("/")[0]: tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(
        split=shard,
        decoders=decoders,
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=True),
    )
    length = int(ds.cardinality().numpy())

    # Extra fields (e.g. questions, answers, object boxes for seq2seq tasks) pass through.
    extras = {k: v for k, v in fields.items() if k not in ("image", "captions", "id")}
    for key, path in extras.items():
        check_feature(builder, name, path, f"data.fields.{key}")

    def convert(example):
        captions = tf.reshape(_field(example, caption_key), [-1])
        record = {
            "image": _field(example, image_key),
            "captions": captions,
            "id": example["tfds_id"],
        }
        record.update({key: _field(example, path) for key, path in extras.items()})
        return record

    return Records(ds.map(convert), length)


def manifest_rows(path: str) -> list[dict]:
    """A JSONL manifest's rows: `{"image": path, "caption": text}` (or `"captions": [...]`) per
    line, other keys kept. `image` comes back resolved against the manifest's folder and
    `captions` as a list of strings."""
    if not os.path.isfile(path):
        raise VlpError(f"data: manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = row["image"]
                texts = row["captions"] if "captions" in row else [row["caption"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise VlpError(
                    f'{path}:{line_number}: expected {{"image": path, "caption": text}} ({e})'
                ) from None
            row["image"] = image if os.path.isabs(image) else os.path.join(base, image)
            row["captions"] = [str(t) for t in texts]
            rows.append(row)
    if not rows:
        raise VlpError(f"data: manifest has no rows: {path}")
    return rows


def jsonl_records(path: str, process_index: int, process_count: int) -> Records:
    """A JSONL manifest (`manifest_rows`). Missing images are not checked here: like corrupt
    ones, they are skipped and counted when decoded."""
    rows = manifest_rows(path)
    return _from_lists(
        [row["image"] for row in rows],
        [row["captions"] for row in rows],
        [f"{path}:{i}" for i in range(len(rows))],
        process_index,
        process_count,
        read=tf.io.read_file,
    )


def _pad_captions(captions: list[list[str]]) -> np.ndarray:
    """Ragged caption lists -> a rectangular array, short rows repeated cyclically (so a random
    choice among them stays uniform over the distinct ones only when counts are equal)."""
    width = max(len(c) for c in captions)
    return np.array([[c[i % len(c)] for i in range(width)] for c in captions], dtype=object)


def _from_lists(sources, captions, ids, process_index, process_count, read) -> Records:
    keep = np.arange(len(sources)) % process_count == process_index
    table = {
        "source": np.asarray(sources, dtype=object)[keep],
        "captions": _pad_captions(captions)[keep],
        "id": np.asarray(ids, dtype=object)[keep],
    }
    ds = tf.data.Dataset.from_tensor_slices(table)
    ds = ds.map(lambda r: {"image": r["source"], "captions": r["captions"], "id": r["id"]})
    return Records(ds, int(keep.sum()), read)


def webdataset_records(pattern: str, process_index: int, process_count: int) -> Records:
    """img2dataset-style tar shards: members `KEY.jpg|png|...` and `KEY.txt` share a key.

    The shards are indexed once (member offsets; captions read then), and images are read by
    byte range, so the record stream is a plain indexable table that tf.data can checkpoint.
    """
    shards = sorted(glob.glob(pattern))
    if not shards:
        raise VlpError(f"data: no webdataset shards match {pattern}")
    sources, captions, ids = [], [], []
    for shard in shards:
        entries: dict[str, dict] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                entry = entries.setdefault(key, {})
                if ext.lower() in IMAGE_EXTENSIONS:
                    entry["image"] = f"{shard}\t{member.offset_data}\t{member.size}"
                elif ext.lower() in CAPTION_EXTENSIONS:
                    entry["caption"] = tar.extractfile(member).read().decode("utf-8").strip()
        for key, entry in entries.items():
            if "image" in entry and "caption" in entry:
                sources.append(entry["image"])
                captions.append([entry["caption"]])
                ids.append(f"{os.path.basename(shard)}/{key}")
    if not sources:
        raise VlpError(f"data: shards {pattern} hold no (image, .txt caption) pairs")
    return _from_lists(sources, captions, ids, process_index, process_count, read=_read_range)


def _read_range_py(spec) -> bytes:
    path, offset, size = spec.numpy().decode().split("\t")
    with open(path, "rb") as f:
        f.seek(int(offset))
        return f.read(int(size))


def _read_range(spec):
    data = tf.py_function(_read_range_py, [spec], tf.string)
    data.set_shape([])
    return data


def make_records(data_cfg: dict, split: str, process_index: int, process_count: int) -> Records:
    """Dispatches on `data.source` (tfds | jsonl | webdataset)."""
    source = data_cfg["source"]
    if source == "tfds":
        return tfds_records(
            data_cfg["name"],
            split,
            data_cfg["data_dir"],
            data_cfg["fields"],
            process_index,
            process_count,
        )
    if source == "jsonl":
        return jsonl_records(split, process_index, process_count)
    if source == "webdataset":
        return webdataset_records(split, process_index, process_count)
    raise VlpError(f"data.source '{source}' is not one of ['jsonl', 'tfds', 'webdataset']")


def _tfds_feature(name: str, data_dir: str | None, field: str):
    builder = tfds_builder(name, data_dir)
    check_feature(builder, name, field, "evals")
    return builder, _field(builder.info.features, field)


def tfds_classnames(name: str, data_dir: str | None, field: str) -> list[str]:
    """Class names of a (sequence of) ClassLabel feature."""
    _, feature = _tfds_feature(name, data_dir, field)
    names = getattr(feature, "names", None) or getattr(
        getattr(feature, "feature", None), "names", None
    )
    if names is None:
        raise VlpError(f"evals: '{field}' of {name} is not a class label")
    return list(names)


def tfds_labels(name: str, split: str, data_dir: str | None, field: str) -> list[np.ndarray]:
    """One feature's values over a TFDS split, in record order (an array per example)."""
    import tensorflow_datasets as tfds

    builder, _ = _tfds_feature(name, data_dir, field)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return [np.asarray(_field(example, field)) for example in tfds.as_numpy(ds)]
