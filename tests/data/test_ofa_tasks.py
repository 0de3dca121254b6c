"""OFA's unified vocabulary (location tokens in the tokenizer) and its instruction tasks
(grounding, grounded captioning, image-text matching) on real vlp_shapes records."""

import collections
import re

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from vlpjax.data import vlp_shapes as vs
from vlpjax.data.sources import make_records
from vlpjax.data.tasks import INSTRUCTIONS, check_tasks, text_task
from vlpjax.data.tokenizer import DEFAULT_TOKENIZER, Tokenizer, box_to_tokens, tokens_to_box
from vlpjax.utils.errors import VlpError

BINS = 64
FIELDS = dict(image="image", captions="captions", boxes="objects/bbox", tags="tags")
GROUNDING = re.compile(r'^which region does the text " (\w+ \w+) " describe\?$')
REGION = re.compile(r"^what does the region describe\? region: ((?:<loc_\d+> ?){4})$")
ITM = re.compile(r'^does the image describe " (.+) "\?$')


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(DEFAULT_TOKENIZER, location_bins=BINS)


@pytest.fixture(scope="module")
def plain():
    return Tokenizer(DEFAULT_TOKENIZER)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_location_vocabulary(tok, plain):
    assert plain.vocab_size == 256 and tok.vocab_size == 256 + BINS
    assert tok.location_offset == 256
    assert tok.piece_to_id("<loc_0>") == 256 and tok.piece_to_id("<loc_63>") == 319
    assert tok.id_to_piece(300) == "<loc_44>" and tok.id_to_piece(7) == plain.id_to_piece(7)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (
        plain.pad_id,
        plain.unk_id,
        plain.bos_id,
        plain.eos_id,
        plain.mask_id,
    )
    with pytest.raises(ValueError, match="location_bins"):
        Tokenizer(DEFAULT_TOKENIZER, location_bins=1)


def test_plain_text_is_unchanged(tok, plain):
    texts = list(vs.all_text({"validation": 20}))
    texts += ["what does the image describe?", "a <loc_3> marker is text without bins"]
    np.testing.assert_array_equal(tok.encode(texts[:-1], 40), plain.encode(texts[:-1], 40))
    assert plain.decode(plain.encode(texts[:-1], 40)) == texts[:-1]
    # With no bins, "<loc_3>" is ordinary text for sentencepiece.
    ids = plain.encode(texts[-1:], 40)[0]
    sp = spm.SentencePieceProcessor(model_file=DEFAULT_TOKENIZER)
    np.testing.assert_array_equal(ids[ids != plain.pad_id], [*sp.encode(texts[-1]), plain.eos_id])


def test_location_tokens_round_trip(tok):
    box = box_to_tokens([0.1, 0.2, 0.5, 0.99], BINS)
    assert box == "<loc_6> <loc_13> <loc_32> <loc_62>"
    texts = [
        box,
        "a red star.",
        f"what does the image describe? {box} a red star.",
        "<loc_0><loc_63> two glued markers",
    ]
    ids = tok.encode(texts, 24)
    np.testing.assert_array_equal(ids[0, :5], [262, 269, 288, 318, tok.eos_id])
    assert ids[0, 5:].sum() == 0
    np.testing.assert_array_equal(ids[1], tok.encode(["a red star."], 24)[0])
    decoded = tok.decode(ids)
    assert decoded[:3] == texts[:3]
    assert decoded[3] == "<loc_0> <loc_63> two glued markers"
    # Text runs around markers are sentencepiece's own encoding of those words.
    row = ids[2][ids[2] != tok.pad_id]
    head = tok.encode(["what does the image describe?"], 24, add_eos=False)[0]
    head = head[head != tok.pad_id]
    np.testing.assert_array_equal(row[: len(head)], head)
    np.testing.assert_array_equal(row[len(head) : len(head) + 4], [262, 269, 288, 318])


def test_location_padding_truncation_bos(tok):
    text = "the region " + box_to_tokens([0.0, 0.5, 1.0, 0.25], BINS)
    full = tok.encode([text], 16)[0]
    n = int((full != tok.pad_id).sum())
    short = tok.encode([text], n - 1)[0]  # one token too short: the last location goes
    np.testing.assert_array_equal(short[:-1], full[: n - 2])
    assert short[-1] == tok.eos_id
    bos = tok.encode([text], 16, add_bos=True, add_eos=False)[0]
    assert bos[0] == tok.bos_id
    np.testing.assert_array_equal(bos[1:n], full[: n - 1])
    assert tok.decode([tok.bos_id, *full[:n], 300]) == [text]  # stops at eos
    with pytest.raises(ValueError, match="<loc_64>"):
        tok.encode(["<loc_64>"], 8)


def test_box_tokens_round_trip():
    rng = np.random.default_rng(0)
    for bins in (2, 64, 1000):
        boxes = np.sort(rng.random((200, 2, 2)), axis=1).transpose(0, 2, 1).reshape(200, 4)
        for box in boxes:
            back = tokens_to_box(box_to_tokens(box, bins), bins)
            assert np.all(np.abs(back - box) <= 0.5 / (bins - 1) + 1e-12)
    assert tokens_to_box("<loc_1> <loc_2> <loc_3>", BINS) is None
    assert tokens_to_box("nothing", BINS) is None
    assert tokens_to_box("<loc_1> <loc_2> <loc_3> <loc_64>", BINS) is None
    np.testing.assert_allclose(
        tokens_to_box("x <loc_0> y <loc_63> <loc_21> <loc_42> <loc_5>", BINS),
        [0, 1, 1 / 3, 2 / 3],
    )
    assert box_to_tokens([-0.5, 0.0, 1.5, 1.0], BINS) == "<loc_0> <loc_0> <loc_63> <loc_63>"


# ---------------------------------------------------------------------------------------------
# Tasks on real records


@pytest.fixture(scope="module")
def records(tfds_dir):
    """The first 64 validation records (as the pipeline reads them) and their numpy examples."""
    builder = vs.ensure_built("tiny", tfds_dir)
    data = dict(source="tfds", name="vlp_shapes/tiny", data_dir=tfds_dir, fields=FIELDS)
    ds = make_records(data, "validation", 0, 1).dataset.take(64)
    raw = tfds.as_numpy(builder.as_dataset(split="validation", shuffle_files=False).take(64))
    return ds, list(raw)


def _run(ds, weights, seed=0, bins=BINS):
    fn = text_task(weights, instructions=True, seed=seed, location_bins=bins)
    out = ds.enumerate().map(fn).as_numpy_iterator()
    return [(ex["source"].decode(), ex["target"].decode()) for ex in out]


def _objects(ex):
    """[(phrase, box (x1, y1, x2, y2))] in object order, from the labels (not the tags)."""
    o = ex["objects"]
    return [
        (f"{vs.COLORS[c]} {vs.SHAPES[s]}", b[[1, 0, 3, 2]])
        for c, s, b in zip(o["color"], o["shape"], o["bbox"], strict=True)
    ]


def test_grounding_targets_are_the_named_objects_box(records, tok):
    ds, raw = records
    seen = collections.Counter()
    for (source, target), ex in zip(_run(ds, {"grounding": 1.0}), raw, strict=True):
        phrase = GROUNDING.match(source)[1]
        assert source == INSTRUCTIONS["grounding"].format(phrase)
        truth = dict(_objects(ex))[phrase]
        assert target == box_to_tokens(truth, BINS)  # tf.data and numpy agree exactly
        box = tokens_to_box(target, BINS)
        assert np.all(np.abs(box - truth) <= 1 / (BINS - 1))  # within one bin
        ids = tok.encode([target], 8)[0]
        assert all(tok.is_location(i) for i in ids[:4]) and ids[4] == tok.eos_id
        assert tok.decode(ids) == [target]
        seen[len(ex["objects"]["bbox"])] += 1
    assert len(seen) == 3  # images with 1, 2 and 3 objects


def test_grounded_caption_names_the_object_in_the_region(records):
    ds, raw = records
    for (source, target), ex in zip(_run(ds, {"grounded_caption": 1.0}), raw, strict=True):
        region = tokens_to_box(REGION.match(source)[1], BINS)
        objects = dict(_objects(ex))
        assert target in objects
        assert np.all(np.abs(region - objects[target]) <= 1 / (BINS - 1))


def test_itm_negatives_swap_one_colour_and_are_false(records):
    ds, raw = records
    answers = collections.Counter()
    for seed in range(4):
        for (source, target), ex in zip(_run(ds, {"itm": 1.0}, seed), raw, strict=True):
            caption = ITM.match(source)[1]
            references = [c.decode() for c in ex["captions"]]
            answers[target] += 1
            if target == "yes":
                assert caption in references
                continue
            assert target == "no" and caption not in references
            present = {vs.COLORS[c] for c in ex["objects"]["color"]}
            # One colour word of a reference caption, replaced by a colour not in the image.
            words = caption.split()
            matches = []
            for ref in references:
                ref_words = ref.split()
                if len(ref_words) != len(words):
                    continue
                diff = [i for i, (a, b) in enumerate(zip(ref_words, words)) if a != b]
                if len(diff) == 1:
                    matches.append((ref_words[diff[0]], words[diff[0]]))
            assert matches, (caption, references)
            old, new = matches[0]
            assert old.strip(".,") in vs.COLORS and new.strip(".,") in vs.COLORS
            assert new.strip(".,") not in present
    assert abs(answers["no"] / sum(answers.values()) - 0.5) < 0.1, answers


def test_mixture_draws_every_task_and_repeats(records):
    ds, _ = records
    weights = dict(caption=1.0, vqa=0.5, grounding=0.5, grounded_caption=0.25, itm=0.25)
    fn_fields = dict(FIELDS, questions="questions", answers="answers")
    data = dict(source="tfds", name="vlp_shapes/tiny", data_dir=None, fields=fn_fields)
    ds = make_records(data, "validation", 0, 1).dataset.take(128)
    first, again = _run(ds, weights, seed=1), _run(ds, weights, seed=1)
    assert first == again
    kinds = collections.Counter()
    for source, _ in first:
        if source == INSTRUCTIONS["caption"]:
            kinds["caption"] += 1
        elif GROUNDING.match(source):
            kinds["grounding"] += 1
        elif REGION.match(source):
            kinds["grounded_caption"] += 1
        elif ITM.match(source):
            kinds["itm"] += 1
        else:
            kinds["vqa"] += 1
    assert set(kinds) == set(weights), kinds


def test_bad_configs_name_what_is_missing():
    with pytest.raises(VlpError, match=r"data.tasks.grounding needs record fields \['boxes'\]"):
        check_tasks({"grounding": 1.0}, {"image": "image", "tags": "tags"})
    with pytest.raises(VlpError, match=r"grounded_caption needs record fields \['boxes', 'tags'\]"):
        check_tasks({"grounded_caption": 1.0}, {"image": "image"})
    with pytest.raises(VlpError, match=r"data.tasks.itm needs record fields \['tags'\]"):
        check_tasks({"itm": 1.0}, {})
    check_tasks({"grounding": 0.0, "caption": 1.0}, {})  # a zero weight needs nothing
    with pytest.raises(VlpError, match="data.location_bins >= 2"):
        text_task({"grounding": 1.0}, instructions=True, seed=0)
    text_task({"itm": 1.0, "caption": 1.0}, instructions=True, seed=0)  # no boxes: no bins
