"""Hugging Face GPT-2 (`GPT2LMHeadModel`) checkpoints <-> vlpjax `DecoderOnlyLM` ("gpt").

`load_hf_gpt2(path)` reads a `save_pretrained` directory (`config.json` + `model.safetensors`, a
sharded `model.safetensors.index.json`, or `pytorch_model.bin` when torch is importable) and
returns `(model_config, params)`: a `config.model` dict for `DecoderOnlyLM` and plain float32
numpy params with exactly the tree of `nn.unbox(model.init(...)["params"])` (all under
`decoder`, the layout ClipCap's language model shares). `export_hf_gpt2(params, model_config,
path)` is the inverse and writes a directory `GPT2LMHeadModel.from_pretrained` loads.

One table, `MAPPING`, of (vlpjax path, HF tensor name, transform) rows serves both directions,
with `{i}` a layer index; scanned params (`transformer/layers/...`) are unstacked before and
stacked after it. What differs from CLIP:
  * GPT-2's `Conv1D` weights are stored [in, out] (a Linear's transpose), so kernels are only
    reshaped (`CONV1D`), never transposed.
  * One fused `attn.c_attn` [D, 3D] (bias [3D]) holds the query, key and value projections, in
    that order; it is split into three (virtual) tensors `attn.c_attn.{q,k,v}.*` before the
    table is applied, and fused again on export.
  * The output projection is tied to `wte`: `lm_head.weight`, when a file has it, must equal
    `wte` and is dropped. Files saved from a bare `GPT2Model` (no `transformer.` prefix, the
    `attn.bias` / `attn.masked_bias` mask buffers of older versions) load too.
  * `activation_function` gelu_new is vlpjax's "gelu_tanh"; `resid_pdrop` becomes the decoder's
    `dropout_rate` (embeddings and residuals; vlpjax's decoder has no attention dropout).
  * GPT-2 has no pad token: `pad_id` is `pad_token_id` when set, else the eos id (the rows'
    weights then count the first eos after a text, see `vlpjax.models.generative`).
"""

from __future__ import annotations

import math
import re

import numpy as np

from vlpjax.convert.common import (
    FLAT,
    SAME,
    VLP_ACTIVATIONS,
    TensorTable,
    Transform,
    activation,
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
    stack,
    to_hf,
    unflatten,
    write_hf,
)
from vlpjax.utils.errors import VlpError

# ---------------------------------------------------------------------------------------------
# The mapping table.


def _conv1d(num_in: int) -> Transform:
    """GPT-2 Conv1D weight [in, out] <-> Flax kernel [*in_axes, *out_axes] (`num_in` in-axes)."""
    return Transform(
        f"conv1d{num_in}",
        lambda w, shape: w.reshape(shape),
        lambda k: k.reshape(math.prod(k.shape[:num_in]), -1),
        lambda s: (math.prod(s[:num_in]), math.prod(s[num_in:])),
    )


CONV1D = _conv1d(1)  # q/k/v [D, H, Dh], MLP [in, out]
CONV1D_HEADS_IN = _conv1d(2)  # attention output [H, Dh, D]


DEC, HF = "decoder", "transformer"
_LAYER, _HF_LAYER = f"{DEC}/transformer/layer_{{i}}", f"{HF}.h.{{i}}"
QKV = (("query", "q"), ("key", "k"), ("value", "v"))  # c_attn's order
_PARTS = tuple(part for _, part in QKV)

# (vlpjax param path, HF tensor name, transform); `{i}` is a layer index on both sides.
MAPPING: list[tuple[str, str, Transform]] = [
    (f"{DEC}/token_embed/embedding", f"{HF}.wte.weight", SAME),
    (f"{DEC}/position_embed/embedding", f"{HF}.wpe.weight", SAME),
    *norm_rows(f"{_LAYER}/self_attention_norm", f"{_HF_LAYER}.ln_1"),
    *[
        row
        for ours, theirs in QKV
        for row in linear_rows(
            f"{_LAYER}/self_attention/{ours}", f"{_HF_LAYER}.attn.c_attn.{theirs}", CONV1D, FLAT
        )
    ],
    *linear_rows(f"{_LAYER}/self_attention/out", f"{_HF_LAYER}.attn.c_proj", CONV1D_HEADS_IN, SAME),
    *norm_rows(f"{_LAYER}/mlp_norm", f"{_HF_LAYER}.ln_2"),
    *linear_rows(f"{_LAYER}/mlp/fc1", f"{_HF_LAYER}.mlp.c_fc", CONV1D, SAME),
    *linear_rows(f"{_LAYER}/mlp/fc2", f"{_HF_LAYER}.mlp.c_proj", CONV1D, SAME),
    *norm_rows(f"{DEC}/transformer/final_norm", f"{HF}.ln_f"),
]

# The causal-mask buffers older checkpoints carry; they hold no weights.
IGNORED_HF = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
_FUSED = re.compile(r"^(transformer\.h\.\d+\.attn\.c_attn)\.(weight|bias)$")
LM_HEAD = "lm_head.weight"

_TABLE = TensorTable(MAPPING)
hf_name = _TABLE.hf_name
vlp_path = _TABLE.vlp_path


def _split_fused(path: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF tensors as saved -> the table's names: `transformer.` prefixed, c_attn split into q, k
    and v, the tied lm_head checked and dropped."""
    tensors = {k if k.startswith(("transformer.", "lm_head.")) else f"{HF}.{k}": v
               for k, v in tensors.items()}  # fmt: skip
    if LM_HEAD in tensors:
        head, wte = tensors.pop(LM_HEAD), tensors.get(f"{HF}.wte.weight")
        if wte is None or head.shape != wte.shape or not np.array_equal(head, wte):
            raise VlpError(
                f"{path}: {LM_HEAD} is not tied to {HF}.wte.weight (vlpjax's GPT ties them)"
            )
    return split_fused(path, tensors, _FUSED, _PARTS, axis=-1)


# ---------------------------------------------------------------------------------------------
# Configs.

# transformers' GPT2Config defaults (for keys a file omits).
HF_GPT2_DEFAULTS = dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
    activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    layer_norm_epsilon=1e-5, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False, tie_word_embeddings=True, bos_token_id=50256,
    eos_token_id=50256, pad_token_id=None,
)  # fmt: skip
# vlpjax activation -> GPT-2's name (GPT-2 spells the tanh approximation gelu_new).
GPT2_ACTIVATIONS = {**VLP_ACTIVATIONS, "gelu_tanh": "gelu_new"}


def _single_id(value, key: str, where: str):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise VlpError(f"{where}: {key}={list(value)} (need a single id)")
        value = value[0]
    return None if value is None else int(value)


def gpt2_model_config(hf_config: dict, scan: bool = False, where: str = "config.json") -> dict:
    """A transformers GPT2Config dict -> a vlpjax `config.model` dict for `DecoderOnlyLM`
    (`where` names the config in errors)."""
    hf = {**HF_GPT2_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    unsupported = {
        "scale_attn_weights": (bool(hf["scale_attn_weights"]), True),
        "scale_attn_by_inverse_layer_idx": (bool(hf["scale_attn_by_inverse_layer_idx"]), False),
        "add_cross_attention": (bool(hf["add_cross_attention"]), False),
        "tie_word_embeddings": (bool(hf["tie_word_embeddings"]), True),
    }
    for key, (value, want) in unsupported.items():
        if value != want:
            raise VlpError(f"{where}: {key}={value} is not supported (vlpjax's GPT needs {want})")
    width, heads = int(hf["n_embd"]), int(hf["n_head"])
    if width % heads:
        raise VlpError(f"{where}: n_embd={width} is not a multiple of n_head={heads}")
    vocab = int(hf["vocab_size"])
    # GPT-2's <|endoftext|> is its last id; a config without an eos id gets that.
    eos = _single_id(hf["eos_token_id"], "eos_token_id", where)
    eos = vocab - 1 if eos is None else eos
    pad = _single_id(hf.get("pad_token_id"), "pad_token_id", where)
    return dict(
        name="gpt",
        dtype="float32",
        vocab_size=vocab,
        max_length=int(hf["n_positions"]),
        width=width,
        depth=int(hf["n_layer"]),
        num_heads=heads,
        mlp_dim=int(hf["n_inner"] or 4 * width),
        activation=activation(hf["activation_function"], where),
        norm_first=True,
        norm_eps=float(hf["layer_norm_epsilon"]),
        final_norm=True,
        pad_id=eos if pad is None else pad,
        eos_id=eos,
        dropout_rate=float(hf["resid_pdrop"]),
        scan=bool(scan),
    )


def hf_gpt2_model_config(path: str, scan: bool = False) -> dict:
    """A HF GPT-2 checkpoint directory's `config.json` -> a vlpjax `config.model` dict."""
    config_path, hf = read_hf_config(path, "gpt2", "GPT2LMHeadModel", "a GPT-2")
    return gpt2_model_config(hf, scan=scan, where=config_path)


def _take(model_config) -> dict:
    """A vlpjax `config.model` -> DecoderOnlyLM's fields with defaults filled (+ name, dtype)."""
    from vlpjax.models import flat_fields
    from vlpjax.models.generative import DecoderOnlyLM

    return flat_fields(DecoderOnlyLM, model_config)


def _hf_config(model_config) -> dict:
    """A vlpjax `config.model` (dict or ConfigDict) -> a transformers GPT2Config dict."""
    cfg = _take(model_config)
    if cfg["name"] != "gpt":
        raise VlpError(f"model.name '{cfg['name']}': only 'gpt' models export to hf_gpt2")
    check_required(
        {
            "model.norm_first": (cfg["norm_first"], True),
            "model.final_norm": (cfg["final_norm"], True),
        },
        "GPT-2",
    )
    if cfg["activation"] not in GPT2_ACTIVATIONS:
        raise VlpError(f"model.activation '{cfg['activation']}' has no Hugging Face equivalent")
    eos, dropout = int(cfg["eos_id"]), float(cfg["dropout_rate"])
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "dtype": "float32",
        "vocab_size": int(cfg["vocab_size"]),
        "n_positions": int(cfg["max_length"]),
        "n_embd": int(cfg["width"]),
        "n_layer": int(cfg["depth"]),
        "n_head": int(cfg["num_heads"]),
        "n_inner": int(cfg["mlp_dim"]),
        "activation_function": GPT2_ACTIVATIONS[cfg["activation"]],
        "layer_norm_epsilon": float(cfg["norm_eps"]),
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "bos_token_id": eos,  # GPT-2 starts and ends texts with one <|endoftext|> id
        "eos_token_id": eos,
        "pad_token_id": int(cfg["pad_id"]),
    }


# ---------------------------------------------------------------------------------------------
# Entry points.


def _expected_shapes(model_config) -> dict[str, tuple]:
    """Unrolled vlpjax param path -> shape, from the module itself (no computation)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from vlpjax.models.generative import DecoderOnlyLM

    fields = {k: v for k, v in _take(model_config).items() if k not in ("name", "dtype")}
    model = DecoderOnlyLM(**{**fields, "scan": False})
    shapes = jax.eval_shape(
        lambda rng: model.init(rng, jnp.zeros((1, 2), jnp.int32)), jax.random.key(0)
    )
    return {k: tuple(v.shape) for k, v in flatten(nn.unbox(dict(shapes))["params"]).items()}


def load_hf_gpt2(path: str, scan: bool = False) -> tuple[dict, dict]:
    """A Hugging Face GPT2LMHeadModel (or GPT2Model) directory -> (vlpjax `config.model` dict,
    float32 numpy params). `scan=True` stacks the layers under `decoder/transformer/layers`."""
    model_config = hf_gpt2_model_config(path, scan=scan)
    tensors = _split_fused(path, read_tensors(path))
    flat = from_hf(
        path, tensors, _expected_shapes(model_config), _TABLE, IGNORED_HF, "a GPT2LMHeadModel"
    )
    if scan:
        flat = stack(flat)
    return model_config, unflatten(flat)


def export_hf_gpt2(params, model_config, path: str) -> None:
    """vlpjax GPT params (scanned or unrolled, boxed or not) -> a HF GPT2LMHeadModel directory.

    Writes `config.json` and `model.safetensors` (no `lm_head.weight`: it is tied to `wte`) that
    `transformers.GPT2LMHeadModel.from_pretrained` loads with no missing or unexpected keys.
    """
    from flax import linen as nn

    hf_config = _hf_config(model_config)
    params = nn.unbox(params)
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]  # a variables dict
    flat = flat_for_export(params)
    expected = _expected_shapes(plain(model_config))
    tensors = to_hf(flat, expected, _TABLE, "export_hf_gpt2", "param")
    write_hf(path, hf_config, fuse(tensors, _FUSED, _PARTS, axis=-1))
