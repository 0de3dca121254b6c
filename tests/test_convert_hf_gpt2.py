"""Hugging Face GPT2LMHeadModel <-> vlpjax DecoderOnlyLM: parity of loaded weights, the export
round trip, older file layouts, and greedy generation against transformers' own."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch  # noqa: E402  (test extra: torch==2.13.0 CPU)
import transformers  # noqa: E402
from flax import linen as nn
from helpers.trees import assert_trees_equal

from vlpjax.convert.hf_gpt2 import (
    export_hf_gpt2,
    gpt2_model_config,
    hf_gpt2_model_config,
    load_hf_gpt2,
)
from vlpjax.decode import DecodeConfig
from vlpjax.models import module_fields
from vlpjax.models.generative import DecoderOnlyLM
from vlpjax.train.generation import generate
from vlpjax.utils.errors import VlpError

ATOL = 1e-4

# Two differently shaped configs: GPT-2's own activation and default n_inner, and one with an
# explicit n_inner, plain gelu, another epsilon and a pad token of its own.
CONFIGS = {
    "gelu_new": dict(
        vocab_size=99, n_positions=16, n_embd=24, n_layer=2, n_head=4, bos_token_id=98,
        eos_token_id=98,
    ),
    "gelu": dict(
        vocab_size=120, n_positions=12, n_embd=40, n_layer=3, n_head=5, n_inner=72,
        activation_function="gelu", layer_norm_epsilon=1e-6, bos_token_id=4, eos_token_id=5,
        pad_token_id=0,
    ),
}  # fmt: skip
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def make_hf(spec, seed=0):
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**spec, **NO_DROPOUT)).eval()
    with torch.no_grad():  # random (not default-init) norms/biases so every tensor matters
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim == 2:  # GPT-2's init (std 0.02) leaves attention nearly uniform
                p.normal_(
                    0.0, 1.0 if name.endswith(("wte.weight", "wpe.weight")) else p.shape[0] ** -0.5
                )
    return model


def make_ids(spec, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, spec["vocab_size"], (batch, spec["n_positions"])).astype(np.int64)


def hf_logits(model, ids):
    with torch.no_grad():
        ids = torch.from_numpy(ids)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()


def build(model_config):
    fields = {k: v for k, v in model_config.items() if k not in ("name", "dtype")}
    assert set(fields) <= set(module_fields(DecoderOnlyLM))
    return DecoderOnlyLM(**fields)


def vlp_logits(model_config, params, ids):
    model = build(model_config)
    with jax.default_matmul_precision("float32"):
        fn = jax.jit(lambda p, t: model.apply({"params": p}, t, method="decode_logits"))
        return np.asarray(fn(params, jnp.asarray(ids, jnp.int32)))


def max_diff(a, b):
    return float(np.max(np.abs(a - b)))


def init_tree(model_config):
    variables = jax.eval_shape(
        lambda r: build(model_config).init(r, jnp.zeros((1, 4), jnp.int32)), jax.random.key(0)
    )
    return jax.tree.map(lambda x: x.shape, nn.unbox(variables["params"]))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    model = make_hf(spec)
    path = str(tmp_path_factory.mktemp(f"gpt2_{request.param}"))
    model.save_pretrained(path, safe_serialization=True)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    ids = make_ids(spec)
    return request.param, spec, path, model, ids, hf_logits(model, ids)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_load_matches_hf(hf_checkpoint, scan):
    name, spec, path, _, ids, ref = hf_checkpoint
    model_config, params = load_hf_gpt2(path, scan=scan)
    assert model_config["scan"] is scan and model_config["name"] == "gpt"
    assert model_config["mlp_dim"] == (spec.get("n_inner") or 4 * spec["n_embd"])
    assert model_config["pad_id"] == spec.get("pad_token_id", spec["eos_token_id"])
    # Exactly the tree (keys and shapes) of the matching module's init, all float32 numpy.
    assert jax.tree.map(lambda x: x.shape, params) == init_tree(model_config)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in jax.tree.leaves(params))
    if scan:
        layers = params["decoder"]["transformer"]["layers"]
        assert layers["self_attention"]["query"]["kernel"].shape[0] == spec["n_layer"]

    ours = vlp_logits(model_config, params, ids)
    diff = max_diff(ours, ref)
    print(f"\n{name} load (scan={scan}) parity, max abs logits diff: {diff:.2e}", end=" ")
    print(f"(logits std {ref.std():.2f})")
    assert diff < ATOL, diff

    # The training outputs are the same logits, one position short, with shifted targets.
    _, out = build(model_config).apply({"params": params}, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(out["dec/logits"], ref[:, :-1], atol=ATOL)
    np.testing.assert_array_equal(out["dec/targets"], ids[:, 1:])


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_export_round_trip(hf_checkpoint, tmp_path, scan):
    name, spec, path, _, ids, _ = hf_checkpoint
    model_config, _ = load_hf_gpt2(path, scan=scan)
    # Fresh vlpjax-side params (not HF's): the boxed tree of the module's init, random values.
    boxed = jax.eval_shape(
        lambda r: build(model_config).init(r, jnp.zeros((1, 4), jnp.int32)), jax.random.key(3)
    )
    rng = np.random.default_rng(4)
    variables = jax.tree.map(
        lambda x: np.asarray(0.3 * rng.normal(size=x.shape), np.float32), boxed
    )
    assert isinstance(
        variables["params"]["decoder"]["token_embed"]["embedding"], nn.LogicallyPartitioned
    )
    params = nn.unbox(variables["params"])
    ours = vlp_logits(model_config, params, ids)

    out = str(tmp_path / "export")
    export_hf_gpt2(variables, model_config, out)  # a boxed variables dict works too
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (
        info
    )
    diff = max_diff(ours, hf_logits(hf.eval(), ids))
    print(f"\n{name} export (scan={scan}) parity, max abs logits diff: {diff:.2e}", end=" ")
    print(f"(logits std {ours.std():.2f})")
    assert diff < ATOL, diff

    config_again, params_again = load_hf_gpt2(out, scan=scan)
    assert config_again == model_config
    assert_trees_equal(params_again, params)


def test_bare_gpt2model_layout_loads(hf_checkpoint, tmp_path):
    """Files saved from GPT2Model (no `transformer.` prefix), with older versions' mask buffers
    and an explicit (tied) lm_head, load to the same params."""
    _, spec, path, _, _, _ = hf_checkpoint
    _, params = load_hf_gpt2(path)
    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    n = spec["n_positions"]
    for i in range(spec["n_layer"]):
        bare[f"h.{i}.attn.bias"] = np.tril(np.ones((n, n), np.float32))[None, None]
        bare[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    bare["lm_head.weight"] = bare["wte.weight"].copy()
    out = tmp_path / "bare"
    out.mkdir()
    (out / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    safetensors.numpy.save_file(bare, str(out / "model.safetensors"))
    assert_trees_equal(load_hf_gpt2(str(out))[1], params)

    bare["lm_head.weight"] = bare["lm_head.weight"] + 1.0
    safetensors.numpy.save_file(bare, str(out / "model.safetensors"))
    with pytest.raises(VlpError, match="lm_head.weight is not tied"):
        load_hf_gpt2(str(out))


def test_greedy_generation_matches_hf(hf_checkpoint):
    """Cached greedy decoding from the start token = transformers' greedy generate."""
    name, spec, path, hf, _, _ = hf_checkpoint
    model_config, params = load_hf_gpt2(path)
    start, eos, length = spec["bos_token_id"], spec["eos_token_id"], spec["n_positions"] - 1
    # Louder positions on both sides, so that the text changes from step to step.
    params["decoder"]["position_embed"]["embedding"] *= 20.0
    hf = copy.deepcopy(hf)  # the fixture's model stays as it was
    with torch.no_grad():
        hf.transformer.wpe.weight.mul_(20.0)
        generated = hf.generate(
            torch.full((1, 1), start),
            attention_mask=torch.ones((1, 1), dtype=torch.long),
            do_sample=False,
            max_new_tokens=length,
            eos_token_id=eos,
            pad_token_id=0,
            suppress_tokens=[0],  # vlpjax.decode never generates its pad_id
        )[:, 1:].numpy()
    expected = np.zeros((1, length), np.int64)  # HF stops at eos; vlpjax pads to max_length
    expected[:, : generated.shape[1]] = generated
    with jax.default_matmul_precision("float32"):
        tokens, _ = generate(
            build(model_config),
            {"params": params},
            {"text": jnp.zeros((1, 1), jnp.int32)},  # only tells generate the batch size
            DecodeConfig("greedy", max_length=length),
            start_id=start,
            eos_id=eos,
            pad_id=0,
        )
    tokens = np.asarray(tokens)
    print(f"\n{name} greedy: {tokens[0]}")
    assert len(set(tokens[0].tolist())) > 2  # not a degenerate repetition
    np.testing.assert_array_equal(tokens, expected)


def test_config_translation():
    """GPT-2 small's config (transformers' defaults) and the errors of unsupported options."""
    config = gpt2_model_config(transformers.GPT2Config().to_dict())
    assert config == dict(
        name="gpt", dtype="float32", vocab_size=50257, max_length=1024, width=768, depth=12,
        num_heads=12, mlp_dim=3072, activation="gelu_tanh", norm_first=True, norm_eps=1e-5,
        final_norm=True, pad_id=50256, eos_id=50256, dropout_rate=0.1, scan=False,
    )  # fmt: skip
    build(config)  # every key is a DecoderOnlyLM field
    with pytest.raises(VlpError, match="scale_attn_by_inverse_layer_idx"):
        gpt2_model_config({"scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(VlpError, match="hidden_act|activation"):
        gpt2_model_config({"activation_function": "tanh"})


def test_errors_name_the_path(tmp_path, hf_checkpoint):
    _, _, path, _, _, _ = hf_checkpoint
    with pytest.raises(VlpError, match="nope"):
        load_hf_gpt2(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(VlpError, match="not a GPT-2 model"):
        hf_gpt2_model_config(str(empty))

    (empty / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    del tensors["transformer.ln_f.bias"]
    tensors["transformer.extra.weight"] = np.zeros(2, np.float32)
    safetensors.numpy.save_file(tensors, str(empty / "model.safetensors"))
    with pytest.raises(VlpError) as e:
        load_hf_gpt2(str(empty))
    message = str(e.value)
    assert str(empty) in message
    assert "missing tensors: transformer.ln_f.bias" in message
    assert "unexpected tensors: transformer.extra.weight" in message


def test_export_errors(hf_checkpoint, tmp_path):
    _, _, path, _, _, _ = hf_checkpoint
    model_config, params = load_hf_gpt2(path)
    with pytest.raises(VlpError, match="model.norm_first"):
        export_hf_gpt2(params, {**model_config, "norm_first": False}, str(tmp_path / "a"))
    with pytest.raises(VlpError, match="only 'gpt' models"):
        export_hf_gpt2(params, {**model_config, "name": "clip"}, str(tmp_path / "b"))
    del params["decoder"]["transformer"]["final_norm"]
    with pytest.raises(VlpError, match="missing params: decoder/transformer/final_norm"):
        export_hf_gpt2(params, model_config, str(tmp_path / "c"))
    assert not any(os.path.exists(tmp_path / x) for x in "abc")
