"""Beam search with transformers' semantics (generation/utils.py,
``_beam_search`` and its helpers), vectorised over (batch, beam) the same way:

- each step keeps the top ``max(2, 1 + n_eos) * num_beams`` continuations of
  the accumulated float32 log-probabilities of all beams of a batch item;
- those that hit a stopping criterion (an EOS token, or max_length) are
  candidates for the finished set (only among the first num_beams), scored
  by ``logprob / (generated length) ** length_penalty``; the best num_beams
  others run on;
- ``early_stopping`` True stops a batch item once num_beams hypotheses are
  finished; False and "never" stop it once no running beam can beat the worst
  finished one (False: at the current length, "never": at max_length when
  length_penalty > 0).

Sequences are (B, num_beams, max_length), filled past their end with
transformers' fill value (pad_token_id, or eos when the pad is 0 or unset),
and cropped at the end to the longest returned hypothesis.
"""

from __future__ import annotations

import numpy as np

from pyengine.generation.logits import log_softmax, sample

__all__ = ["beam_search"]

_PENALTY = np.float32(-1.0e9)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row, largest first (ties: lowest index): what a stable argsort
    of -values gives, from a partition of each row and a sort of its k largest (and their ties) only
    (a full sort of num_beams * vocab scores a step was most of a T5 beam search's time)."""
    if k >= values.shape[-1] or np.isnan(values).any():
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    bounds = -np.partition(-values, k - 1, axis=-1)[:, k - 1]  # each row's k-th largest
    rows = []
    for row, bound in zip(values, bounds):
        candidates = np.flatnonzero(row >= bound)  # in index order, every tie at the bound included
        rows.append(candidates[np.argsort(-row[candidates], kind="stable")[:k]])
    return np.stack(rows)


def _gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """array (B, n, ...) rows index (B, k) along dim 1."""
    return array[np.arange(array.shape[0])[:, None], index]


class _State:
    def __init__(self, prompt: np.ndarray, batch: int, num_beams: int, max_length: int, fill: int):
        self.prompt_length = prompt.shape[1]
        self.running = np.full((batch, num_beams, max_length), fill, np.int64)
        self.running[:, :, :self.prompt_length] = prompt.reshape(batch, num_beams, -1)
        self.finished = self.running.copy()
        self.running_scores = np.zeros((batch, num_beams), np.float32)
        self.running_scores[:, 1:] = _PENALTY
        self.finished_scores = np.full((batch, num_beams), _PENALTY, np.float32)
        self.finished_lengths = np.zeros((batch, num_beams), np.int64)  # tokens generated
        self.is_finished = np.zeros((batch, num_beams), bool)
        self.improvable = np.ones((batch, 1), bool)


def _stopped(sequences: np.ndarray, length: int, max_length: int, eos: list) -> np.ndarray:
    """(B, k) bool: the continuation ending at position length - 1 stops."""
    if length >= max_length:
        return np.ones(sequences.shape[:2], bool)
    if not eos:
        return np.zeros(sequences.shape[:2], bool)
    return np.isin(sequences[:, :, length - 1], eos)


def beam_search(stepper, prompt: np.ndarray, batch: int, settings, processors, rng) -> np.ndarray:
    """Beam search from `prompt` (batch * num_beams, L) (each batch item's
    rows alike), the model driven by `stepper` (see loop.py); returns the
    best num_return_sequences sequences per item, (batch * n, max_length)."""
    num_beams, max_length, eos = settings.num_beams, settings.max_length, settings.eos
    keep = max(2, 1 + len(eos)) * num_beams
    state = _State(prompt, batch, num_beams, max_length, settings.beam_fill)
    length = state.prompt_length
    logits = stepper.first()
    while True:
        flat = state.running[:, :, :length].reshape(batch * num_beams, length)
        log_probs = processors(flat, log_softmax(logits))
        vocab = log_probs.shape[1]
        totals = (log_probs.reshape(batch, num_beams, vocab) + state.running_scores[:, :, None]).reshape(batch, -1)
        if settings.do_sample:
            picked = sample(totals, rng, keep)
            picked = np.take_along_axis(picked, _top(np.take_along_axis(totals, picked, axis=1), keep), axis=1)
        else:
            picked = _top(totals, keep)
        top_scores = np.take_along_axis(totals, picked, axis=1)
        parents = picked // vocab
        candidates = _gather(state.running, parents)
        candidates[:, :, length] = picked % vocab
        stops = _stopped(candidates, length + 1, max_length, eos)
        parent_rows = _step(state, candidates, top_scores, parents, stops, length, settings)
        length += 1
        _update_improvable(state, length, settings)
        if not state.improvable.any() or (settings.early_stopping is True and state.is_finished.all()) \
                or stops.all():
            break
        stepper.reorder(parent_rows)
        logits = stepper.next(state.running[:, :, length - 1].reshape(-1))
    n = settings.num_return_sequences
    generated = state.finished_lengths[:, :n].max()  # transformers crops to the longest returned
    return state.finished[:, :n, :state.prompt_length + generated].reshape(batch * n, -1)


def _step(state: _State, candidates, top_scores, parents, stops, length: int, settings) -> np.ndarray:
    """One step's bookkeeping: the running beams for the next step and the
    finished set; returns the flat rows of the running beams' parents."""
    batch, num_beams = state.running_scores.shape
    running_scores = top_scores + stops.astype(np.float32) * _PENALTY
    next_beams = _top(running_scores, num_beams)
    state.running = _gather(candidates, next_beams)
    state.running_scores = _gather(running_scores, next_beams)
    parent_rows = (_gather(parents, next_beams) + np.arange(batch)[:, None] * num_beams).reshape(-1)

    just_finished = stops.copy()
    just_finished[:, num_beams:] = False  # only the first num_beams can finish
    scored = top_scores / np.float32((length + 1 - state.prompt_length) ** settings.length_penalty)
    full = state.is_finished.all(axis=1, keepdims=True) & (settings.early_stopping is True)
    scored = scored + full.astype(np.float32) * _PENALTY
    scored = scored + (~state.improvable).astype(np.float32) * _PENALTY
    scored = scored + (~just_finished).astype(np.float32) * _PENALTY
    merged_scores = np.concatenate([state.finished_scores, scored], axis=1)
    best = _top(merged_scores, num_beams)
    state.finished = _gather(np.concatenate([state.finished, candidates], axis=1), best)
    state.finished_scores = _gather(merged_scores, best)
    lengths = np.full(candidates.shape[:2], length + 1 - state.prompt_length, np.int64)
    state.finished_lengths = _gather(np.concatenate([state.finished_lengths, lengths], axis=1), best)
    state.is_finished = _gather(np.concatenate([state.is_finished, just_finished], axis=1), best)
    return parent_rows


def _update_improvable(state: _State, length: int, settings) -> None:
    """Can a running beam still beat the worst finished hypothesis?"""
    if settings.early_stopping == "never" and settings.length_penalty > 0.0:
        best_length = settings.max_length - state.prompt_length
    else:
        best_length = length - state.prompt_length
    best_running = state.running_scores[:, :1] / np.float32(best_length ** settings.length_penalty)
    worst_finished = np.where(state.is_finished, state.finished_scores.min(axis=1, keepdims=True), _PENALTY)
    state.improvable = state.improvable & (best_running > worst_finished).any(axis=1, keepdims=True)
