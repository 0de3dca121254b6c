"""VQA: the answer is generated from [image; question] and compared after the VQA
normalisation (vlpjax.evaluators.answer_metrics). Chance: the split's most frequent answer
given to every question (the "prior" baseline of the VQA papers)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlpjax.evaluators.answer_metrics import normalize_answer, vqa_accuracy
from vlpjax.evaluators.common import EvalData


class VqaEvaluator:
    name = "vqa"

    def __init__(self, data: EvalData, decode_config, max_questions: int = 0):
        self.data = data
        self.decode_config = decode_config
        self.max_questions = max_questions  # per image; 0 = all

    def run(self, predictor, variables, step: int) -> dict[str, float]:
        images, _ = self.data.load()
        questions, answers = self.data.field("questions"), self.data.field("answers")
        rows, asked, truth = [], [], []
        for i, (qs, ans) in enumerate(zip(questions, answers)):
            keep = len(qs) if not self.max_questions else min(self.max_questions, len(qs))
            for q, a in zip(qs[:keep], ans[:keep]):
                rows.append(i)
                asked.append(q)
                truth.append([a])
        generated = predictor.generate(variables, images[np.array(rows)], asked, self.decode_config)
        accuracy = vqa_accuracy(generated, truth)
        prior = Counter(normalize_answer(t[0]) for t in truth).most_common(1)[0][0]
        chance = vqa_accuracy([prior] * len(truth), truth)
        by_type = {}
        for question, score in zip(asked, accuracy):
            kind = " ".join(question.split()[:2])  # "what color", "how many", "is there"
            by_type.setdefault(kind, []).append(score)
        metrics = {"accuracy": float(accuracy.mean()), "chance_accuracy": float(chance.mean())}
        for kind, scores in sorted(by_type.items()):
            metrics[f"accuracy_{kind.replace(' ', '_')}"] = float(np.mean(scores))
        metrics["num_questions"] = float(len(truth))
        return metrics
