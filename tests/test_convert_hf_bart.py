"""Hugging Face BartForConditionalGeneration <-> vlpjax EncoderDecoder: parity of loaded weights
and the export round trip."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch  # noqa: E402  (test extra: torch==2.13.0 CPU)
import transformers  # noqa: E402
from flax import linen as nn
from helpers.trees import assert_trees_equal

from vlpjax.convert.hf_bart import (
    bart_model_config,
    export_hf_bart,
    hf_bart_model_config,
    load_hf_bart,
)
from vlpjax.models.encoder_decoder import EncoderDecoder
from vlpjax.utils.errors import VlpError

ATOL = 1e-4

# Two differently shaped configs: "plain" is bart-base-like (no embedding scale, pad 1);
# "scaled" has scale_embedding, a deeper decoder than encoder, gelu_new and pad 0.
CONFIGS = {
    "plain": dict(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
        max_position_embeddings=20, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=2,
    ),
    "scaled": dict(
        vocab_size=87, d_model=24, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40,
        max_position_embeddings=16, scale_embedding=True, activation_function="gelu_new",
        pad_token_id=0, bos_token_id=3, eos_token_id=2, decoder_start_token_id=2,
        forced_eos_token_id=2,
    ),
}  # fmt: skip
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=0.1)
TARGET_LENGTH = 7


def make_hf(spec, seed=0):
    torch.manual_seed(seed)
    model = transformers.BartForConditionalGeneration(
        transformers.BartConfig(**spec, **NO_DROPOUT)
    ).eval()
    with torch.no_grad():  # random (not default-init) norms/biases so every tensor matters
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
    return model


def make_inputs(spec, batch=3, seed=1):
    """Right-padded source rows (full, half, 3 tokens) ending in eos, and decoder inputs that
    start from decoder_start (one row padded)."""
    rng = np.random.default_rng(seed)
    length, pad, eos = spec["max_position_embeddings"], spec["pad_token_id"], spec["eos_token_id"]
    content = [t for t in range(spec["vocab_size"]) if t not in (pad, eos)]
    ids = np.full((batch, length), pad, np.int64)
    for row, n in enumerate([length, length // 2, 3][:batch]):
        ids[row, : n - 1] = rng.choice(content, n - 1)
        ids[row, n - 1] = eos
    labels = rng.choice(content, (batch, TARGET_LENGTH))
    labels[1, TARGET_LENGTH - 3 :] = pad
    dec = np.concatenate([np.full((batch, 1), spec["decoder_start_token_id"]), labels[:, :-1]], 1)
    return ids, dec, labels


def hf_logits(model, ids, dec, labels, pad):
    """HF logits: given decoder_input_ids with its padding mask, and from labels (HF shifts
    them right itself and passes no decoder mask)."""
    with torch.no_grad():
        given = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(ids != pad),
            decoder_input_ids=torch.from_numpy(dec),
            decoder_attention_mask=torch.from_numpy(dec != pad),
        ).logits
        shifted = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(ids != pad),
            labels=torch.from_numpy(labels),
        ).logits
    return {"given": given.numpy(), "shifted": shifted.numpy()}


def build(model_config):
    fields = {k: v for k, v in model_config.items() if k not in ("name", "dtype")}
    return EncoderDecoder(**fields)


def vlp_logits(model_config, params, ids, dec, labels):
    model = build(model_config)
    variables = {"params": params}

    def given(variables, ids, dec):
        encoded, valid = model.apply(variables, source=ids, method="encode")
        return model.apply(variables, dec, encoded, valid, method="decode_logits")

    def shifted(variables, ids, labels):  # __call__ shifts the target right itself
        return model.apply(variables, source=ids, target=labels)[1]["dec/logits"]

    ids, dec, labels = (jnp.asarray(x, jnp.int32) for x in (ids, dec, labels))
    with jax.default_matmul_precision("float32"):
        return {
            "given": np.asarray(jax.jit(given)(variables, ids, dec)),
            "shifted": np.asarray(jax.jit(shifted)(variables, ids, labels)),
        }


def max_diffs(ours, ref, dec, pad):
    # Without a decoder mask HF attends to the target's padding; vlpjax masks it as keys. With
    # right padding that changes only the logits at the pad positions themselves.
    shown = dec != pad
    return {
        "given": float(np.max(np.abs(ours["given"] - ref["given"]))),
        "shifted": float(np.max(np.abs(ours["shifted"] - ref["shifted"])[shown])),
    }


def init_tree(model_config):
    model = build(model_config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(
        lambda r: model.init(r, source=tokens, target=tokens), jax.random.key(0)
    )
    return jax.tree.map(lambda x: x.shape, nn.unbox(variables["params"]))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    model = make_hf(spec)
    path = str(tmp_path_factory.mktemp(f"hf_bart_{request.param}"))
    model.save_pretrained(path, safe_serialization=True)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    ids, dec, labels = make_inputs(spec)
    ref = hf_logits(model, ids, dec, labels, spec["pad_token_id"])
    assert np.abs(ref["given"]).max() > 0.5  # logits big enough for ATOL to mean something
    return request.param, spec, path, (ids, dec, labels), ref


@pytest.mark.parametrize("scan", [False, True])
def test_load_matches_hf(hf_checkpoint, scan):
    name, spec, path, (ids, dec, labels), ref = hf_checkpoint
    model_config, params = load_hf_bart(path, scan=scan)
    assert model_config["scan"] is scan
    assert model_config["embed_scale"] == spec.get("scale_embedding", False)
    assert model_config["pad_id"] == spec["pad_token_id"]
    assert model_config["max_source_length"] == spec["max_position_embeddings"]
    # Exactly the tree (keys and shapes) of the matching module's init, all float32 numpy.
    assert jax.tree.map(lambda x: x.shape, params) == init_tree(model_config)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in jax.tree.leaves(params))
    positions = params["encoder"]["text_position"]["embedding"]
    assert positions.shape[0] == spec["max_position_embeddings"] + 2
    if scan:
        layers = params["decoder"]["transformer"]["layers"]
        assert layers["mlp"]["fc1"]["kernel"].shape[0] == spec["decoder_layers"]

    diffs = max_diffs(
        vlp_logits(model_config, params, ids, dec, labels), ref, dec, spec["pad_token_id"]
    )
    print(f"\n{name} load (scan={scan}) parity (max abs diff): {diffs}")
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("scan", [False, True])
def test_export_round_trip(hf_checkpoint, tmp_path, scan):
    name, spec, path, (ids, dec, labels), _ = hf_checkpoint
    model_config, _ = load_hf_bart(path, scan=scan)
    # Fresh vlpjax-side params (not HF's): the boxed tree of the module's init, random values.
    model = build(model_config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda r: model.init(r, source=tokens, target=tokens), jax.random.key(3))
    rng = np.random.default_rng(4)
    variables = jax.tree.map(
        lambda x: np.asarray(0.3 * rng.normal(size=x.shape), np.float32), boxed
    )
    assert isinstance(variables["params"]["token_embed"]["embedding"], nn.LogicallyPartitioned)
    params = nn.unbox(variables["params"])
    ours = vlp_logits(model_config, params, ids, dec, labels)

    out = str(tmp_path / "export")
    config_arg = ml_collections.ConfigDict(model_config) if scan else model_config
    export_hf_bart(variables, config_arg, out)  # boxed variables dicts and ConfigDicts work too
    hf, info = transformers.BartForConditionalGeneration.from_pretrained(
        out, output_loading_info=True
    )
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (
        info
    )
    hf = hf.eval()
    shared = hf.model.shared.weight
    assert hf.lm_head.weight is shared and hf.model.decoder.embed_tokens.weight is shared
    ref = hf_logits(hf, ids, dec, labels, spec["pad_token_id"])
    diffs = max_diffs(ours, ref, dec, spec["pad_token_id"])
    print(f"\n{name} export (scan={scan}) parity (max abs diff): {diffs}")
    assert max(diffs.values()) < ATOL, diffs

    config_again, params_again = load_hf_bart(out, scan=scan)
    assert config_again == model_config
    assert_trees_equal(params_again, params)


def test_bare_bart_model_and_torch_checkpoints(hf_checkpoint, tmp_path):
    """A BartModel checkpoint (no `model.` prefix, no final_logits_bias) loads as transformers
    loads it into BartForConditionalGeneration; a pytorch_model.bin with every tied copy loads
    the same params as the safetensors file."""
    _, spec, path, (ids, dec, labels), _ = hf_checkpoint
    hf = transformers.BartForConditionalGeneration.from_pretrained(path).eval()
    hf.model.save_pretrained(str(tmp_path / "bare"), safe_serialization=True)
    model_config, params = load_hf_bart(str(tmp_path / "bare"))
    np.testing.assert_array_equal(params["decoder"]["logits_bias"], 0.0)
    reloaded = transformers.BartForConditionalGeneration.from_pretrained(str(tmp_path / "bare"))
    diffs = max_diffs(
        vlp_logits(model_config, params, ids, dec, labels),
        hf_logits(reloaded.eval(), ids, dec, labels, spec["pad_token_id"]),
        dec,
        spec["pad_token_id"],
    )
    assert max(diffs.values()) < ATOL, diffs

    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    state = hf.state_dict()
    assert "lm_head.weight" in state and "model.encoder.embed_tokens.weight" in state
    torch.save(state, str(torch_dir / "pytorch_model.bin"))
    (torch_dir / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    assert_trees_equal(load_hf_bart(str(torch_dir))[1], load_hf_bart(path)[1])


def test_model_config_translation():
    hf = {**CONFIGS["scaled"], "model_type": "bart", "dropout": 0.2}
    config = bart_model_config(hf, scan=True)
    assert config == dict(
        name="bart", dtype="float32", vocab_size=87, max_source_length=16, max_target_length=16,
        width=24, encoder_depth=2, decoder_depth=3, num_heads=4, mlp_dim=40, image_size=0,
        activation="gelu_tanh", norm_first=False, norm_eps=1e-5, embed_norm=True,
        embed_scale=True, position_offset=2, logits_bias=True, pad_id=0, decoder_start_id=2,
        dropout_rate=0.2, scan=True,
    )  # fmt: skip
    # A config.json that omits keys reads transformers' BartConfig defaults (bart-large).
    defaults = bart_model_config({"model_type": "bart"})
    assert (defaults["width"], defaults["num_heads"], defaults["pad_id"]) == (1024, 16, 1)
    assert defaults["activation"] == "gelu" and defaults["embed_scale"] is False


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(decoder_attention_heads=2),
            "encoder_attention_heads=4 and decoder_attention_heads=2",
        ),
        (dict(decoder_ffn_dim=41), "encoder_ffn_dim=37 and decoder_ffn_dim=41"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
        (dict(activation_function="mish"), "activation_function 'mish'"),
        (dict(encoder_attention_heads=5, decoder_attention_heads=5), "not divisible"),
        (dict(pad_token_id=None), "pad_token_id is not set"),
    ],
)
def test_config_errors(change, match):
    with pytest.raises(VlpError, match=match):
        bart_model_config({**CONFIGS["plain"], "model_type": "bart", **change})


def test_errors_name_the_path(tmp_path, hf_checkpoint):
    _, _, path, _, _ = hf_checkpoint
    with pytest.raises(VlpError, match="nope"):
        load_hf_bart(str(tmp_path / "nope"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VlpError, match=f"{empty}.*config.json"):
        load_hf_bart(str(empty))

    (empty / "config.json").write_text(json.dumps({"model_type": "mbart"}))
    with pytest.raises(VlpError, match="not a BART model"):
        load_hf_bart(str(empty))

    hf_config = json.load(open(os.path.join(path, "config.json")))
    heads = hf_config["decoder_attention_heads"]
    (empty / "config.json").write_text(json.dumps({**hf_config, "decoder_attention_heads": 1}))
    with pytest.raises(VlpError, match=f"{empty}.*encoder_attention_heads={heads}"):
        hf_bart_model_config(str(empty))

    (empty / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(VlpError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_bart(str(empty))

    import safetensors.numpy

    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    del tensors["model.decoder.layers.1.encoder_attn_layer_norm.bias"]
    tensors["model.decoder.extra.weight"] = np.zeros(2, np.float32)
    safetensors.numpy.save_file(tensors, str(empty / "model.safetensors"))
    with pytest.raises(VlpError) as e:
        load_hf_bart(str(empty))
    message = str(e.value)
    assert str(empty) in message and "\n" not in message
    assert "missing tensors: model.decoder.layers.1.encoder_attn_layer_norm.bias" in message
    assert "unexpected tensors: model.decoder.extra.weight" in message

    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    tensors["final_logits_bias"] = tensors["final_logits_bias"][:, :-1]
    safetensors.numpy.save_file(tensors, str(empty / "model.safetensors"))
    with pytest.raises(VlpError, match="final_logits_bias has shape"):
        load_hf_bart(str(empty))


def test_export_errors(hf_checkpoint, tmp_path):
    _, _, path, _, _ = hf_checkpoint
    model_config, params = load_hf_bart(path)
    for change, match in [
        (dict(norm_first=True), "model.norm_first"),
        (dict(norm_eps=1e-6), "model.norm_eps"),
        (dict(max_target_length=5), "model.max_target_length"),
        (dict(name="simvlm"), "only 'bart' models"),
    ]:
        with pytest.raises(VlpError, match=match):
            export_hf_bart(params, {**model_config, **change}, str(tmp_path / "a"))
    del params["decoder"]["embed_norm"]
    with pytest.raises(VlpError, match="missing params: decoder/embed_norm/bias"):
        export_hf_bart(params, model_config, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_converters_registry():
    from vlpjax.convert import CONFIG_READERS, CONVERTERS

    assert CONVERTERS["hf_bart"] == (load_hf_bart, export_hf_bart)
    assert CONFIG_READERS["hf_bart"] is hf_bart_model_config
