"""VQA answer normalisation and accuracy, box IoU and grounding accuracy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vlpjax.evaluators.answer_metrics import (
    box_iou,
    grounding_accuracy,
    normalize_answer,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "answer, normalized",
    [
        ("Two dogs.", "2 dogs"),  # period stripped, number word to digit
        ("YES", "yes"),
        ("  Yes\n", "yes"),
        ("yes, it is", "yes it is"),  # a mark next to a space is deleted
        ("red/blue", "red blue"),  # a mark inside a word becomes a space
        ("black-and-white", "black and white"),
        ("left - right", "left right"),
        ("1,000", "1000"),  # a number like 1,000 deletes every mark, comma included
        ("3.5", "3.5"),  # a period before a digit stays
        ("a.m.", "am"),
        ("the apple", "apple"),  # articles removed
        ("an orange and a pear", "orange and pear"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("dont", "don't"),  # apostrophe-less contractions restored
        ("isnt", "isn't"),
        ("whats that", "what's that"),
        ("don't", "don't"),  # the apostrophe is not punctuation here
        ("?", ""),
        ("(tennis)", "tennis"),
    ],
)
def test_normalize_answer(answer, normalized):
    assert normalize_answer(answer) == normalized


def _official_accuracy(pred, gts):
    """The official loop, literally: for each human, the others who gave the answer, / 3."""
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        accs.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(
    "humans, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_ten_answers(humans, expected):
    """Hand computed: with k of 10 humans agreeing, the 10 leave-one-out subsets give
    k x min(1, (k-1)/3) + (10-k) x min(1, k/3), divided by 10 (k=2: (2/3 + 8 x 2/3)/10 = 0.6)."""
    answers = ["cat"] * humans + [
        "dog",
        "bird",
        "horse",
        "cow",
        "fox",
        "owl",
        "elk",
        "yak",
        "ant",
        "bee",
    ][: 10 - humans]
    assert len(answers) == 10
    acc = vqa_accuracy(["cat"], [answers])
    assert acc.shape == (1,)
    assert acc[0] == pytest.approx(expected, abs=1e-12)
    assert acc[0] == pytest.approx(_official_accuracy("cat", answers), abs=1e-12)


def test_vqa_accuracy_normalises_both_sides_and_batches():
    answers = [
        ["2", "2", "two", "3", "2 dogs", "2", "2", "two", "3", "2"],  # "two" -> "2": 7 humans
        ["yes"] * 10,
        ["Red.", "red", "RED", "blue", "blue", "blue", "blue", "blue", "blue", "blue"],
        ["black and white", "black-and-white", "white", "gray", "gray", "gray", "gray", "gray", "gray", "gray"],
    ]  # fmt: skip
    acc = vqa_accuracy(["Two", "no", "red", "Black and white."], answers)
    np.testing.assert_allclose(acc, [1.0, 0.0, 0.9, 0.6], atol=1e-12)


def test_vqa_accuracy_other_answer_counts():
    # One reference: exact match after normalisation.
    np.testing.assert_array_equal(
        vqa_accuracy(["The Cat.", "dog", "cat"], [["cat"], ["cat"], ["a cat"]]), [1.0, 0.0, 1.0]
    )
    # Any other count uses the same leave-one-out formula.
    for answers in (["cat", "cat", "dog"], ["cat", "dog"], ["cat"] * 5 + ["dog"] * 2):
        assert vqa_accuracy(["cat"], [answers])[0] == pytest.approx(
            _official_accuracy("cat", answers)
        )
    assert vqa_accuracy([], []).shape == (0,)
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [])
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [[]])


def test_box_iou_known_values():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # overlap 1, union 7
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(0.25)  # contained: 4 / 16
    assert box_iou([0, 0, 2, 1], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert box_iou([0.5, 1.5, 3.25, 4.0], [0.5, 1.5, 3.25, 4.0]) == 1.0  # identical
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0  # disjoint
    assert box_iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # sharing an edge only


def test_box_iou_empty_and_broadcast():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 warnings
        assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # empty union
        assert box_iou([2, 2, 0, 0], [0, 0, 2, 2]) == 0.0  # inverted box has no area
        a = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 5, 5]], np.float32)
        b = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32)
        iou = box_iou(a[:, None], b[None])
    assert iou.shape == (3, 2)
    np.testing.assert_allclose(iou, [[1, 1 / 7], [1 / 7, 1], [0, 0]])
    np.testing.assert_allclose(box_iou(a[:2], b), [1.0, 1.0])  # pairwise along the batch


def test_grounding_accuracy():
    pred = np.array([[0, 0, 2, 1], [0, 0, 2, 2], [0, 0, 1, 1], [10, 10, 11, 11]])
    true = np.array([[0, 0, 1, 1], [1, 1, 3, 3], [0, 0, 1, 1], [0, 0, 1, 1]])
    hit = grounding_accuracy(pred, true)
    assert hit.dtype == bool
    np.testing.assert_array_equal(hit, [True, False, True, False])  # IoU 0.5 counts (>=)
    np.testing.assert_array_equal(
        grounding_accuracy(pred, true, threshold=0.1), [True, True, True, False]
    )
