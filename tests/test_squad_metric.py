"""The SQuAD v1.1 metric on hand-computed cases."""

import pytest

from hf_fnl.squad_metric import exact_match_score, f1_score, normalize_answer, squad_v1_scores


def test_normalization_removes_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match_and_f1_by_hand():
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match_score("Broncos", "Denver Broncos") == 0.0
    # prediction "denver broncos won", gold "denver broncos": 2 common, p = 2/3, r = 1 → F1 = 0.8
    assert f1_score("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # "a" is an article: prediction "b", gold "b b" → p = 1, r = 1/2 → F1 = 2/3
    assert f1_score("a a b", "a b b") == pytest.approx(2 / 3)
    assert f1_score("", "Denver") == 0.0 and f1_score("Paris", "London") == 0.0


def test_best_over_gold_answers_and_percentages():
    answers = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["1990"], "q3": ["blue whale"]}
    predictions = {"q1": "Broncos", "q2": "in 1990", "q3": "whale"}
    scores = squad_v1_scores(predictions, answers)
    # q1: EM with "The Broncos" (normalized "broncos") → 1, F1 1; q2: EM 0, F1 = 2·(1/2)·1/(1.5) = 2/3; q3: F1 2/3
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
    assert squad_v1_scores({}, answers) == {"exact_match": 0.0, "f1": 0.0}
