"""Answer metrics in plain Python/numpy: VQA v2 accuracy and box grounding accuracy.

`normalize_answer` follows the official VQA evaluation script (`vqaEval.py`): punctuation
handling, lowercase, number words to digits, articles removed, apostrophe-less contractions
restored ("dont" -> "don't").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["normalize_answer", "vqa_accuracy", "box_iou", "grounding_accuracy"]

# The tables of the official script (keys with capitals never match lowercased text; kept as is).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!"]  # fmt: skip
# The official regex "(?!<=\d)(\.)(?!\d)" means (its look-behind is mistyped) "a period not
# followed by a digit": "3.5" keeps its period, "yes." loses it.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"\d,\d")


def _process_punctuation(text: str) -> str:
    # A punctuation mark next to a space is deleted, one inside a word becomes a space
    # ("black/white" -> "black white"), and if the answer holds a number like "1,000" every
    # mark is deleted. The tests look at the original text, as the official script does.
    glued = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        delete = glued or (p + " " in text) or (" " + p in text)
        out = out.replace(p, "" if delete else " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(s: str) -> str:
    """An answer as the VQA v2 evaluation compares it: "Two dogs." -> "2 dogs"."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(s))


def vqa_accuracy(predicted: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-example VQA accuracy, float64[N], after `normalize_answer` on both sides.

    With several reference answers (VQA v2 has 10 per question) this is the official formula:
    min(1, matches / 3), where matches counts the humans other than one who gave the predicted
    answer, averaged over leaving each human out in turn (the 10-choose-9 subsets). So an answer
    given by 3 or more of 10 humans scores 1, by 2 scores 0.6, by 1 scores 0.3.

    With a single reference answer (datasets with one ground truth) the formula would score 0
    for everything, so it is plain exact match instead: 1.0 or 0.0.

    Unlike the official script, references are always normalised (it normalises them only when
    the 10 disagree, relying on the annotation files being pre-normalised); same result on VQA v2.
    """
    if len(predicted) != len(answers):
        raise ValueError(f"{len(predicted)} predictions for {len(answers)} answer lists")
    scores = np.zeros(len(predicted))
    for i, (pred, refs) in enumerate(zip(predicted, answers)):
        if len(refs) == 0:
            raise ValueError(f"example {i} has no reference answers")
        pred = normalize_answer(pred)
        same = np.array([normalize_answer(r) == pred for r in refs], np.float64)
        if len(refs) == 1:
            scores[i] = same[0]
        else:
            # Leaving human j out leaves sum(same) - same[j] matching humans.
            scores[i] = np.mean(np.minimum(1.0, (same.sum() - same) / 3.0))
    return scores


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes float[..., 4] as (x1, y1, x2, y2), broadcast over the leading axes.

    Boxes with x2 < x1 or y2 < y1 have zero area; a pair whose union is empty gets IoU 0.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def grounding_accuracy(
    pred_boxes: np.ndarray, true_boxes: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Per-example bool: the predicted box overlaps the true one with IoU >= `threshold`."""
    return box_iou(pred_boxes, true_boxes) >= threshold
