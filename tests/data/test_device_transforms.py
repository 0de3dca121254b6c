"""The PrefixLM split (SimVLM) and the task mixture (vlpjax.data.tasks)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from vlpjax.data.device_transforms import prefix_lm
from vlpjax.data.tasks import check_tasks, text_task
from vlpjax.utils.errors import VlpError

PAD, EOS = 0, 3


def caption_rows(rows, length, rng):
    target = np.zeros((rows, length), np.int32)
    lengths = rng.integers(1, length - 1, rows)  # content tokens, then eos, then pads
    for i, n in enumerate(lengths):
        target[i, :n] = rng.integers(5, 250, n)
        target[i, n] = EOS
    return target, lengths


def test_prefix_lm_moves_a_prefix_and_keeps_the_text():
    rng = np.random.default_rng(0)
    rows, length, source_length = 4000, 16, 12
    target, lengths = caption_rows(rows, length, rng)
    source = np.zeros((rows, source_length), np.int32)
    source[:50, :3] = [7, 8, 9]  # rows with a given source (questions) are not split
    out = jax.jit(lambda r, b: prefix_lm(r, b, no_prefix_fraction=0.5, text_only_fraction=0.2))(
        jax.random.key(0), {"source": jnp.asarray(source), "target": jnp.asarray(target)}
    )
    new_source, new_target = np.asarray(out["source"]), np.asarray(out["target"])
    image_valid = np.asarray(out["image_valid"])
    np.testing.assert_array_equal(new_source[:50], source[:50])
    np.testing.assert_array_equal(new_target[:50], target[:50])
    assert image_valid[:50].all()
    ks = []
    for i in range(50, rows):
        prefix = new_source[i][new_source[i] != PAD]
        rest = new_target[i][new_target[i] != PAD]
        # The caption is the prefix followed by the target, which still ends in eos.
        np.testing.assert_array_equal(np.concatenate([prefix, rest]), target[i][target[i] != PAD])
        assert rest[-1] == EOS and len(rest) >= 2  # at least one token left to predict
        ks.append(len(prefix))
        if not image_valid[i]:
            assert len(prefix) >= 1  # a text-only row always gives the encoder text
    ks = np.array(ks)
    split_rows = lengths[50:] >= 2
    text_only = ~image_valid[50:]
    # No prefix for half the image rows; text-only for 20% of the splittable rows.
    assert abs(np.mean(ks[split_rows & ~text_only] == 0) - 0.5) < 0.04
    assert abs(text_only[split_rows].mean() - 0.2) < 0.03
    assert not text_only[~split_rows].any()
    # Among prefixed rows, k is uniform over 1..n-1: mean k / (n/2) ~ 1.
    prefixed = ks > 0
    assert abs(np.mean(ks[prefixed] / (lengths[50:][prefixed] / 2)) - 1) < 0.05


def records(n):
    captions = [[f"caption {i} {j}." for j in range(5)] for i in range(n)]
    questions = [[f"question {i} {j}?" for j in range(4)] for i in range(n)]
    answers = [[f"answer{i}{j}" for j in range(4)] for i in range(n)]
    return tf.data.Dataset.from_tensor_slices(
        {"captions": captions, "questions": questions, "answers": answers}
    )


def test_task_mixture_draws_each_task_at_its_weight_and_reads_its_fields():
    fn = text_task({"caption": 1.0, "vqa": 0.5, "document": 0.5}, instructions=False, seed=3)
    ds = records(2000).enumerate().map(fn)
    kinds = collections.Counter()
    for i, ex in enumerate(ds.as_numpy_iterator()):
        source, target = ex["source"].decode(), ex["target"].decode()
        if source.startswith("question"):
            kinds["vqa"] += 1
            assert target == "answer" + source.split()[1] + source.split()[2].rstrip("?")
        elif target.count(".") == 5:
            kinds["document"] += 1
            assert source == "" and target.startswith(f"caption {i} 0.")
        else:
            kinds["caption"] += 1
            assert source == "" and target.startswith(f"caption {i} ")
    assert abs(kinds["caption"] / 2000 - 0.5) < 0.04
    assert abs(kinds["vqa"] / 2000 - 0.25) < 0.04
    # The draws are a function of (seed, position): a second pass repeats them.
    again = [ex["target"] for ex in records(50).enumerate().map(fn).as_numpy_iterator()]
    first = [ex["target"] for ex in records(50).enumerate().map(fn).as_numpy_iterator()]
    assert again == first


def test_instructions_and_bad_task_configs():
    fn = text_task({"caption": 1.0}, instructions=True, seed=0)
    ex = next(records(1).enumerate().map(fn).as_numpy_iterator())
    assert ex["source"].decode() == "what does the image describe?"
    with pytest.raises(VlpError, match="unknown task 'vqaa'"):
        check_tasks({"vqaa": 1.0}, {})
    with pytest.raises(
        VlpError, match=r"data.tasks.vqa needs record fields \['questions', 'answers'\]"
    ):
        check_tasks({"vqa": 1.0}, {"image": "image"})
    with pytest.raises(VlpError, match="every weight is 0"):
        check_tasks({"caption": 0.0}, {})
