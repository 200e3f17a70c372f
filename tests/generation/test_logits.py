"""The logits processors against transformers' own on random logits: the
temperature, top-k and top-p warpers (min_tokens_to_keep too) and the n-gram
ban; the sampler's draws follow the probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine.generation import logits as L

torch = pytest.importorskip("torch")
processors = pytest.importorskip("transformers.generation.logits_process")


def _scores(seed=0, rows=4, vocab=50):
    return (np.random.default_rng(seed).standard_normal((rows, vocab)) * 3).astype(np.float32)


def _theirs(processor, scores, ids=None):
    ids = torch.zeros((len(scores), 1), dtype=torch.long) if ids is None else torch.from_numpy(ids)
    return processor(ids, torch.from_numpy(scores.copy())).numpy()


@pytest.mark.parametrize("top_k, keep", [(1, 1), (5, 1), (5, 8), (50, 1), (80, 1)])
def test_top_k_equals_transformers(top_k, keep):
    scores = _scores(top_k)
    expected = _theirs(processors.TopKLogitsWarper(top_k, min_tokens_to_keep=keep), scores)
    np.testing.assert_array_equal(L.top_k_filter(scores, top_k, keep), expected)


@pytest.mark.parametrize("top_p, keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.9, 3), (0.999, 1), (0.0, 2)])
def test_top_p_equals_transformers(top_p, keep):
    scores = _scores(int(top_p * 10))
    expected = _theirs(processors.TopPLogitsWarper(top_p, min_tokens_to_keep=keep), scores)
    np.testing.assert_array_equal(L.top_p_filter(scores, top_p, keep), expected)


def test_temperature_equals_transformers():
    scores = _scores(3)
    np.testing.assert_allclose(L.apply_temperature(scores, 0.7),
                               _theirs(processors.TemperatureLogitsWarper(0.7), scores), rtol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_ngram_ban_equals_transformers(size):
    rng = np.random.default_rng(size)
    ids = rng.integers(0, 3, (5, 24))  # a small alphabet: many repeated n-grams
    scores = _scores(size, rows=5, vocab=8)
    expected = _theirs(processors.NoRepeatNGramLogitsProcessor(size), scores, ids)
    np.testing.assert_array_equal(L.ban_repeated_ngrams(ids, scores, size), expected)
    assert np.isinf(expected).any()


def test_the_chained_warpers_keep_transformers_order():
    scores = _scores(9)
    chain = L.Processors(0, True, 0.8, 10, 0.7, 1)
    expected = scores
    for processor in (processors.TemperatureLogitsWarper(0.8), processors.TopKLogitsWarper(10),
                      processors.TopPLogitsWarper(0.7)):
        expected = _theirs(processor, expected)
    np.testing.assert_allclose(chain(np.zeros((4, 1), np.int64), scores), expected, rtol=1e-6)


def test_samples_follow_the_probabilities_and_skip_filtered_tokens():
    scores = np.array([[np.log(0.5), np.log(0.3), np.log(0.2), -np.inf]], np.float32).repeat(20000, axis=0)
    draws = L.sample(scores, np.random.Generator(np.random.PCG64(0)))[:, 0]
    counts = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2, 0.0], atol=0.015)
    picked = L.sample(scores[:3], np.random.Generator(np.random.PCG64(1)), count=3)
    assert all(sorted(row) == [0, 1, 2] for row in picked.tolist())  # without replacement
