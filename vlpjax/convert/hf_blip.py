"""Hugging Face BLIP checkpoints <-> vlpjax BLIP (`FusionModel`: a `ViT` and the BERT-style text
transformer that BLIP uses as encoder, image-grounded encoder and decoder).

Transformers splits BLIP into task models; two of them convert, each with its own format:

  hf_blip_retrieval  `BlipForImageTextRetrieval`: the ViT, the text encoder (self-attention,
                     cross-attention, MLP per layer), `vision_proj` / `text_proj` (ITC) and
                     `itm_head` (ITM).
  hf_blip_caption    `BlipForConditionalGeneration`: the ViT and the text decoder (causal
                     self-attention, cross-attention, MLP per layer) with its LM head.

`load_hf_blip_retrieval(path)` / `load_hf_blip_caption(path)` read a `save_pretrained` directory
(as `load_hf_clip` does: safetensors without torch, sharded indexes, or `pytorch_model.bin` when
torch is importable) and return `(model_config, params)`: a `config.model` dict (`name="blip"`)
that `vlpjax.models.build_model` turns into the matching `FusionModel`, and float32 numpy params
holding the top-level groups the checkpoint has, each with exactly its tree in
`nn.unbox(model.init(...)["params"])`. Groups it lacks are left out, so `init_from` keeps their
fresh initialisation:

  retrieval  image_encoder, text_embed, text, image_projection, text_projection, itm_head.
             No `log_temperature`: HF drops BLIP's learned temperature (it returns cosine
             similarities); it starts from `temperature_init`. The config has `decoder=False`
             (no `lm_head`, no `decoder_attention`).
  caption    image_encoder, text_embed, text, lm_head. The decoder's self-attention is vlpjax's
             `text/layer_{i}/decoder_attention(_norm)`; cross-attention and MLP go to the names
             the encoder shares, as in BLIP. HF keeps no encoder self-attention, and `text` must
             load whole, so `self_attention(_norm)` start as copies of the decoder's (captioning
             never reads them). No image_projection, text_projection, itm_head, log_temperature.

`export_hf_blip_retrieval(params, model_config, path)` and `export_hf_blip_caption(...)` are the
inverses; each writes only what its HF model holds, so one BLIP run (with `decoder=True`)
exports to both. Both directions read one table per format: (vlpjax path, HF tensor name,
transform) rows, `{i}` standing for a layer index; a scanned ViT (`transformer/layers/...`) is
unstacked before and stacked after the table is applied.

Semantics worth knowing:
  * HF's ITM reads `input_ids` as given; BLIP itself replaces the first token by [ENC] (id 30523
    in Salesforce's tokenizer). Loaded configs set `enc_id=None` (HF's behaviour); set
    `model.enc_id=30523` to feed the image-grounded encoder as BLIP's own code does.
  * Captions: `dec_id` = `bos_token_id` ([DEC], 30522), the first token that BLIP's training
    and HF's `generate` force; decode with `start_id=dec_id` and `eos_id` = `sep_token_id`
    ([SEP], 102), the id HF's `generate` stops at. `decode_logits` reads tokens as given, as
    HF's `forward(input_ids=...)` does. Captioning needs `decoder=True`, so caption export
    needs it, and `dec_id` set (it becomes `bos_token_id`).
  * The ViT is pre-LN with a LayerNorm on every output token (`post_norm="tokens"`, HF
    `post_layernorm` on `last_hidden_state`, which all BLIP heads read); its fused
    `self_attn.qkv` splits into query, key and value. Patch embedding with bias, no pre-norm.
  * The LM head is tied: `text_decoder.cls.predictions.decoder.{weight,bias}` are copies of
    the word embeddings and `cls.predictions.bias`; load checks them and drops them (untied
    checkpoints fail), export does not write them (transformers ties them on load).
  * vlpjax masks `pad_id` tokens out of attention as keys (HF takes an `attention_mask`): the
    same outputs for right-padded text. HF `hidden_dropout_prob` becomes `dropout_rate`;
    vlpjax has no attention dropout (exported as 0).
"""

from __future__ import annotations

import re

import numpy as np

from vlpjax.convert.common import (
    CONV,
    DENSE,
    DENSE_HEADS_IN,
    FLAT,
    SAME,
    VLP_ACTIVATIONS,
    Row,
    TensorTable,
    Transform,
    activation,
    bert_layer_rows,
    check_required,
    flat_for_export,
    flatten,
    from_hf,
    fuse,
    linear_rows,
    norm_rows,
    plain,
    read_hf_config,
    read_tensors,
    split_fused,
    square,
    stack,
    to_hf,
    unflatten,
    write_hf,
)
from vlpjax.utils.errors import VlpError

RETRIEVAL, CAPTION = "hf_blip_retrieval", "hf_blip_caption"
ARCHITECTURES = {RETRIEVAL: "BlipForImageTextRetrieval", CAPTION: "BlipForConditionalGeneration"}

# ---------------------------------------------------------------------------------------------
# The mapping tables.


def _leading(n: int) -> Transform:
    """HF parameters with `n` leading 1-axes ([1, 1, D] class token, [1, N, D] positions)."""
    return Transform(
        f"leading{n}",
        lambda x, shape: x.reshape(shape),
        lambda x: x.reshape((1,) * n + x.shape),
        lambda s: (1,) * n + tuple(s),
    )


IMG, HF_IMG = "image_encoder", "vision_model"
QKV = ("query", "key", "value")  # the order of the ViT's fused qkv
_QKV_FUSED = re.compile(rf"^{HF_IMG}\.encoder\.layers\.\d+\.self_attn\.qkv\.(weight|bias)$")


def _vit_rows() -> list[Row]:
    """BLIP's ViT: vlpjax `ViT` (pre-LN, post_norm="tokens") <-> HF `BlipVisionModel`."""
    vlp, hf = f"{IMG}/transformer/layer_{{i}}", f"{HF_IMG}.encoder.layers.{{i}}"
    embeddings = f"{HF_IMG}.embeddings"
    rows = [
        (f"{IMG}/class_token", f"{embeddings}.class_embedding", _leading(2)),
        *linear_rows(f"{IMG}/patch_embed/projection", f"{embeddings}.patch_embedding", CONV, SAME),
        (f"{IMG}/position_embed/embedding", f"{embeddings}.position_embedding", _leading(1)),
        *norm_rows(f"{vlp}/self_attention_norm", f"{hf}.layer_norm1"),
    ]
    for name in QKV:  # the pieces of the fused `qkv` (see `split_fused`)
        rows += linear_rows(
            f"{vlp}/self_attention/{name}", f"{hf}.self_attn.qkv.{name}", DENSE, FLAT
        )
    rows += linear_rows(
        f"{vlp}/self_attention/out", f"{hf}.self_attn.projection", DENSE_HEADS_IN, SAME
    )
    rows += norm_rows(f"{vlp}/mlp_norm", f"{hf}.layer_norm2")
    rows += linear_rows(f"{vlp}/mlp/fc1", f"{hf}.mlp.fc1", DENSE, SAME)
    rows += linear_rows(f"{vlp}/mlp/fc2", f"{hf}.mlp.fc2", DENSE, SAME)
    return rows + norm_rows(f"{IMG}/post_norm", f"{HF_IMG}.post_layernorm")


def _text_rows(hf: str, self_attention: str) -> list[Row]:
    """The text transformer under HF prefix `hf` (a `BlipTextModel`), its self-attention going
    to vlpjax's `self_attention` (the encoder) or `decoder_attention` (the decoder)."""
    vlp, layer = "text/layer_{i}", f"{hf}.encoder.layer.{{i}}"
    embeddings = f"{hf}.embeddings"
    return [
        ("text_embed/token_embed/embedding", f"{embeddings}.word_embeddings.weight", SAME),
        ("text_embed/position_embed/embedding", f"{embeddings}.position_embeddings.weight", SAME),
        *norm_rows("text_embed/embed_norm", f"{embeddings}.LayerNorm"),
        *bert_layer_rows(
            vlp, layer, ((self_attention, "attention"), ("cross_attention", "crossattention"))
        ),
    ]


HF_DECODER, HEAD = "text_decoder.bert", "text_decoder.cls.predictions"

# (vlpjax param path, HF tensor name, transform); `{i}` is a layer index on both sides.
MAPPINGS: dict[str, list[Row]] = {
    RETRIEVAL: [
        *_vit_rows(),
        *_text_rows("text_encoder", "self_attention"),
        *linear_rows("image_projection", "vision_proj", DENSE, SAME),
        *linear_rows("text_projection", "text_proj", DENSE, SAME),
        *linear_rows("itm_head", "itm_head", DENSE, SAME),
    ],
    CAPTION: [
        *_vit_rows(),
        *_text_rows(HF_DECODER, "decoder_attention"),
        *linear_rows("lm_head/transform", f"{HEAD}.transform.dense", DENSE, SAME),
        *norm_rows("lm_head/norm", f"{HEAD}.transform.LayerNorm"),
        ("lm_head/bias", f"{HEAD}.bias", SAME),
    ],
}
_TABLES = {fmt: TensorTable(rows) for fmt, rows in MAPPINGS.items()}

# Non-persistent position buffers that older checkpoints still carry; they hold no weights.
IGNORED_HF = re.compile(r"^(text_encoder|text_decoder\.bert)\.embeddings\.position_ids$")
# The tied LM head's copies: (copy, what it is tied to).
TIED = (
    (f"{HEAD}.decoder.weight", f"{HF_DECODER}.embeddings.word_embeddings.weight"),
    (f"{HEAD}.decoder.bias", f"{HEAD}.bias"),
)
# The decoder's self-attention, copied to the encoder's (which HF's caption model lacks).
_DECODER_ATTENTION = re.compile(r"^(text/layer_\d+/)decoder_attention(_norm)?/(.*)$")


# ---------------------------------------------------------------------------------------------
# Configs.

# transformers' BlipTextConfig / BlipVisionConfig / BlipConfig defaults (for omitted keys).
HF_TEXT_DEFAULTS = dict(
    vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0, bos_token_id=30522, eos_token_id=2, pad_token_id=0,
    sep_token_id=102, is_decoder=True, tie_word_embeddings=True,
)  # fmt: skip
HF_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=384, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5,
)  # fmt: skip
HF_BLIP_DEFAULTS = dict(image_text_hidden_size=256, tie_word_embeddings=True)

# BLIP's ViT, fixed by BlipVisionModel (vlpjax `ViT` fields).
VIT_LAYOUT = dict(
    class_token=True, pool="cls", pre_norm=False, post_norm="tokens", position="learned",
    patch_bias=True,
)  # fmt: skip
# BLIP's text transformer, fixed by the task models (vlpjax `FusionModel` fields).
TEXT_LAYOUT = dict(cross_from=0, norm_first=False)


def _heads(width: int, heads: int, key: str, where: str) -> None:
    if heads < 1 or width % heads:
        raise VlpError(
            f"{where}: {key}.hidden_size={width} is not divisible by num_attention_heads={heads}"
        )


def blip_model_config(
    hf_config: dict, fmt: str, scan: bool = False, where: str = "config.json"
) -> dict:
    """A transformers BlipConfig dict -> a vlpjax `config.model` dict for the `fmt` task model
    (`hf_blip_retrieval` | `hf_blip_caption`); `where` names the source in errors."""
    text = {**HF_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    vision = {**HF_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    top = {**HF_BLIP_DEFAULTS, **{k: hf_config[k] for k in HF_BLIP_DEFAULTS if k in hf_config}}
    for key in ("pad_token_id", "sep_token_id") + (("bos_token_id",) if fmt == CAPTION else ()):
        if text[key] is None:
            raise VlpError(f"{where}: text_config.{key} is not set (vlpjax needs the id)")
    if not text["is_decoder"]:
        raise VlpError(
            f"{where}: text_config.is_decoder=false gives a text model without cross-attention; "
            "BLIP's needs it"
        )
    if fmt == CAPTION and not (top["tie_word_embeddings"] and text["tie_word_embeddings"]):
        raise VlpError(
            f"{where}: tie_word_embeddings=false; vlpjax's BLIP ties the LM head to the token "
            "embedding"
        )
    width, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    _heads(width, heads, "text_config", where)
    _heads(int(vision["hidden_size"]), int(vision["num_attention_heads"]), "vision_config", where)
    image = dict(
        image_size=square(vision["image_size"], "image_size", where),
        patch_size=square(vision["patch_size"], "patch_size", where),
        width=int(vision["hidden_size"]),
        depth=int(vision["num_hidden_layers"]),
        num_heads=int(vision["num_attention_heads"]),
        mlp_dim=int(vision["intermediate_size"]),
        **VIT_LAYOUT,
        activation=activation(vision["hidden_act"], where),
        norm_eps=float(vision["layer_norm_eps"]),
        dropout_rate=0.0,
        scan=bool(scan),
    )
    depth = int(text["num_hidden_layers"])
    caption = fmt == CAPTION
    return dict(
        name="blip",
        dtype="float32",
        image=image,
        vocab_size=int(text["vocab_size"]),
        max_length=int(text["max_position_embeddings"]),
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=int(text["intermediate_size"]),
        text_layers=depth,
        **TEXT_LAYOUT,
        embed_dim=int(top["image_text_hidden_size"]),
        mlm=False,
        decoder=caption,
        enc_id=None,
        dec_id=int(text["bos_token_id"]) if caption else None,
        pad_id=int(text["pad_token_id"]),
        eos_id=int(text["sep_token_id"]),
        activation=activation(text["hidden_act"], where),
        norm_eps=float(text["layer_norm_eps"]),
        dropout_rate=float(text["hidden_dropout_prob"]),
    )


def _read_config(path: str, fmt: str) -> tuple[str, dict]:
    config_path, hf = read_hf_config(path, "blip", ARCHITECTURES[fmt], "a BLIP")
    architectures = hf.get("architectures") or []
    for other, name in ARCHITECTURES.items():
        if name in architectures and ARCHITECTURES[fmt] not in architectures:
            raise VlpError(
                f"{config_path}: a {name} checkpoint; load it with format '{other}', not '{fmt}'"
            )
    return config_path, hf


def hf_blip_retrieval_model_config(path: str, scan: bool = False) -> dict:
    """A HF BLIP checkpoint directory's `config.json` -> the vlpjax `config.model` dict of its
    retrieval model (ITC + ITM)."""
    config_path, hf = _read_config(path, RETRIEVAL)
    return blip_model_config(hf, RETRIEVAL, scan=scan, where=config_path)


def hf_blip_caption_model_config(path: str, scan: bool = False) -> dict:
    """A HF BLIP checkpoint directory's `config.json` -> the vlpjax `config.model` dict of its
    captioning model (decoder + LM head)."""
    config_path, hf = _read_config(path, CAPTION)
    return blip_model_config(hf, CAPTION, scan=scan, where=config_path)


def _fields(model_config) -> tuple[dict, dict]:
    """A vlpjax `config.model` -> (FusionModel's fields + name, dtype, image; the ViT's fields),
    defaults filled, checking the name."""
    from vlpjax.encoders import ViT
    from vlpjax.models import module_fields
    from vlpjax.models.fusion import FusionModel
    from vlpjax.utils.config import REQUIRED, take

    own = {k: v for k, v in module_fields(FusionModel).items() if k not in ("image_encoder",)}
    cfg = take(
        model_config, {"name": REQUIRED, "dtype": "float32", "image": REQUIRED, **own}, "model"
    )
    if cfg["name"] != "blip":
        raise VlpError(f"model.name '{cfg['name']}': only 'blip' models export to hf_blip_*")
    return cfg, take(cfg["image"], module_fields(ViT), "model.image")


def _hf_config(model_config, fmt: str) -> dict:
    """A vlpjax `config.model` (dict or ConfigDict) -> a transformers BlipConfig dict."""
    cfg, image = _fields(model_config)
    required = {f"model.image.{k}": (image[k], v) for k, v in VIT_LAYOUT.items()}
    required.update({f"model.{k}": (cfg[k], v) for k, v in TEXT_LAYOUT.items()})
    required["model.text_layers"] = (cfg["text_layers"], cfg["depth"])
    if fmt == CAPTION:
        required["model.decoder"] = (cfg["decoder"], True)
    check_required(required, "BLIP")
    if fmt == CAPTION and cfg["dec_id"] is None:
        raise VlpError(
            "model.dec_id is not set: Hugging Face BLIP starts every caption from "
            "text_config.bos_token_id; set it to the id captions start with"
        )
    for where, name in (("model.image", image["activation"]), ("model", cfg["activation"])):
        if name not in VLP_ACTIVATIONS:
            raise VlpError(f"{where}.activation '{name}' has no Hugging Face equivalent")
    eos = int(cfg["eos_id"])
    bos = HF_TEXT_DEFAULTS["bos_token_id"] if cfg["dec_id"] is None else int(cfg["dec_id"])
    return {
        "architectures": [ARCHITECTURES[fmt]],
        "model_type": "blip",
        "dtype": "float32",
        "image_text_hidden_size": int(cfg["embed_dim"]),
        "projection_dim": int(cfg["embed_dim"]),
        "tie_word_embeddings": True,
        "text_config": {
            "model_type": "blip_text_model",
            "vocab_size": int(cfg["vocab_size"]),
            "hidden_size": int(cfg["width"]),
            "encoder_hidden_size": int(image["width"]),
            "intermediate_size": int(cfg["mlp_dim"]),
            "num_hidden_layers": int(cfg["depth"]),
            "num_attention_heads": int(cfg["num_heads"]),
            "max_position_embeddings": int(cfg["max_length"]),
            "hidden_act": VLP_ACTIVATIONS[cfg["activation"]],
            "layer_norm_eps": float(cfg["norm_eps"]),
            "hidden_dropout_prob": float(cfg["dropout_rate"]),
            "attention_probs_dropout_prob": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "sep_token_id": eos,
            "pad_token_id": int(cfg["pad_id"]),
            "is_decoder": True,
            "tie_word_embeddings": True,
        },
        "vision_config": {
            "model_type": "blip_vision_model",
            "hidden_size": int(image["width"]),
            "intermediate_size": int(image["mlp_dim"]),
            "num_hidden_layers": int(image["depth"]),
            "num_attention_heads": int(image["num_heads"]),
            "image_size": int(image["image_size"]),
            "patch_size": int(image["patch_size"]),
            "hidden_act": VLP_ACTIVATIONS[image["activation"]],
            "layer_norm_eps": float(image["norm_eps"]),
            "attention_dropout": 0.0,
        },
    }


# ---------------------------------------------------------------------------------------------
# Trees.


def param_shapes(model_config) -> dict:
    """The unboxed `params` tree of `model_config`'s FusionModel as shapes (no computation)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import linen as nn

    from vlpjax.models import build_model

    model = build_model(ml_collections.ConfigDict(plain(model_config)))
    size = int(model_config["image"]["image_size"])
    shapes = jax.eval_shape(
        lambda rng: model.init(
            rng, image=jnp.zeros((1, size, size, 3)), text=jnp.zeros((1, 2), jnp.int32)
        ),
        jax.random.key(0),
    )
    return nn.unbox(dict(shapes))["params"]


def _expected_shapes(model_config, fmt: str) -> tuple[dict[str, tuple], set[str]]:
    """(unrolled vlpjax path -> shape for what the `fmt` HF model holds, the model's other
    paths), from the module itself."""
    unrolled = {**plain(model_config)}
    unrolled["image"] = {**unrolled["image"], "scan": False}
    shapes = {k: tuple(v.shape) for k, v in flatten(param_shapes(unrolled)).items()}
    table = _TABLES[fmt]
    held = {k: v for k, v in shapes.items() if table.hf_name(k) is not None}
    return held, set(shapes) - set(held)


def _untie(path: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the LM head's tied copies after checking they are copies."""
    tensors = dict(tensors)
    for copy, source in TIED:
        if copy not in tensors:
            continue
        array, tied = tensors.pop(copy), tensors.get(source)
        if tied is None or array.shape != tied.shape or not np.array_equal(array, tied):
            raise VlpError(
                f"{path}: {copy} is not tied to {source} (vlpjax's BLIP ties the LM head)"
            )
    return tensors


def _encoder_attention(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The caption model's missing encoder self-attention: copies of the decoder's."""
    out = dict(flat)
    for path, value in flat.items():
        m = _DECODER_ATTENTION.match(path)
        if m:
            out[f"{m.group(1)}self_attention{m.group(2) or ''}/{m.group(3)}"] = value.copy()
    return out


# ---------------------------------------------------------------------------------------------
# Entry points.


def _load(path: str, fmt: str, scan: bool) -> tuple[dict, dict]:
    config_path, hf = _read_config(path, fmt)
    model_config = blip_model_config(hf, fmt, scan=scan, where=config_path)
    tensors = split_fused(path, _untie(path, read_tensors(path)), _QKV_FUSED, QKV, axis=0)
    expected, _ = _expected_shapes(model_config, fmt)
    flat = from_hf(path, tensors, expected, _TABLES[fmt], IGNORED_HF, f"a {ARCHITECTURES[fmt]}")
    if fmt == CAPTION:
        flat = _encoder_attention(flat)
    if scan:
        flat = stack(flat)
    return model_config, unflatten(flat)


def load_hf_blip_retrieval(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face BlipForImageTextRetrieval directory -> (vlpjax `config.model` dict,
    float32 numpy params without `log_temperature`). `scan=True` stacks the ViT's layers."""
    return _load(path, RETRIEVAL, scan)


def load_hf_blip_caption(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face BlipForConditionalGeneration directory -> (vlpjax `config.model` dict,
    float32 numpy params of image_encoder, text_embed, text and lm_head). `scan=True` stacks
    the ViT's layers."""
    return _load(path, CAPTION, scan)


def _export(params, model_config, path: str, fmt: str) -> None:
    from flax import linen as nn

    hf_config = _hf_config(model_config, fmt)
    params = nn.unbox(params)
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]  # a variables dict
    expected, not_held = _expected_shapes(model_config, fmt)
    flat = {k: v for k, v in flat_for_export(params).items() if k not in not_held}
    tensors = to_hf(flat, expected, _TABLES[fmt], f"export_{fmt}", "param")
    write_hf(path, hf_config, fuse(tensors, _QKV_FUSED, QKV, axis=0))


def export_hf_blip_retrieval(params, model_config, path: str) -> None:
    """vlpjax BLIP params (boxed or not, ViT scanned or not) -> a HF BlipForImageTextRetrieval
    directory (`config.json`, `model.safetensors`) that `from_pretrained` loads with no missing
    or unexpected keys. The decoder's own parameters, the LM head and `log_temperature` are not
    written. HF's ITM reads `input_ids` as given: a model trained with `enc_id` wants that id
    first in the texts given to HF."""
    _export(params, model_config, path, RETRIEVAL)


def export_hf_blip_caption(params, model_config, path: str) -> None:
    """vlpjax BLIP params of a `decoder=True` model -> a HF BlipForConditionalGeneration
    directory. The encoder's self-attention, the projections, the ITM head and `log_temperature`
    are not written."""
    _export(params, model_config, path, CAPTION)
