"""Hugging Face `CLIPModel` checkpoints <-> vlpjax CLIP (`DualEncoder`: `ViT` + `TextTransformer`).

`load_hf_clip(path)` reads a `save_pretrained` directory (`config.json` + `model.safetensors`, a
sharded `model.safetensors.index.json`, or `pytorch_model.bin` when torch is importable) and
returns `(model_config, params)`: a `config.model` dict that `vlpjax.models.build_model` turns
into the matching module, and plain float32 numpy params with exactly the tree of
`nn.unbox(model.init(...)["params"])`. `export_hf_clip(params, model_config, path)` is the inverse.

Both directions read one table, `MAPPING`: (vlpjax path, HF tensor name, transform) rows, where
`{i}` stands for a layer index. vlpjax paths are the unrolled ones (`transformer/layer_{i}/...`);
scanned params (`transformer/layers/...`, layers stacked on axis 0) are unstacked before and
stacked after the table is applied.

Semantics worth knowing:
  * HF configs with `eos_token_id == 2` (before transformers PR #24773) pool the text at the
    position of the largest token id, i.e. CLIP's end-of-text token `vocab_size - 1`; they load
    with `eos_id = vocab_size - 1`. Newer configs pool at the first `eos_token_id`, as vlpjax does.
  * vlpjax masks `pad_id` tokens out of attention as keys (HF takes an `attention_mask`); the
    pooled embedding is the same whenever padding comes after the end-of-text token.
  * vlpjax clamps `exp(logit_scale)` at 100, HF does not (trained CLIP models sit at 100).
"""

from __future__ import annotations

import re

from vlpjax.convert.common import (
    CONV,
    DENSE,
    DENSE_HEADS_IN,
    FLAT,
    SAME,
    VLP_ACTIVATIONS,
    TensorTable,
    Transform,
    activation,
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


def _layer_rows(vlp: str, hf: str) -> list[tuple[str, str, Transform]]:
    """One pre-LN encoder layer: vlpjax TransformerBlock <-> HF CLIPEncoderLayer."""
    vlp, hf = f"{vlp}/transformer/layer_{{i}}", f"{hf}.encoder.layers.{{i}}"
    rows = norm_rows(f"{vlp}/self_attention_norm", f"{hf}.layer_norm1")
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows += linear_rows(f"{vlp}/self_attention/{ours}", f"{hf}.self_attn.{theirs}", DENSE, FLAT)
    rows += linear_rows(
        f"{vlp}/self_attention/out", f"{hf}.self_attn.out_proj", DENSE_HEADS_IN, SAME
    )
    rows += norm_rows(f"{vlp}/mlp_norm", f"{hf}.layer_norm2")
    rows += linear_rows(f"{vlp}/mlp/fc1", f"{hf}.mlp.fc1", DENSE, SAME)
    rows += linear_rows(f"{vlp}/mlp/fc2", f"{hf}.mlp.fc2", DENSE, SAME)
    return rows


IMG, TXT = "image_encoder", "text_encoder"
HF_IMG, HF_TXT = "vision_model", "text_model"

# (vlpjax param path, HF tensor name, transform); `{i}` is a layer index on both sides.
MAPPING: list[tuple[str, str, Transform]] = [
    ("logit_scale", "logit_scale", SAME),  # both store the log
    ("image_projection/kernel", "visual_projection.weight", DENSE),
    ("text_projection/kernel", "text_projection.weight", DENSE),
    (f"{IMG}/class_token", f"{HF_IMG}.embeddings.class_embedding", SAME),
    (f"{IMG}/patch_embed/projection/kernel", f"{HF_IMG}.embeddings.patch_embedding.weight", CONV),
    (f"{IMG}/position_embed/embedding", f"{HF_IMG}.embeddings.position_embedding.weight", SAME),
    *norm_rows(f"{IMG}/pre_norm", f"{HF_IMG}.pre_layrnorm"),
    *_layer_rows(IMG, HF_IMG),
    *norm_rows(f"{IMG}/post_norm", f"{HF_IMG}.post_layernorm"),
    (f"{TXT}/token_embed/embedding", f"{HF_TXT}.embeddings.token_embedding.weight", SAME),
    (f"{TXT}/position_embed/embedding", f"{HF_TXT}.embeddings.position_embedding.weight", SAME),
    *_layer_rows(TXT, HF_TXT),
    *norm_rows(f"{TXT}/transformer/final_norm", f"{HF_TXT}.final_layer_norm"),
]

# Non-persistent buffers that older checkpoints still carry; they hold no weights.
IGNORED_HF = re.compile(r"^(text|vision)_model\.embeddings\.position_ids$")

_TABLE = TensorTable(MAPPING)
hf_name = _TABLE.hf_name
vlp_path = _TABLE.vlp_path


# ---------------------------------------------------------------------------------------------
# Configs.

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (for keys a file omits).
HF_TEXT_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
)  # fmt: skip
HF_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
HF_CLIP_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)

LEGACY_EOS_ID = 2  # transformers pools at argmax(input_ids) when eos_token_id == 2


def hf_clip_model_config(path: str, scan: bool = False) -> dict:
    """A HF CLIP checkpoint directory's `config.json` -> a vlpjax `config.model` dict."""
    config_path, hf = read_hf_config(path, "clip", "CLIPModel", "a CLIP")
    # Old files keep the real values in `*_config_dict`, which transformers lets win.
    text = {
        **HF_TEXT_DEFAULTS,
        **(hf.get("text_config") or {}),
        **(hf.get("text_config_dict") or {}),
    }
    vision = {
        **HF_VISION_DEFAULTS,
        **(hf.get("vision_config") or {}),
        **(hf.get("vision_config_dict") or {}),
    }
    top = {**HF_CLIP_DEFAULTS, **{k: hf[k] for k in HF_CLIP_DEFAULTS if hf.get(k) is not None}}
    if int(vision["num_channels"]) != 3:
        raise VlpError(
            f"{config_path}: vision_config.num_channels={vision['num_channels']}, need 3"
        )

    eos = text["eos_token_id"]
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise VlpError(f"{config_path}: text_config.eos_token_id={eos} (need a single id)")
        eos = eos[0]
    if eos is None:
        raise VlpError(f"{config_path}: text_config.eos_token_id is not set")
    eos = int(eos)
    if eos == LEGACY_EOS_ID:
        eos = int(text["vocab_size"]) - 1  # argmax pooling = the highest id = CLIP's end-of-text
    pad = text.get("pad_token_id")

    image = dict(
        image_size=square(vision["image_size"], "image_size", config_path),
        patch_size=square(vision["patch_size"], "patch_size", config_path),
        width=int(vision["hidden_size"]),
        depth=int(vision["num_hidden_layers"]),
        num_heads=int(vision["num_attention_heads"]),
        mlp_dim=int(vision["intermediate_size"]),
        class_token=True,
        pool="cls",
        pre_norm=True,
        post_norm="pooled",
        position="learned",
        patch_bias=False,
        activation=activation(vision["hidden_act"], config_path),
        norm_eps=float(vision["layer_norm_eps"]),
        scan=bool(scan),
    )
    text_tower = dict(
        vocab_size=int(text["vocab_size"]),
        max_length=int(text["max_position_embeddings"]),
        width=int(text["hidden_size"]),
        depth=int(text["num_hidden_layers"]),
        num_heads=int(text["num_attention_heads"]),
        mlp_dim=int(text["intermediate_size"]),
        causal=True,
        pool="eot",
        eos_id=eos,
        pad_id=int(pad) if pad is not None else 0,
        final_norm=True,
        activation=activation(text["hidden_act"], config_path),
        norm_eps=float(text["layer_norm_eps"]),
        scan=bool(scan),
    )
    return dict(
        name="clip",
        dtype="float32",
        embed_dim=int(top["projection_dim"]),
        logit_scale_init=float(top["logit_scale_init_value"]),
        logit_scale_max=100.0,
        projection_bias=False,
        image=image,
        text=text_tower,
    )


def _hf_config(model_config) -> dict:
    """A vlpjax `config.model` (dict or ConfigDict) -> a transformers CLIPConfig dict."""
    from vlpjax.encoders import ViT

    cfg, image, text = take_model(model_config, "clip", "hf_clip", ViT)

    required = {
        "model.projection_bias": (cfg["projection_bias"], False),
        "model.image.class_token": (image["class_token"], True),
        "model.image.pool": (image["pool"], "cls"),
        "model.image.pre_norm": (image["pre_norm"], True),
        "model.image.post_norm": (image["post_norm"], "pooled"),
        "model.image.position": (image["position"], "learned"),
        "model.image.patch_bias": (image["patch_bias"], False),
        "model.text.causal": (text["causal"], True),
        "model.text.pool": (text["pool"], "eot"),
        "model.text.final_norm": (text["final_norm"], True),
    }
    check_required(required, "CLIP")
    check_activations(image, text)
    eos = int(text["eos_id"])
    if eos == LEGACY_EOS_ID and eos != text["vocab_size"] - 1:
        raise VlpError(
            "model.text.eos_id=2 reads as transformers' legacy argmax pooling; "
            "Hugging Face CLIP cannot pool at token id 2"
        )
    embed = int(cfg["embed_dim"])
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": "float32",
        "projection_dim": embed,
        "logit_scale_init_value": float(cfg["logit_scale_init"]),
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": int(text["vocab_size"]),
            "hidden_size": int(text["width"]),
            "intermediate_size": int(text["mlp_dim"]),
            "projection_dim": embed,
            "num_hidden_layers": int(text["depth"]),
            "num_attention_heads": int(text["num_heads"]),
            "max_position_embeddings": int(text["max_length"]),
            "hidden_act": VLP_ACTIVATIONS[text["activation"]],
            "layer_norm_eps": float(text["norm_eps"]),
            "attention_dropout": 0.0,
            "pad_token_id": int(text["pad_id"]),
            "bos_token_id": None,
            "eos_token_id": eos,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": int(image["width"]),
            "intermediate_size": int(image["mlp_dim"]),
            "projection_dim": embed,
            "num_hidden_layers": int(image["depth"]),
            "num_attention_heads": int(image["num_heads"]),
            "num_channels": 3,
            "image_size": int(image["image_size"]),
            "patch_size": int(image["patch_size"]),
            "hidden_act": VLP_ACTIVATIONS[image["activation"]],
            "layer_norm_eps": float(image["norm_eps"]),
            "attention_dropout": 0.0,
        },
    }


# ---------------------------------------------------------------------------------------------
# Entry points.


def _expected_shapes(model_config: dict) -> dict[str, tuple]:
    """Unrolled vlpjax param path -> shape, from the module itself (no computation)."""
    unrolled = {
        **model_config,
        "image": {**model_config["image"], "scan": False},
        "text": {**model_config["text"], "scan": False},
    }
    return {k: tuple(v.shape) for k, v in flatten(init_shapes(unrolled)["params"]).items()}


def load_hf_clip(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face CLIPModel directory -> (vlpjax `config.model` dict, float32 numpy params).

    `scan=True` stacks each tower's layers under `transformer/layers` (for `scan=True` models).
    """
    model_config = hf_clip_model_config(path, scan=scan)
    tensors = read_tensors(path)
    flat = from_hf(path, tensors, _expected_shapes(model_config), _TABLE, IGNORED_HF, "a CLIPModel")
    if scan:
        flat = stack(flat)
    return model_config, unflatten(flat)


def export_hf_clip(params, model_config, path: str) -> None:
    """vlpjax CLIP params (scanned or unrolled, boxed or not) -> a HF CLIPModel directory.

    Writes `config.json` and `model.safetensors` that `transformers.CLIPModel.from_pretrained`
    loads with no missing or unexpected keys.
    """
    from flax import linen as nn

    hf_config = _hf_config(model_config)
    params = nn.unbox(params)
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]  # a variables dict
    flat = flat_for_export(params)
    expected = _expected_shapes(plain(model_config))
    write_hf(path, hf_config, to_hf(flat, expected, _TABLE, "export_hf_clip", "param"))
