"""BLEU and CIDEr-D against the COCO caption toolkit (pycocoevalcap), number for number."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vlpjax.evaluators.caption_metrics import bleu, cider_d, tokenize_caption

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

TOL = 1e-6

# ~30 images: varying lengths and numbers of references, repeated n-grams, candidates shorter and
# longer than their references, exact copies, zero overlap, single words, an empty candidate,
# punctuation and case that the tokenizer must remove.
FIXED = [
    ("A man riding a wave on top of a surfboard.",
     ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
      "a person on a surfboard riding a wave", "The surfer is catching a big wave!",
      "Man surfing on a wave in the sea."]),
    ("a dog", ["A brown dog is running through the grass.", "a dog runs in a field"]),
    ("a dog a dog a dog a dog a dog", ["a dog", "the dog is a good dog"]),
    ("the the the the the the the", ["the cat sat on the mat", "there is a cat on the mat"]),
    ("purple elephants juggling quantum spreadsheets", ["A kitchen with a stove and a sink."]),
    ("kitchen", ["A kitchen with a stove and a sink.", "a small kitchen", "kitchen"]),
    ("cat", ["dog"]),
    ("", ["an empty candidate scores zero", "nothing here"]),
    ("a red bus driving down a city street next to tall buildings on a sunny day with many "
     "people walking on the sidewalk and cars parked along the road",
     ["A red bus on a street.", "a double decker bus driving down the street"]),
    ("two giraffes standing next to each other in a field",
     ["Two giraffes standing next to each other in a field.",
      "Two giraffes stand in a grassy field near trees.", "giraffes in a field",
      "A pair of giraffes standing in the grass", "two tall giraffes next to each other",
      "Giraffes standing together in the wild.", "Two giraffes are in a field together."]),
    ("a plate of food with broccoli", ["A plate with broccoli, rice and meat.",
                                       "a white plate of food", "food on a plate"]),
    ("A bathroom with a toilet and a sink.", ["A bathroom with a toilet and a sink."]),
    ("a man's hat isn't on the table", ["The man's hat is on the table.",
                                        "a hat that isn't on a table", "hat"]),
    ("a baseball player swinging a bat at a ball",
     ["A baseball player swinging a bat at a ball.", "a batter swings at the pitch",
      "A baseball player is up to bat.", "the batter is swinging the bat"]),
    ("people", ["a group of people standing around", "people at a party", "many people",
                "several people are talking", "a crowd of people"]),
    ("a cat sitting on a laptop keyboard", ["A cat sitting on top of a laptop computer.",
                                            "a cat lying on a keyboard"]),
    ("a a a a", ["a a", "a a a a a a a a"]),
    ("a train on the tracks at a station", ["A train pulling into a station.",
                                            "a train is stopped at the station",
                                            "A long train on the railroad tracks."]),
    ("a woman holding an umbrella in the rain", ["A woman holding an umbrella.",
                                                 "a woman with an umbrella walking in rain"]),
    ("a pizza", ["A pizza with pepperoni and cheese on a table.", "a large pizza",
                 "Pizza on a wooden board."]),
    ("an airplane flying in the blue sky", ["An airplane flying through a clear blue sky.",
                                            "a jet in the sky", "plane flying overhead"]),
    ("a group of zebras grazing in a field", ["Zebras grazing in a grassy field.",
                                              "a herd of zebras eating grass"]),
    ("a clock tower", ["a tall clock tower", "the clock tower in the city", "a tower with a clock"]),
    ("a bowl of fruit bananas apples oranges on a table in a kitchen",
     ["A bowl of fruit on a table.", "bananas and apples in a bowl"]),
    ("a skateboarder doing a trick", ["A skateboarder doing a trick on a ramp.",
                                      "a boy on a skateboard", "skateboarder in the air",
                                      "a person doing a skateboard trick"]),
    ("a horse a horse", ["a horse in a field", "a brown horse", "horse horse"]),
    ("a living room with a couch and a tv", ["A living room with a couch and a TV.",
                                             "a living room with furniture",
                                             "A couch in front of a television."]),
    ("a stop sign on the corner of a street", ["A red stop sign on a street corner.",
                                               "a stop sign"]),
    ("a teddy bear", ["a teddy bear sitting on a bed"]),
    ("a boat on the water", ["A boat on the water.", "boats in a harbor", "a small boat",
                             "a sailboat on a lake", "a boat floating on calm water"]),
    ("motorcycle parked", ["a motorcycle parked on the street", "a parked motorcycle"]),
]  # fmt: skip


def _as_dicts(items):
    cands = {f"img{i}": c for i, (c, _) in enumerate(items)}
    refs = {f"img{i}": list(r) for i, (_, r) in enumerate(items)}
    return cands, refs


def _toolkit_inputs(cands, refs):
    """What the toolkit sees: the same tokens, space-joined, in its {id: [caption]} format."""
    res = {k: [" ".join(tokenize_caption(c))] for k, c in cands.items()}
    gts = {k: [" ".join(tokenize_caption(r)) for r in rs] for k, rs in refs.items()}
    return gts, res


def _random_set(seed, num):
    rng = np.random.default_rng(seed)
    vocab = ["a", "the", "dog", "cat", "on", "mat", "red", "runs", "big", "of"]
    # Skewed word frequencies give repeated n-grams and shared references across images.
    p = np.linspace(2.0, 0.5, len(vocab))
    p /= p.sum()

    def sentence(lo):
        return " ".join(rng.choice(vocab, size=rng.integers(lo, 13), p=p))

    return [(sentence(1), [sentence(1) for _ in range(rng.integers(1, 6))]) for _ in range(num)]


CASES = {"fixed": FIXED} | {f"random{s}": _random_set(s, 10 + 7 * s) for s in range(4)}
# Largest |ours - toolkit| seen per metric, printed at the end with -s.
MAX_DIFF: dict[str, float] = {}


def _record(name, ours, theirs):
    diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs)), initial=0.0))
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), diff)
    return diff


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nmax |ours - pycocoevalcap|:", {k: f"{v:.3g}" for k, v in MAX_DIFF.items()})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bleu_matches_pycocoevalcap(case):
    cands, refs = _as_dicts(CASES[case])
    corpus, per_example = bleu(cands, refs)
    their_corpus, their_per = Bleu(4).compute_score(*_toolkit_inputs(cands, refs), verbose=0)
    assert per_example.shape == (len(cands), 4)
    assert _record("bleu_corpus", corpus, their_corpus) < TOL
    assert _record("bleu_per_example", per_example, np.array(their_per).T) < TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_cider_d_matches_pycocoevalcap(case):
    cands, refs = _as_dicts(CASES[case])
    corpus, per_example = cider_d(cands, refs)
    their_corpus, their_per = Cider().compute_score(*_toolkit_inputs(cands, refs))
    assert per_example.shape == (len(cands),)
    assert _record("cider_corpus", corpus, their_corpus) < TOL
    assert _record("cider_per_example", per_example, their_per) < TOL


def test_fixed_set_exercises_the_edge_cases():
    """The fixed set is not degenerate: exact copies score high, no overlap scores 0."""
    cands, refs = _as_dicts(FIXED)
    keys = list(cands)
    _, bleu_per = bleu(cands, refs)
    _, cider_per = cider_d(cands, refs)
    copy = keys.index("img11")  # candidate equal to its only reference
    assert bleu_per[copy] == pytest.approx(1.0, abs=1e-6)
    assert cider_per[copy] > 5.0
    for i in (keys.index("img4"), keys.index("img6"), keys.index("img7")):  # nothing in common
        assert cider_per[i] == 0.0
        assert bleu_per[i, 0] < 1e-6
    assert np.all(bleu_per >= 0) and np.all(bleu_per <= 1 + 1e-9)


def test_toolkit_format_and_tokenization_are_accepted():
    refs = {1: ["A dog, running!", "the dog runs"], 2: ["a cat"]}
    plain = bleu({1: "a dog running", 2: "a cat"}, refs)
    listed = bleu({1: ["A DOG running."], 2: ["a cat"]}, refs)
    assert plain[0] == listed[0]
    np.testing.assert_array_equal(plain[1], listed[1])
    np.testing.assert_array_equal(
        cider_d({1: "a dog running", 2: "a cat"}, refs)[1],
        cider_d({1: ["A DOG running."], 2: "A cat."}, refs)[1],
    )


def test_per_example_follows_candidates_order():
    cands, refs = _as_dicts(FIXED[:6])
    reordered = dict(reversed(list(cands.items())))
    np.testing.assert_allclose(cider_d(reordered, refs)[1], cider_d(cands, refs)[1][::-1])
    np.testing.assert_array_equal(bleu(reordered, refs)[1], bleu(cands, refs)[1][::-1])


def test_mismatched_ids_raise():
    with pytest.raises(ValueError, match="same ids"):
        bleu({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="non-empty"):
        cider_d({1: "a"}, {1: []})


# Expected tokens are what the toolkit's Java PTBTokenizer gives (checked by the last test).
TOKENIZER_CASES = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs; one cat? Yes!", "two dogs one cat yes"),
    ('A "big" dog... well, maybe: no', "a big dog well maybe no"),
    ("A man's hat isn't there", "a man 's hat is n't there"),
    ("can't won't they're I'd", "ca n't wo n't they 're i 'd"),
    ("the dogs' bowls -- 1,000 of them at 10:30", "the dogs bowls 1,000 of them at 10:30"),
    ("It's 3.5 feet tall, a black-and-white 3-year-old dog", "it 's 3.5 feet tall a black-and-white 3-year-old dog"),
    ("a man (left) and a [red] kite", "a man -lrb- left -rrb- and a -lsb- red -rsb- kite"),
    ("100% of the U.S. people & $5", "100 % of the u.s. people & $ 5"),
    ("  spaces\tand\nnewlines  ", "spaces and newlines"),
    ("", ""),
    ("...", ""),
    ("What?! Wow!! Yes!", "what ?! wow !! yes"),
    ("dog--cat, and/or 5'10\" at 5 o'clock", "dog cat and/or 5 10 at 5 o'clock"),
    ("Plan A. in the U.S.", "plan a. in the u.s."),
]  # fmt: skip


@pytest.mark.parametrize("text, tokens", TOKENIZER_CASES)
def test_tokenize_caption(text, tokens):
    assert tokenize_caption(text) == tokens.split()
    assert tokenize_caption(" ".join(tokenize_caption(text))) == tokenize_caption(text)


@pytest.mark.skipif(shutil.which("java") is None, reason="the toolkit's PTBTokenizer needs java")
def test_tokenize_caption_matches_ptb_tokenizer():
    """Same tokens as the toolkit's own (Java) tokenizer on every caption used in these tests."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [text for text, _ in TOKENIZER_CASES] + [c for c, refs in FIXED for c in [c, *refs]]
    theirs = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    ours = {i: [" ".join(tokenize_caption(t))] for i, t in enumerate(texts)}
    assert ours == theirs
