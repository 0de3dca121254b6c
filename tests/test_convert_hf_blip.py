"""Hugging Face BLIP (BlipForImageTextRetrieval, BlipForConditionalGeneration) <-> vlpjax BLIP
(FusionModel): parity of loaded weights (ITC, ITM, decoder logits, greedy captions) and the
export round trip."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch  # noqa: E402  (test extra: torch==2.13.0 CPU)
import transformers  # noqa: E402
from flax import linen as nn
from helpers.trees import assert_trees_equal

from vlpjax.convert import (
    CONFIG_READERS,
    CONVERTERS,
    export_hf_blip_caption,
    export_hf_blip_retrieval,
    load_hf_blip_caption,
    load_hf_blip_retrieval,
)
from vlpjax.decode import DecodeConfig
from vlpjax.models import build_model
from vlpjax.train.generation import generate
from vlpjax.utils.errors import VlpError

ATOL = 1e-4

# The text and the image towers differ in width (cross-attention reads 24-d image tokens from
# 32-d text), the ViT has a non-default eps; small ids stand in for BLIP's [DEC] and [SEP].
# Weights drawn with std 0.1 (HF's ViT default is 1e-10, which makes every image look alike):
# the texts depend on the image and greedy captions differ from image to image.
SPEC = dict(
    text=dict(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=97, sep_token_id=3,
        eos_token_id=2, pad_token_id=0, initializer_range=0.1,
    ),
    vision=dict(
        hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        image_size=16, patch_size=4, layer_norm_eps=1e-6, initializer_range=0.1,
    ),
    image_text_hidden_size=12,
)  # fmt: skip
CLS = 1  # the first token of the texts (BERT's [CLS])
LOADERS = {
    "retrieval": (transformers.BlipForImageTextRetrieval, load_hf_blip_retrieval),
    "caption": (transformers.BlipForConditionalGeneration, load_hf_blip_caption),
}
# The parameter groups each HF task model holds (the rest keep their fresh initialisation).
GROUPS = {
    "retrieval": {
        "image_encoder", "text_embed", "text", "image_projection", "text_projection", "itm_head",
    },
    "caption": {"image_encoder", "text_embed", "text", "lm_head"},
}  # fmt: skip


def make_hf(cls, seed=0):
    torch.manual_seed(seed)
    config = transformers.BlipConfig(
        text_config=SPEC["text"],
        vision_config=SPEC["vision"],
        image_text_hidden_size=SPEC["image_text_hidden_size"],
        initializer_range=0.1,
    )
    model = cls(config).eval()
    with torch.no_grad():  # random (not default-init) norms/biases so every tensor matters
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_inputs(batch=3, seed=1):
    """Images (one more than texts, so the ITC matrix is not square); [CLS]-first texts, a full
    row and right-padded rows, with their attention mask; [DEC]-first decoder inputs."""
    rng = np.random.default_rng(seed)
    size, text = SPEC["vision"]["image_size"], SPEC["text"]
    pixels = rng.normal(size=(batch + 1, 3, size, size)).astype(np.float32)
    length = text["max_position_embeddings"]
    content = np.arange(4, text["vocab_size"] - 2)
    ids = np.full((batch, length), text["pad_token_id"], np.int64)
    for row, n in enumerate([length, length // 2, 3][:batch]):
        ids[row, 0] = CLS
        ids[row, 1:n] = rng.choice(content, n - 1)
    tokens = rng.choice(content, (batch, length))
    tokens[:, 0] = text["bos_token_id"]
    return pixels, ids, (ids != text["pad_token_id"]).astype(np.int64), tokens


def hf_outputs(kind, model, pixels, ids, mask, tokens):
    t = {k: torch.from_numpy(v) for k, v in dict(pixels=pixels, ids=ids, mask=mask).items()}
    paired = t["pixels"][: len(ids)]
    with torch.no_grad():
        if kind == "retrieval":
            itc = model(t["ids"], t["pixels"], use_itm_head=False, attention_mask=t["mask"])
            itm = model(t["ids"], paired, use_itm_head=True, attention_mask=t["mask"])
            return {"itc": itc.itm_score.numpy(), "itm": itm.itm_score.numpy()}
        logits = model(pixel_values=paired, input_ids=torch.from_numpy(tokens)).logits
        return {"logits": logits.numpy()}


def abstract_params(model_config):
    """The boxed `params` of `model_config`'s module as ShapeDtypeStructs (no computation)."""
    model = build_model(ml_collections.ConfigDict(model_config))
    size = model_config["image"]["image_size"]
    variables = jax.eval_shape(
        lambda r: model.init(
            r, image=jnp.zeros((1, size, size, 3)), text=jnp.zeros((1, 2), jnp.int32)
        ),
        jax.random.key(0),
    )
    return variables["params"]


def init_tree(model_config):
    return jax.tree.map(lambda x: x.shape, nn.unbox(abstract_params(model_config)))


def completed(model_config, params):
    """`params` on exactly the tree of `model_config`'s module: zeros where a checkpoint has
    nothing (the outputs compared never read those), other models' extra leaves dropped."""

    def pick(shapes, given):
        if isinstance(shapes, dict):
            return {k: pick(v, given.get(k, {})) for k, v in shapes.items()}
        return np.zeros(shapes, np.float32) if isinstance(given, dict) else given

    return pick(init_tree(model_config), params)


@functools.cache
def _compiled(kind, config_json):
    """The jitted outputs of one model config (compiled once per config and kind)."""
    model = build_model(ml_collections.ConfigDict(json.loads(config_json)))
    if kind == "retrieval":

        def outputs(variables, images, ids, tokens):
            img = model.apply(variables, image=images)[1]["img/embed"]
            txt = model.apply(variables, text=ids)[1]["txt/embed"]
            image_tokens = model.apply(variables, images[: len(ids)], method="image_tokens")
            itm = model.apply(variables, image_tokens, text=ids, method="itm_logits")
            return {"itc": img @ txt.T, "itm": itm}

    else:

        def outputs(variables, images, ids, tokens):
            encoded = model.apply(variables, images[: len(ids)], method="encode")
            return {"logits": model.apply(variables, tokens, *encoded, method="decode_logits")}

    return model, jax.jit(outputs)


def vlp_outputs(kind, model_config, params, pixels, ids, mask, tokens):
    _, outputs = _compiled(kind, json.dumps(model_config, sort_keys=True))
    images = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    variables = {"params": completed(model_config, params)}
    with jax.default_matmul_precision("float32"):
        out = outputs(
            variables, images, jnp.asarray(ids, jnp.int32), jnp.asarray(tokens, jnp.int32)
        )
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(ours, ref):
    return {k: float(np.max(np.abs(ours[k] - ref[k]))) for k in ref}


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture(scope="module", params=sorted(LOADERS))
def hf_checkpoint(request, tmp_path_factory, inputs):
    kind = request.param
    model = make_hf(LOADERS[kind][0])
    path = str(tmp_path_factory.mktemp(f"hf_blip_{kind}"))
    model.save_pretrained(path, safe_serialization=True)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    ref = hf_outputs(kind, model, *inputs)
    assert min(np.abs(v).max() for v in ref.values()) > 0.1  # big enough for ATOL to matter
    return kind, model, path, ref


def test_load_matches_hf(hf_checkpoint, inputs):
    kind, _, path, ref = hf_checkpoint
    model_config, params = LOADERS[kind][1](path)
    assert model_config["image"]["scan"] is False
    assert model_config["enc_id"] is None and model_config["decoder"] is (kind == "caption")
    assert model_config["eos_id"] == SPEC["text"]["sep_token_id"]
    assert model_config["dec_id"] == (SPEC["text"]["bos_token_id"] if kind == "caption" else None)
    # Exactly the trees of the matching module's init for the groups the checkpoint holds.
    tree = init_tree(model_config)
    assert set(params) == GROUPS[kind]
    assert jax.tree.map(lambda x: x.shape, params) == {k: tree[k] for k in GROUPS[kind]}
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in jax.tree.leaves(params))
    if kind == "caption":  # HF has no encoder self-attention: it starts as the decoder's
        layer = params["text"]["layer_1"]
        assert_trees_equal(layer["self_attention"], layer["decoder_attention"])
        assert_trees_equal(layer["self_attention_norm"], layer["decoder_attention_norm"])

    diffs = max_diffs(vlp_outputs(kind, model_config, params, *inputs), ref)
    print(f"\n{kind} load parity (max abs diff): {diffs}")
    assert max(diffs.values()) < ATOL, diffs

    # scan=True stacks the ViT's layers (the text transformer is never scanned).
    scan_config, scanned = LOADERS[kind][1](path, scan=True)
    assert scan_config == {**model_config, "image": {**model_config["image"], "scan": True}}
    assert jax.tree.map(lambda x: x.shape, scanned) == {
        k: v for k, v in init_tree(scan_config).items() if k in GROUPS[kind]
    }
    unrolled = params["image_encoder"]["transformer"]
    stacked = scanned["image_encoder"]["transformer"]["layers"]
    np.testing.assert_array_equal(
        stacked["mlp"]["fc1"]["kernel"], np.stack([unrolled[f"layer_{i}"]["mlp"]["fc1"]["kernel"]
                                                   for i in range(len(unrolled))])
    )  # fmt: skip


@pytest.mark.parametrize("hf_checkpoint", ["caption"], indirect=True)
def test_greedy_captions_match_hf(hf_checkpoint, inputs):
    """Cached greedy decoding from [DEC] = HF's `generate` (which forces bos_token_id first and
    stops at sep_token_id)."""
    _, hf, path, _ = hf_checkpoint
    model_config, params = load_hf_blip_caption(path)
    length, pad = 10, SPEC["text"]["pad_token_id"]
    pixels = inputs[0]
    with torch.no_grad():
        generated = hf.generate(
            pixel_values=torch.from_numpy(pixels),
            do_sample=False,
            num_beams=1,
            max_new_tokens=length,
            suppress_tokens=[pad],  # vlpjax.decode never generates its pad_id
        ).numpy()
    assert np.all(generated[:, 0] == model_config["dec_id"])  # HF returns the forced [DEC]
    expected = np.full((len(pixels), length), pad)  # HF stops at [SEP]; vlpjax pads to length
    expected[:, : generated.shape[1] - 1] = generated[:, 1:]
    model, _ = _compiled("caption", json.dumps(model_config, sort_keys=True))
    with jax.default_matmul_precision("float32"):
        tokens, _ = generate(
            model,
            {"params": completed(model_config, params)},
            {"image": jnp.asarray(pixels.transpose(0, 2, 3, 1))},
            DecodeConfig("greedy", max_length=length),
            start_id=model_config["dec_id"],
            eos_id=model_config["eos_id"],
            pad_id=pad,
        )
    tokens = np.asarray(tokens)
    print(f"\ngreedy captions: {tokens.tolist()}")
    assert all(len(set(row.tolist())) > 2 for row in tokens)  # not a degenerate repetition
    assert len({tuple(row) for row in tokens.tolist()}) > 1  # the captions see their image
    np.testing.assert_array_equal(tokens, expected)


def test_export_round_trip(tmp_path, inputs):
    """One vlpjax BLIP (random params, with the decoder) exports to both HF task models; each
    loads with no missing or unexpected keys and gives vlpjax's outputs."""
    hf_path = str(tmp_path / "hf")
    make_hf(transformers.BlipForConditionalGeneration).save_pretrained(hf_path)
    model_config, _ = load_hf_blip_caption(hf_path)
    rng = np.random.default_rng(4)
    variables = {
        "params": jax.tree.map(
            lambda x: np.asarray(0.3 * rng.normal(size=x.shape), np.float32),
            abstract_params(model_config),
        )
    }
    assert isinstance(variables["params"]["itm_head"]["kernel"], nn.LogicallyPartitioned)
    params = nn.unbox(variables["params"])

    for kind, export in (
        ("retrieval", export_hf_blip_retrieval),
        ("caption", export_hf_blip_caption),
    ):
        # The retrieval outputs never read the decoder's parameters: computed by the same
        # model without them (the retrieval load test's, already compiled).
        own_config = {**model_config, "decoder": kind == "caption"}
        own_config["dec_id"] = model_config["dec_id"] if kind == "caption" else None
        ours = vlp_outputs(kind, own_config, params, *inputs)
        out = str(tmp_path / kind)
        export(variables, ml_collections.ConfigDict(model_config), out)  # boxed, ConfigDict
        hf, info = LOADERS[kind][0].from_pretrained(out, output_loading_info=True)
        assert not any(
            info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
        ), info
        diffs = max_diffs(ours, hf_outputs(kind, hf.eval(), *inputs))
        print(f"\n{kind} export parity (max abs diff): {diffs}")
        assert max(diffs.values()) < ATOL, diffs

        config_again, params_again = LOADERS[kind][1](out)
        assert config_again == own_config
        for group in GROUPS[kind] - {"text"}:
            assert_trees_equal(params_again[group], params[group])
        held = (
            ("decoder_attention", "decoder_attention_norm")
            if kind == "caption"
            else ("self_attention", "self_attention_norm")
        )
        for name, layer in params["text"].items():
            again = params_again["text"][name]
            for sub in ("cross_attention", "cross_attention_norm", "mlp", "mlp_norm", *held):
                assert_trees_equal(again[sub], layer[sub])

        # A scanned ViT exports the same tensors.
        scan_config, scanned = LOADERS[kind][1](out, scan=True)
        export(scanned, scan_config, str(tmp_path / f"{kind}_scan"))
        assert_trees_equal(
            safetensors.numpy.load_file(os.path.join(out, "model.safetensors")),
            safetensors.numpy.load_file(str(tmp_path / f"{kind}_scan" / "model.safetensors")),
        )


def test_registry_and_inspect(hf_checkpoint, capsys):
    from vlpjax.convert.__main__ import main

    kind, _, path, _ = hf_checkpoint
    fmt = f"hf_blip_{kind}"
    load = LOADERS[kind][1]
    export = export_hf_blip_retrieval if kind == "retrieval" else export_hf_blip_caption
    assert CONVERTERS[fmt] == (load, export)
    assert CONFIG_READERS[fmt](path) == load(path)[0]
    assert main(["inspect", fmt, path, "--check"]) == 0
    captured = capsys.readouterr()
    config = json.loads(captured.out)
    assert config["name"] == "blip" and config["width"] == SPEC["text"]["hidden_size"]
    assert config["image"]["width"] == SPEC["vision"]["hidden_size"]
    assert "ok:" in captured.err
    other = "hf_blip_caption" if kind == "retrieval" else "hf_blip_retrieval"
    assert main(["inspect", other, path]) == 2
    assert f"load it with format '{fmt}'" in capsys.readouterr().err


def test_errors(hf_checkpoint, tmp_path):
    kind, _, path, _ = hf_checkpoint
    load = LOADERS[kind][1]
    with pytest.raises(VlpError, match="nope"):
        load(str(tmp_path / "nope"))

    hf_config = json.load(open(os.path.join(path, "config.json")))
    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(hf_config))
    qkv = "vision_model.encoder.layers.1.self_attn.qkv.weight"
    safetensors.numpy.save_file(
        {**tensors, qkv: tensors[qkv][:-1]}, str(broken / "model.safetensors")
    )
    with pytest.raises(VlpError, match=f"{qkv} has shape .* does not split into query"):
        load(str(broken))
    gone = "vision_model.post_layernorm.bias"
    safetensors.numpy.save_file(
        {k: v for k, v in tensors.items() if k != gone}, str(broken / "model.safetensors")
    )
    with pytest.raises(VlpError, match=f"missing tensors: {gone}"):
        load(str(broken))

    if kind == "caption":  # an untied LM head
        untied = {
            **tensors,
            "text_decoder.cls.predictions.decoder.weight": tensors[
                "text_decoder.bert.embeddings.word_embeddings.weight"
            ]
            + 1.0,
        }
        safetensors.numpy.save_file(untied, str(broken / "model.safetensors"))
        with pytest.raises(VlpError, match="decoder.weight is not tied"):
            load(str(broken))
    (broken / "config.json").write_text(
        json.dumps({**hf_config, "text_config": {**hf_config["text_config"], "is_decoder": False}})
    )
    with pytest.raises(VlpError, match="is_decoder=false"):
        load(str(broken))

    model_config, params = load(path)
    if kind == "retrieval":  # no decoder: nothing to caption with
        with pytest.raises(VlpError, match="model.decoder=False"):
            export_hf_blip_caption(params, model_config, str(tmp_path / "a"))
    else:
        with pytest.raises(VlpError, match="model.dec_id is not set"):
            export_hf_blip_caption(params, {**model_config, "dec_id": None}, str(tmp_path / "a"))
        with pytest.raises(VlpError, match="missing params: image_projection/bias"):
            export_hf_blip_retrieval(params, model_config, str(tmp_path / "a"))
    post = {**model_config, "image": {**model_config["image"], "post_norm": "pooled"}}
    with pytest.raises(VlpError, match="model.image.post_norm"):
        export_hf_blip_retrieval(params, post, str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")
