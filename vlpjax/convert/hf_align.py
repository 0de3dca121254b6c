"""Hugging Face `AlignModel` checkpoints <-> vlpjax ALIGN (`DualEncoder`: `EfficientNet` + BERT
`TextTransformer`).

`load_hf_align(path)` reads a `save_pretrained` directory (as `load_hf_clip` does: safetensors
without torch, sharded indexes, or `pytorch_model.bin` when torch is importable) and returns
`(model_config, variables)`: a `config.model` dict that `vlpjax.models.build_model` turns into the
matching module, and **a variables dict** `{"params": ..., "batch_stats": ...}` of float32 numpy
arrays with exactly the tree of `nn.unbox(model.init(...))`. The EfficientNet's BatchNorm running
statistics live in `batch_stats` (`image_encoder/stem_bn/{mean,var}`,
`image_encoder/block_{i}/{expand,depthwise,project}_bn/{mean,var}`), so
`model.apply(variables, image=..., text=...)` is the reference's eval-mode forward pass.
`export_hf_align(variables, model_config, path)` is the inverse and needs both collections.

Both directions read one table, `MAPPING`: (collection/vlpjax path, HF tensor name, transform)
rows, `{i}` standing for a block or layer index; scanned text layers (`transformer/layers/...`)
are unstacked before and stacked after the table is applied.

Semantics worth knowing:
  * ALIGN's image embedding is the EfficientNet's pooled last stage with no projection
    (`image_projection=False`, `embed_dim` = that width, which must equal HF `projection_dim`);
    the text embedding is BERT's CLS token (no pooler) through `text_projection` with a bias.
  * HF divides the logits by `temperature`; vlpjax multiplies by `exp(logit_scale)`, so
    `logit_scale = log(1 / temperature)`. HF does not clamp: loaded configs set
    `logit_scale_max` = 1e4, far above any trained ALIGN.
  * BERT's pooler (`text_model.pooler.dense`) is unused by `AlignModel`: load ignores it and
    export writes zeros so `from_pretrained` finds a complete checkpoint. BatchNorm
    `num_batches_tracked` counters are ignored on load and written as 0.
  * `batch_norm_momentum` is read as Flax's momentum (running = m * running + (1 - m) * batch,
    the original TF EfficientNet's meaning); HF passes it to torch, where it weighs the new batch.
    Eval-mode outputs do not depend on it.
  * HF `drop_connect_rate` becomes stochastic depth (`drop_path_rate`, per example, as in the
    original EfficientNet; HF drops elements instead) and `hidden_dropout_prob` the text
    `dropout_rate`; vlpjax has no separate attention dropout (exported as 0).
  * vlpjax masks `pad_id` tokens out of attention as keys (HF takes an `attention_mask`) and
    always uses token-type id 0 unless given: the same outputs for right-padded text.
"""

from __future__ import annotations

import math
import re

import numpy as np

from vlpjax.convert.common import (
    CONV,
    DENSE,
    SAME,
    VLP_ACTIVATIONS,
    Row,
    TensorTable,
    Transform,
    activation,
    bert_layer_rows,
    check_activations,
    check_required,
    flat_for_export,
    flatten,
    from_hf,
    init_shapes,
    linear_rows,
    norm_rows,
    plain,
    read_hf_config,
    read_tensors,
    square,
    stack,
    take_model,
    to_hf,
    unflatten,
    write_hf,
)
from vlpjax.utils.errors import VlpError

# ---------------------------------------------------------------------------------------------
# The mapping table.

# HF `temperature` t (logits = cos / t) <-> vlpjax log scale log(1 / t).
TEMPERATURE = Transform(
    "temperature",
    lambda t, shape: (-np.log(np.float64(t))).reshape(shape),
    lambda s: np.exp(-np.float64(s)),
    lambda s: tuple(s),
)


def _norm(vlp: str, hf: str) -> list[Row]:
    return norm_rows(f"params/{vlp}", hf)


def _batch_norm(vlp: str, hf: str) -> list[tuple[str, str, Transform]]:
    return _norm(vlp, hf) + [
        (f"batch_stats/{vlp}/mean", f"{hf}.running_mean", SAME),
        (f"batch_stats/{vlp}/var", f"{hf}.running_var", SAME),
    ]


def _linear(vlp: str, hf: str, kernel: Transform, bias: Transform) -> list[Row]:
    return linear_rows(f"params/{vlp}", hf, kernel, bias)


def _block_rows() -> list[tuple[str, str, Transform]]:
    """One MBConv block: vlpjax `image_encoder/block_{i}` <-> HF `AlignVisionBlock`."""
    vlp, hf = "image_encoder/block_{i}", "vision_model.encoder.blocks.{i}"
    return [
        (f"params/{vlp}/expand_conv/kernel", f"{hf}.expansion.expand_conv.weight", CONV),
        *_batch_norm(f"{vlp}/expand_bn", f"{hf}.expansion.expand_bn"),
        (f"params/{vlp}/depthwise_conv/kernel", f"{hf}.depthwise_conv.depthwise_conv.weight", CONV),
        *_batch_norm(f"{vlp}/depthwise_bn", f"{hf}.depthwise_conv.depthwise_norm"),
        *_linear(f"{vlp}/se_reduce", f"{hf}.squeeze_excite.reduce", CONV, SAME),
        *_linear(f"{vlp}/se_expand", f"{hf}.squeeze_excite.expand", CONV, SAME),
        (f"params/{vlp}/project_conv/kernel", f"{hf}.projection.project_conv.weight", CONV),
        *_batch_norm(f"{vlp}/project_bn", f"{hf}.projection.project_bn"),
    ]


def _layer_rows() -> list[Row]:
    """One post-LN BERT layer: vlpjax TransformerBlock <-> HF `AlignTextLayer`."""
    return bert_layer_rows(
        "params/text_encoder/transformer/layer_{i}", "text_model.encoder.layer.{i}"
    )


# (collection/vlpjax param path, HF tensor name, transform); `{i}` is an index on both sides.
MAPPING: list[tuple[str, str, Transform]] = [
    ("params/logit_scale", "temperature", TEMPERATURE),
    *_linear("text_projection", "text_projection", DENSE, SAME),
    ("params/image_encoder/stem_conv/kernel", "vision_model.embeddings.convolution.weight", CONV),
    *_batch_norm("image_encoder/stem_bn", "vision_model.embeddings.batchnorm"),
    *_block_rows(),
    ("params/text_encoder/token_embed/embedding", "text_model.embeddings.word_embeddings.weight",
     SAME),
    ("params/text_encoder/position_embed/embedding",
     "text_model.embeddings.position_embeddings.weight", SAME),
    ("params/text_encoder/type_embed/embedding",
     "text_model.embeddings.token_type_embeddings.weight", SAME),
    *_norm("text_encoder/embed_norm", "text_model.embeddings.LayerNorm"),
    *_layer_rows(),
]  # fmt: skip

# Tensors with no vlpjax counterpart: BN step counters, BERT's unused pooler, old buffers.
IGNORED_HF = re.compile(
    r"^(vision_model\..*\.num_batches_tracked"
    r"|text_model\.pooler\.dense\.(weight|bias)"
    r"|text_model\.embeddings\.(position_ids|token_type_ids))$"
)

_TABLE = TensorTable(MAPPING)
hf_name = _TABLE.hf_name
vlp_path = _TABLE.vlp_path


# ---------------------------------------------------------------------------------------------
# Configs.

# transformers' AlignTextConfig / AlignVisionConfig / AlignConfig defaults (for omitted keys).
HF_TEXT_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
    layer_norm_eps=1e-12, pad_token_id=0,
)  # fmt: skip
HF_VISION_DEFAULTS = dict(
    num_channels=3, image_size=600, width_coefficient=2.0, depth_coefficient=3.1,
    depth_divisor=8, kernel_sizes=[3, 3, 5, 3, 5, 5, 3], in_channels=[32, 16, 24, 40, 80, 112, 192],
    out_channels=[16, 24, 40, 80, 112, 192, 320], depthwise_padding=[], strides=[1, 2, 2, 2, 1, 2, 1],
    num_block_repeats=[1, 2, 2, 3, 3, 4, 1], expand_ratios=[1, 6, 6, 6, 6, 6, 6],
    squeeze_expansion_ratio=0.25, hidden_act="swish", hidden_dim=2560, pooling_type="mean",
    batch_norm_eps=1e-3, batch_norm_momentum=0.99, drop_connect_rate=0.2,
)  # fmt: skip
HF_ALIGN_DEFAULTS = dict(projection_dim=640, temperature_init_value=1.0)

# HF hard-codes the stem width (32 before width scaling).
STEM_WIDTH = 32
# HF never clamps the logit scale; this only has to sit above any trained ALIGN's 1/temperature.
LOGIT_SCALE_MAX = 1e4
# Export's AvgPool window (HF `hidden_dim`): at least the final feature map, so pooling is global.
MIN_HIDDEN_DIM = 2560
_BLOCK_LISTS = ("num_block_repeats", "kernel_sizes", "strides", "expand_ratios", "out_channels")


def _image_tower(vision: dict, where: str) -> dict:
    from vlpjax.encoders.efficientnet import EfficientNet, round_filters

    if int(vision["num_channels"]) != 3:
        raise VlpError(f"{where}: vision_config.num_channels={vision['num_channels']}, need 3")
    lists = {k: list(vision[k]) for k in ("in_channels", *_BLOCK_LISTS)}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1 or not lists["out_channels"]:
        raise VlpError(f"{where}: vision_config block lists differ in length: {lengths}")
    width, divisor = float(vision["width_coefficient"]), int(vision["depth_divisor"])
    widths = [STEM_WIDTH, *lists["out_channels"][:-1]]
    for i, (have, want) in enumerate(zip(lists["in_channels"], widths)):
        if round_filters(have, width, divisor) != round_filters(want, width, divisor):
            raise VlpError(
                f"{where}: vision_config.in_channels[{i}]={have} does not chain from "
                f"{'the stem (32)' if i == 0 else f'out_channels[{i - 1}]={want}'}"
            )
    if vision["pooling_type"] not in ("mean", "max"):
        raise VlpError(
            f"{where}: vision_config.pooling_type '{vision['pooling_type']}' is not mean or max"
        )
    image = dict(
        image_size=square(vision["image_size"], "image_size", where),
        width_coefficient=width,
        depth_coefficient=float(vision["depth_coefficient"]),
        depth_divisor=divisor,
        blocks=tuple(tuple(int(x) for x in row) for row in zip(*(lists[k] for k in _BLOCK_LISTS))),
        stem_width=STEM_WIDTH,
        se_ratio=float(vision["squeeze_expansion_ratio"]),
        head_width=0,
        pool=vision["pooling_type"],
        depthwise_padding=tuple(int(i) for i in vision["depthwise_padding"]),
        activation=activation(vision["hidden_act"], where),
        bn_eps=float(vision["batch_norm_eps"]),
        bn_momentum=float(vision["batch_norm_momentum"]),
        drop_path_rate=float(vision["drop_connect_rate"]),
    )
    # HF's AvgPool2d(hidden_dim) is global only when its window covers the final feature map.
    side = EfficientNet(**image).feature_size()
    if int(vision["hidden_dim"]) < side:
        raise VlpError(
            f"{where}: vision_config.hidden_dim={vision['hidden_dim']} (the pooling window) is "
            f"smaller than the {side}x{side} final feature map of {image['image_size']}px images"
        )
    return image


def hf_align_model_config(path: str, scan: bool = False) -> dict:
    """A HF ALIGN checkpoint directory's `config.json` -> a vlpjax `config.model` dict."""
    from vlpjax.encoders.efficientnet import round_filters

    config_path, hf = read_hf_config(path, "align", "AlignModel", "an ALIGN")
    text = {**HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    vision = {**HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    top = {**HF_ALIGN_DEFAULTS, **{k: hf[k] for k in HF_ALIGN_DEFAULTS if hf.get(k) is not None}}

    image = _image_tower(vision, config_path)
    embed = round_filters(
        image["blocks"][-1][4], image["width_coefficient"], image["depth_divisor"]
    )
    if int(top["projection_dim"]) != embed:
        raise VlpError(
            f"{config_path}: projection_dim={top['projection_dim']} differs from the vision "
            f"tower's width {embed} (ALIGN compares the unprojected image features)"
        )
    temperature = float(top["temperature_init_value"])
    if temperature <= 0:
        raise VlpError(f"{config_path}: temperature_init_value={temperature} must be > 0")
    if int(text["hidden_size"]) % int(text["num_attention_heads"]):
        raise VlpError(
            f"{config_path}: text_config.hidden_size={text['hidden_size']} is not divisible by "
            f"num_attention_heads={text['num_attention_heads']}"
        )
    pad = text.get("pad_token_id")
    text_tower = dict(
        vocab_size=int(text["vocab_size"]),
        max_length=int(text["max_position_embeddings"]),
        width=int(text["hidden_size"]),
        depth=int(text["num_hidden_layers"]),
        num_heads=int(text["num_attention_heads"]),
        mlp_dim=int(text["intermediate_size"]),
        causal=False,
        pool="cls",
        pad_id=int(pad) if pad is not None else 0,
        final_norm=False,
        norm_first=False,
        embed_norm=True,
        type_vocab_size=int(text["type_vocab_size"]),
        activation=activation(text["hidden_act"], config_path),
        norm_eps=float(text["layer_norm_eps"]),
        dropout_rate=float(text["hidden_dropout_prob"]),
        scan=bool(scan),
    )
    return dict(
        name="align",
        dtype="float32",
        embed_dim=embed,
        logit_scale_init=-math.log(temperature),
        logit_scale_max=LOGIT_SCALE_MAX,
        projection_bias=True,
        image_projection=False,
        text_projection=True,
        image=image,
        text=text_tower,
    )


def _hf_config(model_config) -> dict:
    """A vlpjax `config.model` (dict or ConfigDict) -> a transformers AlignConfig dict."""
    from vlpjax.encoders.efficientnet import EfficientNet, round_filters

    cfg, image, text = take_model(model_config, "align", "hf_align", EfficientNet)

    required = {
        "model.projection_bias": (cfg["projection_bias"], True),
        "model.image_projection": (cfg["image_projection"], False),
        "model.text_projection": (cfg["text_projection"], True),
        "model.logit_bias_init": (cfg["logit_bias_init"], None),
        "model.image.stem_width": (image["stem_width"], STEM_WIDTH),
        "model.image.head_width": (image["head_width"], 0),
        "model.text.causal": (text["causal"], False),
        "model.text.pool": (text["pool"], "cls"),
        "model.text.final_norm": (text["final_norm"], False),
        "model.text.norm_first": (text["norm_first"], False),
        "model.text.embed_norm": (text["embed_norm"], True),
    }
    check_required(required, "ALIGN")
    if int(text["type_vocab_size"]) < 1:
        raise VlpError(
            "model.text.type_vocab_size=0 has no Hugging Face ALIGN equivalent (need >= 1)"
        )
    if image["pool"] not in ("mean", "max"):
        raise VlpError(f"model.image.pool '{image['pool']}' is not mean or max")
    check_activations(image, text)
    blocks = [tuple(int(x) for x in row) for row in image["blocks"]]
    if not blocks or any(len(row) != 5 for row in blocks):
        raise VlpError(
            f"model.image.blocks={image['blocks']!r}: need rows of "
            "(repeats, kernel_size, stride, expand_ratio, out_channels)"
        )
    width = round_filters(blocks[-1][4], image["width_coefficient"], image["depth_divisor"])
    if int(cfg["embed_dim"]) != width:
        raise VlpError(
            f"model.embed_dim={cfg['embed_dim']} differs from the image tower's width {width}"
        )
    repeats, kernels, strides, expands, outs = (list(c) for c in zip(*blocks))
    return {
        "architectures": ["AlignModel"],
        "model_type": "align",
        "dtype": "float32",
        "projection_dim": width,
        "temperature_init_value": math.exp(-float(cfg["logit_scale_init"])),
        "text_config": {
            "model_type": "align_text_model",
            "vocab_size": int(text["vocab_size"]),
            "hidden_size": int(text["width"]),
            "num_hidden_layers": int(text["depth"]),
            "num_attention_heads": int(text["num_heads"]),
            "intermediate_size": int(text["mlp_dim"]),
            "hidden_act": VLP_ACTIVATIONS[text["activation"]],
            "hidden_dropout_prob": float(text["dropout_rate"]),
            "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": int(text["max_length"]),
            "type_vocab_size": int(text["type_vocab_size"]),
            "layer_norm_eps": float(text["norm_eps"]),
            "pad_token_id": int(text["pad_id"]),
        },
        "vision_config": {
            "model_type": "align_vision_model",
            "num_channels": 3,
            "image_size": int(image["image_size"]),
            "width_coefficient": float(image["width_coefficient"]),
            "depth_coefficient": float(image["depth_coefficient"]),
            "depth_divisor": int(image["depth_divisor"]),
            "kernel_sizes": kernels,
            "in_channels": [STEM_WIDTH, *outs[:-1]],
            "out_channels": outs,
            "depthwise_padding": [int(i) for i in image["depthwise_padding"]],
            "strides": strides,
            "num_block_repeats": repeats,
            "expand_ratios": expands,
            "squeeze_expansion_ratio": float(image["se_ratio"]),
            "hidden_act": "swish"
            if image["activation"] == "silu"
            else VLP_ACTIVATIONS[image["activation"]],
            "hidden_dim": max(MIN_HIDDEN_DIM, int(image["image_size"])),
            "pooling_type": image["pool"],
            "batch_norm_eps": float(image["bn_eps"]),
            "batch_norm_momentum": float(image["bn_momentum"]),
            "drop_connect_rate": float(image["drop_path_rate"]),
        },
    }


# ---------------------------------------------------------------------------------------------
# Trees.


def _expected_shapes(model_config: dict) -> dict[str, tuple]:
    """Unrolled `collection/path` -> shape for params and batch_stats, from the module itself."""
    unrolled = {**model_config, "text": {**model_config["text"], "scan": False}}
    return {k: tuple(v.shape) for k, v in flatten(init_shapes(unrolled)).items()}


def _bn_counters(flat_hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A zero `num_batches_tracked` for every BatchNorm being exported."""
    return {
        name[: -len("running_mean")] + "num_batches_tracked": np.zeros((), np.int64)
        for name in flat_hf
        if name.endswith(".running_mean")
    }


# ---------------------------------------------------------------------------------------------
# Entry points.


def _check_temperature(path: str, name: str, array: np.ndarray, transform: Transform) -> None:
    """Rejects a `temperature` that vlpjax's `logit_scale` cannot hold."""
    if transform is TEMPERATURE:
        if not np.all(array > 0):
            raise VlpError(f"{path}: tensor {name}={array.tolist()} must be > 0")
        if np.any(1.0 / array > LOGIT_SCALE_MAX):
            raise VlpError(
                f"{path}: tensor {name}={array.tolist()} gives a logit scale above "
                f"{LOGIT_SCALE_MAX:g}, where vlpjax would clamp it"
            )


def load_hf_align(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face AlignModel directory -> (vlpjax `config.model` dict, float32 numpy
    variables `{"params": ..., "batch_stats": ...}`).

    `scan=True` stacks the text tower's layers under `transformer/layers` (for `scan=True`).
    """
    model_config = hf_align_model_config(path, scan=scan)
    tensors = read_tensors(path)
    flat = from_hf(
        path,
        tensors,
        _expected_shapes(model_config),
        _TABLE,
        IGNORED_HF,
        "an AlignModel",
        check=_check_temperature,
    )
    if scan:
        flat = stack(flat)
    return model_config, unflatten(flat)


def export_hf_align(variables, model_config, path: str) -> None:
    """vlpjax ALIGN variables `{"params": ..., "batch_stats": ...}` (text layers scanned or
    unrolled, boxed or not) -> a HF AlignModel directory (`config.json`, `model.safetensors`)
    that `transformers.AlignModel.from_pretrained` loads with no missing or unexpected keys."""
    from flax import linen as nn

    hf_config = _hf_config(model_config)
    variables = nn.unbox(variables)
    if not hasattr(variables, "keys") or not {"params", "batch_stats"} <= set(variables.keys()):
        raise VlpError(
            "export_hf_align: need a variables dict {'params': ..., 'batch_stats': ...} "
            "(ALIGN's BatchNorm statistics are part of the checkpoint)"
        )
    variables = {k: variables[k] for k in ("params", "batch_stats")}
    flat = flat_for_export(variables)
    expected = _expected_shapes(plain(model_config))
    tensors = to_hf(flat, expected, _TABLE, "export_hf_align", "variable")
    tensors.update(_bn_counters(tensors))
    width = hf_config["text_config"]["hidden_size"]
    tensors["text_model.pooler.dense.weight"] = np.zeros((width, width), np.float32)
    tensors["text_model.pooler.dense.bias"] = np.zeros((width,), np.float32)

    write_hf(path, hf_config, tensors)
