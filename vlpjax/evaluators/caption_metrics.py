"""Caption metrics (BLEU-1..4 and CIDEr-D) in plain Python/numpy.

Both reproduce the COCO caption toolkit (`pycocoevalcap` 1.2) number for number, so results can
be compared with published ones without Java or the toolkit installed:

- `bleu` equals `Bleu(4).compute_score(gts, res)` (per-sentence and corpus BLEU, "closest"
  reference length, the toolkit's 1e-15 / 1e-9 smoothing constants);
- `cider_d` equals `Cider().compute_score(gts, res)` (CIDEr-D: 1..4-grams, idf from the
  references of the evaluated set, clipped tf-idf, Gaussian length penalty with sigma=6, x10).

Inputs are `{id: caption}` for candidates and `{id: [caption, ...]}` for references, with the
same ids. Every caption goes through `tokenize_caption` and is scored as its space-joined tokens;
per-example scores follow the order of the `candidates` dict.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["tokenize_caption", "bleu", "cider_d"]

# Smoothing constants of the toolkit's BLEU: `tiny` keeps a zero match count at ~0 instead of
# log(0), `small` keeps an empty guess count from dividing by zero.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

# Characters the PTB tokenizer turns into tokens that the COCO toolkit then drops:
# . , ? ! : ; quotes, backquotes and stand-alone dashes.
_DROPPED = ".,?!:;'\"`\u2018\u2019\u201c\u201d-"
# Brackets become -LRB- etc.; the toolkit drops those only in upper case, but it asks PTB to
# lowercase, so they survive as "-lrb-" tokens. Kept, to score what the toolkit scores.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# PTB splits these clitics off their word and keeps them as tokens ("man's" -> "man 's").
_NEG_CLITIC = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(
    r"-[lr][rsc]b-"  # brackets, already spelled out
    r"|\d+(?:[.,:/]\d+)+"  # 3.5, 1,000, 10:30, 1/2 stay whole
    r"|(?<![\w.])(?:[a-z]\.)+(?!\w)"  # acronyms and initials keep their periods: u.s., e.g., a.
    r"|n't(?!\w)|'(?:s|re|ve|ll|d|m)(?!\w)"  # clitics split off above
    r"|[#@]?\w+(?:(?:-|/|'(?!\d))\w+)*"  # words; black-and-white, and/or, o'clock, #tag, @name
    r"|[!?]{2,}"  # runs such as "?!" are one token, which the toolkit does not drop
    r"|[^\s\w" + re.escape(_DROPPED) + r"]"  # any other symbol ($, %, &, /) is its own token
)
_BRACKET_RE = re.compile("[" + re.escape("".join(_BRACKETS)) + "]")


def tokenize_caption(s: str) -> list[str]:
    """Lowercased tokens of `s` with punctuation removed, like the COCO toolkit's PTBTokenizer.

    A simple Python tokenizer, not the Java Stanford PTB one that `pycocoevalcap` runs: it
    reproduces what that pipeline gives for ordinary captions (lowercase; drop . , ? ! ; : quotes
    and stand-alone dashes; split "n't" and "'s"-style clitics off as their own tokens; keep
    hyphenated words, o'clock, and/or, numbers such as 3.5 and acronyms such as u.s. whole;
    brackets become the toolkit's "-lrb-" / "-rrb-" tokens and runs like "?!" stay, as it fails
    to drop those) but not PTB's rarer rules (abbreviations such as "mr.", URLs, "'n'", ...).
    Text is NFC-normalised first. Idempotent: tokenizing the space-joined tokens gives the same
    tokens back.
    """
    s = unicodedata.normalize("NFC", s).lower()
    s = _BRACKET_RE.sub(lambda m: f" {_BRACKETS[m.group()]} ", s)
    s = _NEG_CLITIC.sub(r"\1 n't", s)
    s = _CLITIC.sub(r"\1 '\2", s)
    return _TOKEN.findall(s)


def _prepare(
    candidates: Mapping[Hashable, str | Sequence[str]],
    references: Mapping[Hashable, Sequence[str]],
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Token lists of each candidate and of its references, in `candidates` order."""
    if set(candidates) != set(references):
        missing = set(candidates) ^ set(references)
        raise ValueError(f"candidates and references must have the same ids; differing: {missing}")
    cands, refs = [], []
    for key, cand in candidates.items():
        if not isinstance(cand, str):  # the toolkit's format: a list holding one caption
            if len(cand) != 1:
                raise ValueError(f"id {key!r}: expected one candidate caption, got {len(cand)}")
            cand = cand[0]
        ref = references[key]
        if isinstance(ref, str) or len(ref) == 0:
            raise ValueError(f"id {key!r}: references must be a non-empty list of captions")
        # Tokenize, then split the space-joined string: what the toolkit sees after PTB.
        cands.append(" ".join(tokenize_caption(cand)).split())
        refs.append([" ".join(tokenize_caption(r)).split() for r in ref])
    return cands, refs


def _ngram_counts(words: list[str], n: int) -> Counter:
    """Counts of all 1..n-grams of `words`, as tuples."""
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def bleu(
    candidates: Mapping[Hashable, str | Sequence[str]],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
) -> tuple[list[float], np.ndarray]:
    """BLEU-1..n of the corpus and of each candidate, as `pycocoevalcap.bleu.Bleu(n)` computes it.

    Returns `(corpus, per_example)`: `corpus[k]` is the corpus BLEU-(k+1) (n-gram matches and
    lengths summed over all candidates before combining), `per_example` is float64[N, n] with
    the same formula applied to each candidate alone. The reference length of a candidate is the
    length of its closest reference (the shorter one on a tie).
    """
    cands, refs = _prepare(candidates, references)
    num = len(cands)
    correct = np.zeros((num, n), np.int64)  # clipped n-gram matches, per order
    guess = np.zeros((num, n), np.int64)  # n-grams in the candidate, per order
    test_len = np.zeros(num, np.int64)
    ref_len = np.zeros(num, np.int64)
    for i, (cand, ref) in enumerate(zip(cands, refs)):
        # Clip each candidate n-gram count by its largest count in any single reference.
        max_ref = Counter()
        for r in ref:
            max_ref |= _ngram_counts(r, n)
        for gram, count in _ngram_counts(cand, n).items():
            correct[i, len(gram) - 1] += min(count, max_ref[gram])
        test_len[i] = len(cand)
        guess[i] = np.maximum(0, len(cand) - np.arange(n))
        ref_len[i] = min((abs(len(r) - len(cand)), len(r)) for r in ref)[1]

    def combine(correct, guess, test_len, ref_len):
        # Geometric mean of the first k+1 precisions: cumulative product, then a (k+1)-th root.
        precision = (correct + _BLEU_TINY) / (guess + _BLEU_SMALL)
        scores = np.cumprod(precision, axis=-1) ** (1.0 / np.arange(1, n + 1))
        # Brevity penalty exp(1 - r/c) only when the candidate is shorter than its reference.
        ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
        with np.errstate(over="ignore", divide="ignore"):
            penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return scores * penalty[..., None]

    per_example = combine(correct, guess, test_len, ref_len)
    corpus = combine(correct.sum(0), guess.sum(0), test_len.sum(), ref_len.sum())
    return [float(x) for x in corpus], per_example


def cider_d(
    candidates: Mapping[Hashable, str | Sequence[str]],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, np.ndarray]:
    """CIDEr-D of the corpus and of each candidate, as `pycocoevalcap.cider.Cider()` computes it.

    Each sentence becomes a tf-idf vector of its 1..n-grams, with document frequencies counted
    over the reference sets of the evaluated examples (so scores depend on the whole set). A
    candidate's score is 10 x the mean over n-gram orders of its clipped cosine similarity to
    each reference, times a Gaussian penalty on the length difference, averaged over references.
    Returns `(corpus, per_example)`: the mean score and float64[N].
    """
    cands, refs = _prepare(candidates, references)
    # Document frequency: in how many examples' reference sets each n-gram occurs.
    ref_counts = [[_ngram_counts(r, n) for r in ref] for ref in refs]
    doc_freq = Counter(gram for counts in ref_counts for gram in set().union(*counts))
    log_num_docs = np.log(float(len(refs)))

    scores = np.zeros(len(cands))
    for i, (cand, ref) in enumerate(zip(cands, refs)):
        counts = [_ngram_counts(cand, n)] + ref_counts[i]  # row 0: the candidate
        vocab = list(set().union(*counts))
        if not vocab:  # candidate and references all empty: nothing can match
            continue
        tf = np.array([[c[g] for g in vocab] for c in counts], np.float64)
        # idf; n-grams absent from every reference set count as occurring once.
        idf = log_num_docs - np.log([max(1.0, doc_freq[g]) for g in vocab])
        order = np.eye(n)[[len(g) - 1 for g in vocab]]  # one-hot n-gram order, [V, n]
        vec = tf * idf
        norm = np.sqrt(vec**2 @ order)  # [1 + R, n]
        hyp, hyp_norm, ref_vec, ref_norm = vec[0], norm[0], vec[1:], norm[1:]
        # Clipping (the "-D"): a candidate n-gram gets no more weight than the reference has.
        dot = (np.minimum(hyp, ref_vec) * ref_vec) @ order  # [R, n]
        denom = hyp_norm * ref_norm
        cos = np.divide(dot, denom, out=dot.copy(), where=denom != 0)
        # The toolkit's "length" is the number of bigrams, i.e. max(words - 1, 0).
        bigrams = np.maximum(np.array([len(cand)] + [len(r) for r in ref]) - 1, 0)
        delta = (bigrams[0] - bigrams[1:]).astype(np.float64)
        penalty = np.exp(-(delta**2) / (2 * sigma**2))
        scores[i] = 10.0 * np.mean(cos * penalty[:, None], axis=1).sum() / len(ref)
    return float(np.mean(scores)), scores
