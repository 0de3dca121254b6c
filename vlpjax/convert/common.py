"""Machinery the Hugging Face converters share (`hf_clip`, `hf_align`, `hf_bart`, `hf_gpt2`,
`hf_blip`).

Each converter keeps its own mapping table and config translation; this module holds what they
do alike: the tensor `Transform`s, table rows for norms, linears and BERT layers, the table
lookup (`TensorTable`), splitting and fusing fused q/k/v tensors, reading `save_pretrained`
directories (config.json, safetensors / torch tensors), flat `a/b/c` param trees, stacking and
unstacking scanned layers, the load and export passes over a table, and writing a directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlpjax.utils.errors import VlpError

# ---------------------------------------------------------------------------------------------
# Transforms and the table lookup.


@dataclasses.dataclass(frozen=True)
class Transform:
    """How one tensor changes between the layouts.

    to_vlp(hf_array, vlp_shape) -> vlpjax array; to_hf(vlp_array) -> HF array;
    hf_shape(vlp_shape) -> the HF shape a tensor must have to fill `vlp_shape`.
    """

    name: str
    to_vlp: Callable[[np.ndarray, tuple], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple], tuple]


def _dense(num_in: int) -> Transform:
    """torch Linear weight [out, in] <-> Flax kernel [*in_axes, *out_axes] (`num_in` in-axes)."""
    return Transform(
        f"dense{num_in}",
        lambda w, shape: w.T.reshape(shape),
        lambda k: k.reshape(math.prod(k.shape[:num_in]), -1).T,
        lambda s: (math.prod(s[num_in:]), math.prod(s[:num_in])),
    )


SAME = Transform("same", lambda x, shape: x.reshape(shape), lambda x: x, lambda s: tuple(s))
# Per-head biases [H, Dh] <-> [H * Dh].
FLAT = Transform(
    "flat", lambda x, shape: x.reshape(shape), lambda x: x.reshape(-1), lambda s: (math.prod(s),)
)
# Linear weights: q/k/v [D, H, Dh] and projections/MLP [in, out] have one input axis, `out` two.
DENSE = _dense(1)
DENSE_HEADS_IN = _dense(2)
# Conv2d weight [D, C, p, p] <-> Flax Conv kernel [p, p, C, D].
CONV = Transform(
    "conv",
    lambda w, shape: w.transpose(2, 3, 1, 0).reshape(shape),
    lambda k: k.transpose(3, 2, 0, 1),
    lambda s: (s[3], s[2], s[0], s[1]),
)


Row = tuple[str, str, Transform]  # (vlpjax path, HF tensor name, transform)


def norm_rows(vlp: str, hf: str) -> list[Row]:
    """A LayerNorm (or BatchNorm's affine part): scale/bias <-> weight/bias."""
    return [(f"{vlp}/scale", f"{hf}.weight", SAME), (f"{vlp}/bias", f"{hf}.bias", SAME)]


def linear_rows(vlp: str, hf: str, kernel: Transform, bias: Transform) -> list[Row]:
    return [(f"{vlp}/kernel", f"{hf}.weight", kernel), (f"{vlp}/bias", f"{hf}.bias", bias)]


def bert_layer_rows(
    vlp: str, hf: str, attentions: tuple[tuple[str, str], ...] = (("self_attention", "attention"),)
) -> list[Row]:
    """One post-LN BERT layer: vlpjax TransformerBlock `vlp` <-> HF `hf` (`BertLayer` names).
    `attentions` pairs each vlpjax attention (its norm is `{name}_norm`) with its HF module
    (`attention`, BLIP's `crossattention`)."""
    rows = []
    for ours, theirs in attentions:
        for name in ("query", "key", "value"):
            rows += linear_rows(f"{vlp}/{ours}/{name}", f"{hf}.{theirs}.self.{name}", DENSE, FLAT)
        rows += linear_rows(
            f"{vlp}/{ours}/out", f"{hf}.{theirs}.output.dense", DENSE_HEADS_IN, SAME
        )
        rows += norm_rows(f"{vlp}/{ours}_norm", f"{hf}.{theirs}.output.LayerNorm")
    rows += linear_rows(f"{vlp}/mlp/fc1", f"{hf}.intermediate.dense", DENSE, SAME)
    rows += linear_rows(f"{vlp}/mlp/fc2", f"{hf}.output.dense", DENSE, SAME)
    return rows + norm_rows(f"{vlp}/mlp_norm", f"{hf}.output.LayerNorm")


def split_fused(
    path: str, tensors: dict[str, np.ndarray], fused: re.Pattern, parts: tuple[str, ...], axis: int
) -> dict[str, np.ndarray]:
    """Splits each tensor whose name matches `fused` (`A.B.weight`) into equal pieces along
    `axis`, named `A.B.{part}.weight` in the order of `parts` (fused q/k/v projections)."""
    out = {}
    for name, array in tensors.items():
        if not fused.match(name):
            out[name] = array
            continue
        if array.shape[axis] % len(parts):
            raise VlpError(
                f"{path}: tensor {name} has shape {list(array.shape)}, whose axis {axis} does "
                f"not split into {', '.join(parts)}"
            )
        head, _, leaf = name.rpartition(".")
        for part, piece in zip(parts, np.split(array, len(parts), axis=axis), strict=True):
            out[f"{head}.{part}.{leaf}"] = piece
    return out


def fuse(
    tensors: dict[str, np.ndarray], fused: re.Pattern, parts: tuple[str, ...], axis: int
) -> dict[str, np.ndarray]:
    """The inverse of `split_fused`: `A.B.{part}.weight` pieces -> one `A.B.weight`."""
    out, pieces = {}, {}
    for name, array in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        head, _, part = prefix.rpartition(".")
        whole = f"{head}.{leaf}"
        if part in parts and fused.match(whole):
            pieces.setdefault(whole, {})[part] = array
        else:
            out[name] = array
    for whole, by_part in pieces.items():
        joined = np.concatenate([by_part[p] for p in parts], axis=axis)
        out[whole] = np.array(joined, np.float32, order="C")
    return out


def _pattern(template: str) -> re.Pattern:
    parts = [re.escape(p) for p in template.split("{i}")]
    return re.compile("^" + r"(\d+)".join(parts) + "$")


class TensorTable:
    """A mapping table of (vlpjax path, HF tensor name, transform) rows, `{i}` an index on both
    sides, looked up in either direction."""

    def __init__(self, rows: list[tuple[str, str, Transform]]):
        self._compiled = [(_pattern(v), _pattern(h), v, h, t) for v, h, t in rows]

    def hf_name(self, vlp_path: str) -> tuple[str, Transform] | None:
        """vlpjax path (unrolled) -> (HF name, transform), or None when the table has no row."""
        for vlp_re, _, _, hf, transform in self._compiled:
            m = vlp_re.match(vlp_path)
            if m:
                return hf.replace("{i}", m.group(1)) if m.groups() else hf, transform
        return None

    def vlp_path(self, name: str) -> tuple[str, Transform] | None:
        """HF tensor name -> (vlpjax path (unrolled), transform), or None."""
        for _, hf_re, vlp, _, transform in self._compiled:
            m = hf_re.match(name)
            if m:
                return vlp.replace("{i}", m.group(1)) if m.groups() else vlp, transform
        return None


# ---------------------------------------------------------------------------------------------
# Configs.

# HF name -> vlpjax activation, and back.
HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
VLP_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "silu": "silu",
}


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise VlpError(f"{path}: not valid JSON ({e})") from None


def check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise VlpError(f"Hugging Face checkpoint directory not found: {path}")


def read_hf_config(path: str, model_type: str, architecture: str, label: str) -> tuple[str, dict]:
    """A checkpoint directory -> (path of its config.json, that file's dict), checking that it is
    a `model_type` / `architecture` model (`label`, e.g. "a CLIP", names it in errors)."""
    check_dir(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise VlpError(f"{path}: no config.json (expected a Hugging Face {architecture} directory)")
    hf = read_json(config_path)
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != model_type and architecture not in architectures:
        raise VlpError(
            f"{config_path}: not {label} model (model_type '{hf.get('model_type')}', "
            f"architectures {architectures}); expected model_type '{model_type}'"
        )
    return config_path, hf


def square(value, key: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise VlpError(f"{where}: vision_config.{key}={list(value)} is not square")
        value = value[0]
    return int(value)


def activation(name: str, where: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise VlpError(
            f"{where}: hidden_act '{name}' has no vlpjax equivalent; "
            f"valid: {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def take_model(model_config, name: str, fmt: str, image_module: type) -> tuple[dict, dict, dict]:
    """A vlpjax `config.model` -> (top-level fields, image tower fields, text tower fields), all
    with defaults filled, checking `name`; the image tower is an `image_module`."""
    from vlpjax.encoders import TextTransformer
    from vlpjax.models import module_fields
    from vlpjax.models.dual_encoder import DualEncoder
    from vlpjax.utils.config import REQUIRED, take

    skip = ("image_encoder", "text_encoder")
    top_fields = {k: v for k, v in module_fields(DualEncoder).items() if k not in skip}
    cfg = take(
        model_config,
        {"name": REQUIRED, "dtype": "float32", "image": REQUIRED, "text": REQUIRED, **top_fields},
        "model",
    )
    if cfg["name"] != name:
        raise VlpError(f"model.name '{cfg['name']}': only '{name}' models export to {fmt}")
    image = take(cfg["image"], module_fields(image_module), "model.image")
    text = take(cfg["text"], module_fields(TextTransformer), "model.text")
    return cfg, image, text


def check_required(required: dict, label: str) -> None:
    """Fails on a `required` {key: (value, wanted)} that differs, naming the HF `label` model."""
    for key, (value, want) in required.items():
        if value != want:
            raise VlpError(
                f"{key}={value!r} has no Hugging Face {label} equivalent (need {want!r})"
            )


def check_activations(image: dict, text: dict) -> None:
    """Fails on a tower activation with no Hugging Face name."""
    for where, tower in (("model.image", image), ("model.text", text)):
        if tower["activation"] not in VLP_ACTIVATIONS:
            raise VlpError(
                f"{where}.activation '{tower['activation']}' has no Hugging Face equivalent"
            )


def plain(config) -> dict:
    """A ConfigDict / mapping (possibly nested) -> plain dicts."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return {
        k: plain(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
        for k, v in dict(config).items()
    }


# ---------------------------------------------------------------------------------------------
# Tensor files.

# safetensors dtype -> numpy; BF16 is widened by hand (numpy has no bfloat16).
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16,
}  # fmt: skip


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    import safetensors.numpy

    try:
        return safetensors.numpy.load_file(file)
    except TypeError:  # a dtype numpy lacks (bfloat16): parse the (simple) format directly
        pass
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise VlpError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], _ST_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return out


def _read_torch(file: str) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory, safetensors first, then pytorch_model.bin."""
    for single, index, reader in (
        ("model.safetensors", "model.safetensors.index.json", _read_safetensors),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_torch),
    ):
        files = []
        if os.path.isfile(os.path.join(path, single)):
            files = [single]
        elif os.path.isfile(os.path.join(path, index)):
            files = sorted(set(read_json(os.path.join(path, index))["weight_map"].values()))
        if not files:
            continue
        if reader is _read_torch:
            try:
                import torch  # noqa: F401
            except ImportError:
                raise VlpError(
                    f"{path}: has only {files[0]}, which needs torch to read; install torch "
                    "or save the model with safetensors"
                ) from None
        tensors = {}
        for file in files:
            full = os.path.join(path, file)
            if not os.path.isfile(full):
                raise VlpError(f"{path}: shard {file} named in {index} is missing")
            tensors.update(reader(full))
        return tensors
    raise VlpError(f"{path}: no model.safetensors or pytorch_model.bin")


def write_hf(path: str, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Writes a HF checkpoint directory: `config.json` and `model.safetensors`."""
    import safetensors.numpy

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")
    safetensors.numpy.save_file(
        tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"}
    )


# ---------------------------------------------------------------------------------------------
# Trees.


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


_SCANNED = "/transformer/layers/"
_UNROLLED = re.compile(r"^(.*/transformer)/layer_(\d+)/(.*)$")


def unstack(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned `transformer/layers/...` [N, ...] leaves -> `transformer/layer_{i}/...` leaves."""
    out = {}
    for path, value in flat.items():
        if _SCANNED in path:
            head, tail = path.split(_SCANNED, 1)
            for i in range(value.shape[0]):
                out[f"{head}/transformer/layer_{i}/{tail}"] = value[i]
        else:
            out[path] = value
    return out


def stack(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`transformer/layer_{i}/...` leaves -> scanned `transformer/layers/...` [N, ...] leaves."""
    out, layers = {}, {}
    for path, value in flat.items():
        m = _UNROLLED.match(path)
        if m:
            layers.setdefault(f"{m.group(1)}/layers/{m.group(3)}", {})[int(m.group(2))] = value
        else:
            out[path] = value
    for path, by_index in layers.items():
        out[path] = np.stack([by_index[i] for i in range(len(by_index))])
    return out


def names(items, limit: int = 20) -> str:
    items = sorted(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def init_shapes(model_config: dict) -> dict:
    """The unboxed `model.init` variables tree of `model_config` as shapes (no computation)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import linen as nn

    from vlpjax.models import build_model

    model = build_model(ml_collections.ConfigDict(model_config))
    size, length = model_config["image"]["image_size"], model_config["text"]["max_length"]
    shapes = jax.eval_shape(
        lambda rng: model.init(
            rng,
            image=jnp.zeros((1, size, size, 3), jnp.float32),
            text=jnp.zeros((1, length), jnp.int32),
            train=False,
        ),
        jax.random.key(0),
    )
    return nn.unbox(dict(shapes))


# ---------------------------------------------------------------------------------------------
# Applying a table.


def from_hf(
    path: str,
    tensors: dict[str, np.ndarray],
    expected: dict[str, tuple],
    table: TensorTable,
    ignored: re.Pattern,
    kind: str,
    check: Callable[[str, str, np.ndarray, Transform], None] | None = None,
) -> dict[str, np.ndarray]:
    """HF tensors -> flat unrolled float32 vlpjax leaves with exactly the `expected` paths.

    `ignored` names tensors to skip; `kind` (e.g. "a CLIPModel") names the checkpoint in errors;
    `check(path, name, float32 array, transform)` may reject a tensor's values.
    """
    flat, unexpected = {}, []
    for name, array in tensors.items():
        if ignored.match(name):
            continue
        row = table.vlp_path(name)
        if row is None or row[0] not in expected:
            unexpected.append(name)
            continue
        target, transform = row
        shape = expected[target]
        want = transform.hf_shape(shape)
        if tuple(array.shape) != want:
            raise VlpError(
                f"{path}: tensor {name} has shape {list(array.shape)}, expected {list(want)} "
                f"(config.json and weights disagree)"
            )
        array = np.asarray(array, np.float32)
        if check is not None:
            check(path, name, array, transform)
        flat[target] = np.array(transform.to_vlp(array, shape), np.float32, order="C")
    missing = [(table.hf_name(p) or (p,))[0] for p in expected if p not in flat]
    if missing or unexpected:
        parts = [f"missing tensors: {names(missing)}"] if missing else []
        parts += [f"unexpected tensors: {names(unexpected)}"] if unexpected else []
        raise VlpError(f"{path}: not {kind} checkpoint of its config.json; " + "; ".join(parts))
    return flat


def flat_for_export(tree) -> dict[str, np.ndarray]:
    """A (scanned or unrolled) vlpjax tree -> flat unrolled float32 leaves."""
    return unstack({k: np.asarray(v, np.float32) for k, v in flatten(tree).items()})


def to_hf(
    flat: dict[str, np.ndarray],
    expected: dict[str, tuple],
    table: TensorTable,
    who: str,
    noun: str,
) -> dict[str, np.ndarray]:
    """Flat unrolled vlpjax leaves -> HF tensors, after checking they are exactly `expected`.

    `who` (e.g. "export_hf_clip") and `noun` ("param" / "variable") word the errors.
    """
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    if missing or unexpected:
        parts = [f"missing {noun}s: {names(missing)}"] if missing else []
        parts += [f"unexpected {noun}s: {names(unexpected)}"] if unexpected else []
        raise VlpError(f"{who}: {noun}s do not match model_config; " + "; ".join(parts))
    wrong = [
        f"{k} {list(v.shape)} (want {list(expected[k])})"
        for k, v in flat.items()
        if v.shape != expected[k]
    ]
    if wrong:
        raise VlpError(f"{who}: {noun} shapes do not match model_config: {names(wrong)}")

    tensors = {}
    for vlp, value in flat.items():
        name, transform = table.hf_name(vlp)
        tensors[name] = np.array(transform.to_hf(value), np.float32, order="C")  # keeps 0-d
    return tensors
