"""Logits processors, on float32 numpy scores (N, V), as transformers'
(generation/logits_process.py): the n-gram ban, then for sampling the
temperature, top-k and top-p warpers, in that order. Each returns new scores;
a filtered token's score is -inf."""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "softmax", "ban_repeated_ngrams", "apply_temperature", "top_k_filter", "top_p_filter",
           "Processors"]

_NEG_INF = np.float32(-np.inf)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """float32 log-probabilities along the last axis."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


def softmax(scores: np.ndarray) -> np.ndarray:
    """float64 probabilities along the last axis (-inf scores get 0)."""
    scores = scores.astype(np.float64)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def ban_repeated_ngrams(ids: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """No n-gram of `size` tokens twice in a row of ids (N, L): each token that
    would complete an n-gram already in the row gets -inf (the prompt counts,
    as transformers' NoRepeatNGramLogitsProcessor)."""
    length = ids.shape[1]
    if size <= 0 or length < size:
        return scores
    scores = scores.copy()
    vocab = scores.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(ids, size, axis=1)  # (N, L - size + 1, size)
    prefix = ids[:, length + 1 - size:]  # the last size - 1 tokens
    matches = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=2)
    rows, starts = np.nonzero(matches)
    banned = windows[rows, starts, -1]
    keep = banned < vocab
    scores[rows[keep], banned[keep]] = _NEG_INF
    return scores


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    return (scores / np.float32(temperature)).astype(np.float32)


def top_k_filter(scores: np.ndarray, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Scores below the k-th largest of their row get -inf (ties with it stay)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = np.partition(scores, scores.shape[-1] - k, axis=-1)[:, scores.shape[-1] - k][:, None]
    return np.where(scores < kth, _NEG_INF, scores)


def top_p_filter(scores: np.ndarray, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """The smallest set of most likely tokens whose probability reaches top_p
    stays (at least min_tokens_to_keep): in ascending order, the tokens whose
    cumulative probability is <= 1 - top_p get -inf."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ascending = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(ascending).astype(np.float32), axis=-1, dtype=np.float32)
    remove = cumulative <= np.float32(1 - top_p)
    remove[:, -min_tokens_to_keep:] = False
    removed = np.zeros_like(remove)
    np.put_along_axis(removed, order, remove, axis=-1)
    return np.where(removed, _NEG_INF, scores)


class Processors:
    """The processors one generate call applies, in transformers' order."""

    def __init__(self, no_repeat_ngram_size: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                 min_tokens_to_keep: int):
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.do_sample = do_sample
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.no_repeat_ngram_size > 0:
            scores = ban_repeated_ngrams(ids, scores, self.no_repeat_ngram_size)
        if not self.do_sample:
            return scores
        if self.temperature != 1.0:
            scores = apply_temperature(scores, self.temperature)
        if self.top_k:
            scores = top_k_filter(scores, self.top_k, self.min_tokens_to_keep)
        if self.top_p < 1.0:
            scores = top_p_filter(scores, self.top_p, self.min_tokens_to_keep)
        return scores


def sample(scores: np.ndarray, rng: np.random.Generator, count: int = 1) -> np.ndarray:
    """`count` draws without replacement per row from softmax(scores): (N, count) int64."""
    probs = softmax(scores)
    if count == 1:
        cumulative = np.cumsum(probs, axis=-1)
        draws = rng.random(len(probs))[:, None] * cumulative[:, -1:]
        return np.minimum((cumulative <= draws).sum(axis=-1), probs.shape[-1] - 1)[:, None].astype(np.int64)
    return np.stack([rng.choice(probs.shape[-1], size=count, replace=False, p=row) for row in probs]).astype(np.int64)
