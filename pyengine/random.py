"""Seeded random numbers: initialisation draws, and the streams of random kernels.

Two generators, both reseeded by :func:`manual_seed`:

- a numpy Generator (:func:`default_generator`) for initialisation and the
  random factories (``pyengine.randn``, ``nn.Linear``'s weights, ...);
- the kernels' generator, whose whole state is a small int64 array
  ``(seed, counter)`` (:func:`get_rng_state` / :func:`set_rng_state`, what a
  training checkpoint saves to resume the same dropout masks).

The kernels' convention (csrc/core/rng_input.h; dropout, attention dropout):
a random kernel takes an index-dtype input ``rng`` of shape (2,) =
``(seed, stream)``, and element ``e`` of its draw is
``philox::uniform(seed, stream, e)`` (csrc/core/philox.h); dropout keeps the
element iff that value is >= p and scales it by 1 / (1 - p). The draw depends
on (seed, stream, e) only: never on the thread count, and a backward
regenerates its forward's mask from the same ``rng`` instead of storing it.

An op gets its ``rng`` input from :func:`next_rng_input`, a (2,) int64
Tensor passed to the op like any other (non-differentiable) input::

    from pyengine import random
    y = apply(MyRandomOp(p), x, random.next_rng_input())

In eager mode each call takes a fresh stream: ``(seed, counter)``, then
counter += 1. Under graph capture (``pyengine.capture``) the i-th call of the
captured function gets a buffer the graph refills before every replay with
``(seed, counter + i)``, and each replay then advances the counter by the
number of streams it used. So a replayed step draws exactly the masks the
same sequence of eager steps would have drawn (eager and replayed training
are bit-identical for one seed), and recording the capture draws nothing.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["manual_seed", "default_generator", "get_rng_state", "set_rng_state", "next_rng_input",
           "initial_seed"]

_generator = np.random.default_rng(0)
_state = np.zeros(2, dtype=np.int64)  # (seed, counter) of the kernels' generator
_recording = None  # the _CapturedStreams of the capture in progress, if any


def _as_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"manual_seed: seed must be in [-2**63, 2**64), got {seed}")
    return seed % 2**64  # as torch: a negative seed is its two's complement


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed pyengine's generators: the initialisation one (returned) and the
    kernels' (state (seed, 0))."""
    global _generator
    seed = _as_seed(seed)
    _generator = np.random.default_rng(seed)
    _state[0] = np.uint64(seed).view(np.int64)
    _state[1] = 0
    return _generator


def default_generator() -> np.random.Generator:
    return _generator


def initial_seed() -> int:
    """The seed of the kernels' generator (as an unsigned 64-bit int, as torch)."""
    return int(_state[:1].view(np.uint64)[0])


def get_rng_state() -> np.ndarray:
    """A copy of the kernels' generator state: int64 (seed, counter)."""
    return _state.copy()


def set_rng_state(state) -> None:
    """Restore a state saved by get_rng_state (an int64 array or Tensor of shape (2,))."""
    array = np.asarray(getattr(state, "data", state))
    if array.shape != (2,) or array.dtype.kind not in "iu":
        raise ValueError(f"set_rng_state: expected an integer array of shape (2,) = (seed, counter), got "
                         f"{array.dtype} with shape {array.shape}")
    if array[1] < 0:
        raise ValueError(f"set_rng_state: the counter must be >= 0, got {int(array[1])}")
    _state[:] = array.astype(np.int64)


def next_rng_input():
    """The ``rng`` input, (seed, stream), of the next random kernel call: a
    fresh stream in eager mode, a buffer the graph refills per replay under
    capture (see the module docstring)."""
    from pyengine.tensor import Tensor
    if _recording is not None:
        return Tensor(_recording.take())
    rng = _state.copy()
    _state[1] += 1
    return Tensor(rng)


class _CapturedStreams:
    """The rng buffers of one captured graph, in the order the ops took them."""

    def __init__(self):
        self.buffers: list = []

    def take(self) -> np.ndarray:
        buffer = np.array([_state[0], _state[1] + len(self.buffers)], dtype=np.int64)
        self.buffers.append(buffer)
        return buffer

    def begin_replay(self) -> None:
        """Point buffer i at stream counter + i, then move the counter past them."""
        if not self.buffers:
            return
        seed, counter = _state
        for offset, buffer in enumerate(self.buffers):
            buffer[0] = seed
            buffer[1] = counter + offset
        _state[1] = counter + len(self.buffers)


@contextlib.contextmanager
def capture_streams():
    """While recording a graph: random ops take replay-refilled buffers
    (pyengine.graph.capture uses it; yields the _CapturedStreams)."""
    global _recording
    previous, _recording = _recording, _CapturedStreams()
    try:
        yield _recording
    finally:
        _recording = previous
