"""SQuAD v1.1 exact match and F1, as the official evaluation script computes them: answers are
lower-cased, stripped of punctuation and of the articles a/an/the, whitespace-normalized; F1 is
over tokens; each prediction takes the best score over its gold answers; totals are percentages."""

from __future__ import annotations

import re
import string
from collections import Counter

__all__ = ["normalize_answer", "exact_match_score", "f1_score", "squad_v1_scores"]

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_v1_scores(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over every question in `answers` (a missing prediction scores 0)."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        if qid not in predictions:
            continue
        em += max(exact_match_score(predictions[qid], g) for g in golds)
        f1 += max(f1_score(predictions[qid], g) for g in golds)
    n = max(len(answers), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
