"""Hugging Face `BartForConditionalGeneration` checkpoints <-> vlpjax BART (`EncoderDecoder`).

`load_hf_bart(path)` reads a `save_pretrained` directory (as `load_hf_clip` does: safetensors
without torch, sharded indexes, or `pytorch_model.bin` when torch is importable) and returns
`(model_config, params)`: a `config.model` dict whose fields (besides `name` and `dtype`) are
`EncoderDecoder`'s, and plain float32 numpy params with exactly the tree of
`nn.unbox(model.init(...)["params"])`. `export_hf_bart(params, model_config, path)` is the inverse.

Both directions read one table, `MAPPING`: (vlpjax path, HF tensor name, transform) rows, where
`{i}` stands for a layer index. vlpjax paths are the unrolled ones (`transformer/layer_{i}/...`);
scanned params (`transformer/layers/...`, layers stacked on axis 0) are unstacked before and
stacked after the table is applied.

Semantics worth knowing:
  * BART is a post-LN encoder-decoder (`norm_first=False`, no final norms) with a LayerNorm
    after the embeddings (`embed_norm`), learned positions read from row `position + 2`
    (`position_offset=2`, tables of `max_position_embeddings + 2` rows, one per side), token
    embeddings times sqrt(d_model) when `scale_embedding` (`embed_scale`), and
    `final_logits_bias` [1, vocab] (`decoder/logits_bias` [vocab]). HF's LayerNorms have a fixed
    eps of 1e-5, so only `norm_eps=1e-5` exports.
  * One token embedding, `model.shared`, is the encoder's and decoder's input embedding and the
    output projection (vlpjax `token_embed`). `model.{encoder,decoder}.embed_tokens.weight` and
    `lm_head.weight` are tied copies that transformers overwrites with `model.shared` on load, so
    load ignores them (a checkpoint with only a copy loads from the copy); export writes
    `model.shared.weight` alone. Untied checkpoints (`tie_word_embeddings=false`) do not load.
  * Checkpoints saved from a bare `BartModel` (tensor names without the `model.` prefix) load;
    a missing `final_logits_bias` is zeros, as in transformers.
  * vlpjax masks `pad_id` tokens out of attention as keys, in the encoder, the decoder's
    self-attention and cross-attention (HF takes `attention_mask` / `decoder_attention_mask`):
    the same logits for padding given as masks, and for right padding at every non-pad
    decoder position even without `decoder_attention_mask`.
  * HF `dropout` becomes `dropout_rate`; vlpjax has no separate attention or activation dropout
    (exported as 0), nor LayerDrop.
  * `EncoderDecoder.__call__` shifts the target right from `decoder_start_id` itself, as
    transformers does with `labels`; `decode_logits` takes ready decoder inputs, as
    `decoder_input_ids`.
"""

from __future__ import annotations

import re

import numpy as np

from vlpjax.convert.common import (
    DENSE,
    DENSE_HEADS_IN,
    FLAT,
    HF_ACTIVATIONS,
    SAME,
    VLP_ACTIVATIONS,
    TensorTable,
    Transform,
    check_required,
    flat_for_export,
    flatten,
    from_hf,
    linear_rows,
    norm_rows,
    plain,
    read_hf_config,
    read_tensors,
    stack,
    to_hf,
    unflatten,
    write_hf,
)
from vlpjax.utils.errors import VlpError

# ---------------------------------------------------------------------------------------------
# The mapping table.

# `final_logits_bias` [1, V] <-> `logits_bias` [V].
ROW = Transform(
    "row", lambda x, shape: x.reshape(shape), lambda x: x.reshape(1, -1), lambda s: (1, *s)
)


def _attention(vlp: str, hf: str) -> list[tuple[str, str, Transform]]:
    rows = []
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows += linear_rows(f"{vlp}/{ours}", f"{hf}.{theirs}", DENSE, FLAT)
    return rows + linear_rows(f"{vlp}/out", f"{hf}.out_proj", DENSE_HEADS_IN, SAME)


def _layer_rows(vlp: str, hf: str, cross: bool) -> list[tuple[str, str, Transform]]:
    """One post-LN layer: vlpjax TransformerBlock <-> HF BartEncoderLayer / BartDecoderLayer."""
    vlp, hf = f"{vlp}/transformer/layer_{{i}}", f"{hf}.layers.{{i}}"
    rows = _attention(f"{vlp}/self_attention", f"{hf}.self_attn")
    rows += norm_rows(f"{vlp}/self_attention_norm", f"{hf}.self_attn_layer_norm")
    if cross:
        rows += _attention(f"{vlp}/cross_attention", f"{hf}.encoder_attn")
        rows += norm_rows(f"{vlp}/cross_attention_norm", f"{hf}.encoder_attn_layer_norm")
    rows += linear_rows(f"{vlp}/mlp/fc1", f"{hf}.fc1", DENSE, SAME)
    rows += linear_rows(f"{vlp}/mlp/fc2", f"{hf}.fc2", DENSE, SAME)
    rows += norm_rows(f"{vlp}/mlp_norm", f"{hf}.final_layer_norm")
    return rows


ENC, DEC = "encoder", "decoder"
HF_ENC, HF_DEC = "model.encoder", "model.decoder"
SHARED = "model.shared.weight"
LOGITS_BIAS = "final_logits_bias"

# (vlpjax param path, HF tensor name, transform); `{i}` is a layer index on both sides.
MAPPING: list[tuple[str, str, Transform]] = [
    ("token_embed/embedding", SHARED, SAME),
    (f"{ENC}/text_position/embedding", f"{HF_ENC}.embed_positions.weight", SAME),
    *norm_rows(f"{ENC}/embed_norm", f"{HF_ENC}.layernorm_embedding"),
    *_layer_rows(ENC, HF_ENC, cross=False),
    (f"{DEC}/position_embed/embedding", f"{HF_DEC}.embed_positions.weight", SAME),
    *norm_rows(f"{DEC}/embed_norm", f"{HF_DEC}.layernorm_embedding"),
    *_layer_rows(DEC, HF_DEC, cross=True),
    (f"{DEC}/logits_bias", LOGITS_BIAS, ROW),
]

# Tied copies of `model.shared.weight` (transformers overwrites them on load) and fairseq's
# version buffers (transformers' `_keys_to_ignore_on_load_unexpected`).
TIED_COPIES = (
    f"{HF_ENC}.embed_tokens.weight",
    f"{HF_DEC}.embed_tokens.weight",
    "lm_head.weight",
)
IGNORED_HF = re.compile(
    r"^(model\.(encoder|decoder)\.embed_tokens\.weight|lm_head\.weight"
    r"|model\.(encoder|decoder)\.version)$"
)

_TABLE = TensorTable(MAPPING)
hf_name = _TABLE.hf_name
vlp_path = _TABLE.vlp_path


# ---------------------------------------------------------------------------------------------
# Configs.

# transformers' BartConfig defaults (for keys a file omits).
HF_BART_DEFAULTS = dict(
    vocab_size=50265, max_position_embeddings=1024, d_model=1024, encoder_layers=12,
    decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
    encoder_ffn_dim=4096, decoder_ffn_dim=4096, activation_function="gelu", dropout=0.1,
    scale_embedding=False, pad_token_id=1, decoder_start_token_id=2, tie_word_embeddings=True,
)  # fmt: skip

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding.offset
NORM_EPS = 1e-5  # BART's nn.LayerNorm default; not a config key


def bart_model_config(hf_config: dict, scan: bool = False, where: str = "config.json") -> dict:
    """A transformers BartConfig dict (a `config.json`'s contents) -> a vlpjax `config.model`
    dict for `EncoderDecoder`; `where` names the source in errors."""
    hf = {**HF_BART_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    for key in ("pad_token_id", "decoder_start_token_id"):
        if key in hf_config and hf_config[key] is None:
            raise VlpError(f"{where}: {key} is not set (vlpjax needs the id)")
    for ours, theirs in (("num_heads", "attention_heads"), ("mlp_dim", "ffn_dim")):
        enc, dec = f"encoder_{theirs}", f"decoder_{theirs}"
        if int(hf[enc]) != int(hf[dec]):
            raise VlpError(
                f"{where}: {enc}={hf[enc]} and {dec}={hf[dec]} differ; vlpjax's EncoderDecoder "
                f"has one {ours} for both halves"
            )
    if not hf["tie_word_embeddings"]:
        raise VlpError(
            f"{where}: tie_word_embeddings=false; vlpjax's EncoderDecoder ties the input "
            "embeddings and the output projection to one shared embedding"
        )
    width, heads = int(hf["d_model"]), int(hf["encoder_attention_heads"])
    if heads < 1 or width % heads:
        raise VlpError(
            f"{where}: d_model={width} is not divisible by encoder_attention_heads={heads}"
        )
    act = hf["activation_function"]
    if act not in HF_ACTIVATIONS:
        raise VlpError(
            f"{where}: activation_function '{act}' has no vlpjax equivalent; "
            f"valid: {sorted(HF_ACTIVATIONS)}"
        )
    max_length = int(hf["max_position_embeddings"])
    return dict(
        name="bart",
        dtype="float32",
        vocab_size=int(hf["vocab_size"]),
        max_source_length=max_length,
        max_target_length=max_length,
        width=width,
        encoder_depth=int(hf["encoder_layers"]),
        decoder_depth=int(hf["decoder_layers"]),
        num_heads=heads,
        mlp_dim=int(hf["encoder_ffn_dim"]),
        image_size=0,
        activation=HF_ACTIVATIONS[act],
        norm_first=False,
        norm_eps=NORM_EPS,
        embed_norm=True,
        embed_scale=bool(hf["scale_embedding"]),
        position_offset=POSITION_OFFSET,
        logits_bias=True,
        pad_id=int(hf["pad_token_id"]),
        decoder_start_id=int(hf["decoder_start_token_id"]),
        dropout_rate=float(hf["dropout"]),
        scan=bool(scan),
    )


def hf_bart_model_config(path: str, scan: bool = False) -> dict:
    """A HF BART checkpoint directory's `config.json` -> a vlpjax `config.model` dict."""
    config_path, hf = read_hf_config(path, "bart", "BartForConditionalGeneration", "a BART")
    return bart_model_config(hf, scan=scan, where=config_path)


def _fields(model_config) -> dict:
    """A vlpjax `config.model` -> EncoderDecoder's fields with defaults filled, plus `name` and
    `dtype`, checking the name."""
    from vlpjax.models import flat_fields
    from vlpjax.models.encoder_decoder import EncoderDecoder

    cfg = flat_fields(EncoderDecoder, model_config)
    if cfg["name"] != "bart":
        raise VlpError(f"model.name '{cfg['name']}': only 'bart' models export to hf_bart")
    return cfg


def _hf_config(model_config) -> dict:
    """A vlpjax `config.model` (dict or ConfigDict) -> a transformers BartConfig dict."""
    cfg = _fields(model_config)
    required = {
        "model.image_size": (cfg["image_size"], 0),
        "model.norm_first": (cfg["norm_first"], False),
        "model.norm_eps": (float(cfg["norm_eps"]), NORM_EPS),
        "model.embed_norm": (cfg["embed_norm"], True),
        "model.position_offset": (cfg["position_offset"], POSITION_OFFSET),
        "model.logits_bias": (cfg["logits_bias"], True),
        "model.max_target_length": (cfg["max_target_length"], cfg["max_source_length"]),
    }
    check_required(required, "BART")
    if cfg["activation"] not in VLP_ACTIVATIONS:
        raise VlpError(f"model.activation '{cfg['activation']}' has no Hugging Face equivalent")
    heads, ffn, start = int(cfg["num_heads"]), int(cfg["mlp_dim"]), int(cfg["decoder_start_id"])
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "dtype": "float32",
        "vocab_size": int(cfg["vocab_size"]),
        "max_position_embeddings": int(cfg["max_source_length"]),
        "d_model": int(cfg["width"]),
        "encoder_layers": int(cfg["encoder_depth"]),
        "decoder_layers": int(cfg["decoder_depth"]),
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        "activation_function": VLP_ACTIVATIONS[cfg["activation"]],
        "scale_embedding": bool(cfg["embed_scale"]),
        "dropout": float(cfg["dropout_rate"]),
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "pad_token_id": int(cfg["pad_id"]),
        # BART starts decoding from its end-of-sequence token; the model config knows no bos.
        "bos_token_id": None,
        "eos_token_id": start,
        "forced_eos_token_id": start,
        "decoder_start_token_id": start,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
    }


# ---------------------------------------------------------------------------------------------
# Trees.


def param_shapes(model_config) -> dict:
    """The unboxed `params` tree of `model_config`'s EncoderDecoder as shapes (no computation)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from vlpjax.models import DTYPES
    from vlpjax.models.encoder_decoder import EncoderDecoder

    cfg = _fields(model_config)
    dtype = DTYPES.get(cfg.pop("dtype"), jnp.float32)
    cfg.pop("name")
    model = EncoderDecoder(**cfg, dtype=dtype)
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(
        lambda rng: model.init(rng, source=tokens, target=tokens), jax.random.key(0)
    )
    return nn.unbox(dict(shapes))["params"]


def _expected_shapes(model_config: dict) -> dict[str, tuple]:
    """Unrolled vlpjax param path -> shape, from the module itself (no computation)."""
    unrolled = {**model_config, "scan": False}
    return {k: tuple(v.shape) for k, v in flatten(param_shapes(unrolled)).items()}


def _canonical(tensors: dict[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """A checkpoint's tensors under BartForConditionalGeneration's names: `model.` prefixed
    (bare BartModel checkpoints lack it), `model.shared.weight` present when only a tied copy
    is, and a zero `final_logits_bias` when there is none (as transformers initializes it)."""
    out = {
        f"model.{k}" if k.split(".", 1)[0] in ("shared", "encoder", "decoder") else k: v
        for k, v in tensors.items()
    }
    if SHARED not in out:
        copy = next((name for name in TIED_COPIES if name in out), None)
        if copy is not None:
            out[SHARED] = out[copy]
    if LOGITS_BIAS not in out:
        out[LOGITS_BIAS] = np.zeros((1, vocab_size), np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Entry points.


def load_hf_bart(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face BartForConditionalGeneration (or BartModel) directory -> (vlpjax
    `config.model` dict, float32 numpy params).

    `scan=True` stacks the encoder's and the decoder's layers under `transformer/layers` (for
    `scan=True` models).
    """
    model_config = hf_bart_model_config(path, scan=scan)
    tensors = _canonical(read_tensors(path), model_config["vocab_size"])
    flat = from_hf(
        path,
        tensors,
        _expected_shapes(model_config),
        _TABLE,
        IGNORED_HF,
        "a BartForConditionalGeneration",
    )
    if scan:
        flat = stack(flat)
    return model_config, unflatten(flat)


def export_hf_bart(params, model_config, path: str) -> None:
    """vlpjax BART params (scanned or unrolled, boxed or not) -> a HF BartForConditionalGeneration
    directory.

    Writes `config.json` and `model.safetensors` that
    `transformers.BartForConditionalGeneration.from_pretrained` loads with no missing or
    unexpected keys (the tied copies of `model.shared.weight` are filled in by transformers).
    """
    from flax import linen as nn

    hf_config = _hf_config(model_config)
    params = nn.unbox(params)
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]  # a variables dict
    flat = flat_for_export(params)
    expected = _expected_shapes(plain(model_config))
    write_hf(path, hf_config, to_hf(flat, expected, _TABLE, "export_hf_bart", "param"))
