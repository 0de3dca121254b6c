"""Image-text retrieval: image->text and text->image recall@{1,5,10}, with chance levels.

Protocol (documented because datasets with templated captions need it):
- The text gallery is the set of *distinct* captions of the split; a caption counts as correct
  for every image it describes, so images with identical captions are all correct matches.
- Text->image queries are every caption (duplicates included, as in the COCO protocol); an image
  is correct when any of its captions equals the query.
- Chance R@k is the exact probability that a uniformly random ranking puts a correct item in the
  top k, averaged over queries.

Fusion models (ALBEF, BLIP) are also scored with ITM re-ranking (`rerank_k` > 0): each query's
top k ITC candidates are re-ordered by the ITM head's match probability, the rest keep their
ITC order below them (`itm_i2t_r1`, ...; the same chance levels). Image tokens are computed
once; the ITM head runs on the (N + Q) * k candidate pairs.
"""

from __future__ import annotations

import os

import numpy as np

from vlpjax.evaluators.common import EvalData, chance_at_k, recall_at_k

KS = (1, 5, 10)


def retrieval_metrics(
    image_embeds: np.ndarray, text_embeds: np.ndarray, match: np.ndarray, query_texts: np.ndarray
) -> dict[str, float]:
    """image_embeds float[N, E], text_embeds float[U, E] (distinct captions), match bool[N, U],
    query_texts int[Q]: the distinct-caption index of every caption (the t2i queries)."""
    sims = image_embeds @ text_embeds.T  # [N, U]
    metrics = {}
    i2t_hits = recall_at_k(sims, match, KS)
    t2i_hits = recall_at_k(sims.T, match.T, KS)  # per distinct caption
    for k in KS:
        metrics[f"i2t_r{k}"] = float(i2t_hits[k].mean())
        metrics[f"t2i_r{k}"] = float(t2i_hits[k][query_texts].mean())
        metrics[f"chance_i2t_r{k}"] = float(chance_at_k(match.sum(1), match.shape[1], k).mean())
        metrics[f"chance_t2i_r{k}"] = float(
            chance_at_k(match.sum(0)[query_texts], match.shape[0], k).mean()
        )
    return metrics


def top_k_candidates(sims: np.ndarray, k: int) -> np.ndarray:
    """int[Q, k]: each row's k highest-scoring columns (any order)."""
    k = min(k, sims.shape[1])
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def reranked_scores(sims: np.ndarray, candidates: np.ndarray, itm: np.ndarray) -> np.ndarray:
    """Scores whose ranking puts each row's candidates first, ordered by their ITM match
    probability itm float[Q, k], and the other columns after them in ITC order."""
    scores = sims - sims.max() - 2.0  # below every re-ranked candidate (those are in [0, 1])
    np.put_along_axis(scores, candidates, itm, axis=1)
    return scores


class RetrievalEvaluator:
    """Embeds a split's images and captions with the model's towers and scores retrieval."""

    name = "retrieval"

    def __init__(
        self,
        data: EvalData,
        workdir: str | None = None,
        picture_examples: int = 8,
        rerank_k: int = 0,
    ):
        self.data = data
        self.workdir = workdir
        self.picture_examples = picture_examples
        self.rerank_k = rerank_k
        # What the model must offer (checked by the trainer before training).
        self.model_methods = ("image_tokens", "itm_scores") if rerank_k else ()

    def rerank(self, predictor, variables, images, distinct, sims, match, query_texts):
        """The ITM re-ranked metrics, prefixed `itm_`."""
        tokens = predictor.image_tokens(variables, images)
        text_ids = predictor.tokenize(distinct)
        i2t = top_k_candidates(sims, self.rerank_k)  # [N, k] texts
        t2i = top_k_candidates(sims.T, self.rerank_k)  # [U, k] images
        rows_i2t = np.repeat(np.arange(len(images)), i2t.shape[1])
        rows_t2i = np.repeat(np.arange(len(distinct)), t2i.shape[1])
        image_index = np.concatenate([rows_i2t, t2i.ravel()])
        text_index = np.concatenate([i2t.ravel(), rows_t2i])
        itm = predictor.itm_scores(variables, tokens[image_index], text_ids[text_index])
        itm_i2t, itm_t2i = itm[: i2t.size].reshape(i2t.shape), itm[i2t.size :].reshape(t2i.shape)
        scores = reranked_scores(sims, i2t, itm_i2t)
        scores_t = reranked_scores(sims.T, t2i, itm_t2i)
        i2t_hits = recall_at_k(scores, match, KS)
        t2i_hits = recall_at_k(scores_t, match.T, KS)
        metrics = {}
        for k in KS:
            metrics[f"itm_i2t_r{k}"] = float(i2t_hits[k].mean())
            metrics[f"itm_t2i_r{k}"] = float(t2i_hits[k][query_texts].mean())
        return metrics

    def run(self, predictor, params, step: int) -> dict[str, float]:
        images, captions = self.data.load()
        distinct = sorted({c for row in captions for c in row})
        index = {c: i for i, c in enumerate(distinct)}
        match = np.zeros((len(images), len(distinct)), bool)
        for i, row in enumerate(captions):
            match[i, [index[c] for c in row]] = True
        query_texts = np.array([index[c] for row in captions for c in row])
        image_embeds = predictor.embed_images(params, images)
        text_embeds = predictor.embed_texts(params, distinct)
        metrics = retrieval_metrics(image_embeds, text_embeds, match, query_texts)
        metrics["num_images"] = float(len(images))
        if self.rerank_k:
            sims = image_embeds @ text_embeds.T
            metrics.update(
                self.rerank(predictor, params, images, distinct, sims, match, query_texts)
            )
        if self.workdir and self.picture_examples:
            from vlpjax.evaluators.pictures import retrieval_picture

            sims = image_embeds[: self.picture_examples] @ text_embeds.T
            top = np.argsort(-sims, axis=1)[:, :3]
            rows = [[(distinct[t], bool(match[i, t])) for t in top[i]] for i in range(len(top))]
            retrieval_picture(
                self.data.raw_images(images[: self.picture_examples]),
                rows,
                os.path.join(self.workdir, "pictures", f"retrieval_{step:07d}.png"),
            )
        return metrics
