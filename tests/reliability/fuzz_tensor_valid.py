"""Valid cases for the Tensor fuzz ops whose random shapes and parameters (fuzz_tensor_cases.py)
almost never fit together (a matmul's inner sizes, a convolution's window, a layer norm's weight):
each strategy draws (shapes of the leaves, params) that the op and torch both accept, sizes 0 and 1
and odd sizes included, so the fuzzing compares answers and gradients there, not only errors.
fuzz_tensor_cases.recipes mixes these with the random recipes (two valid draws to one random).
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

SIZE = st.sampled_from((1, 2, 3, 5, 8, 9, 17))  # never empty
ANY = st.sampled_from((0, 1, 2, 3, 5, 8, 9, 17))  # empty included
TINY = st.sampled_from((1, 2, 3))
BATCH = st.lists(st.sampled_from((0, 1, 2, 3)), max_size=2)


@st.composite
def _matmul(draw):
    b, m, k, n = draw(BATCH), draw(ANY), draw(ANY), draw(ANY)
    kind = draw(st.sampled_from(("vv", "mv", "vm", "mm", "bmm", "broadcast", "both")))
    # both: batch dims that broadcast on both sides, b with one dim fewer, (2, 1, m, k) @ (3, k, n)
    lead, other = (3, *b, 1), (*(1 for _ in b), draw(TINY))
    shapes = {"vv": [(k,), (k,)], "mv": [(*b, m, k), (k,)], "vm": [(k,), (*b, k, n)], "mm": [(*b, m, k), (k, n)],
              "bmm": [(*b, m, k), (*b, k, n)], "broadcast": [(*b, m, k), (*(1 for _ in b), k, n)],
              "both": [(*lead, m, k), (*other, k, n)]}[kind]
    return shapes, ()


@st.composite
def _linear(draw):
    b, n_in, n_out = draw(BATCH), draw(ANY), draw(ANY)
    return [(*b, n_in), (n_out, n_in)], ()


def _window(draw, kernel, padding, dilation=1):
    """An input size whose (padded) extent holds the window at least once."""
    return max(1, dilation * (kernel - 1) + 1 - 2 * padding + draw(st.integers(0, 6)))


@st.composite
def _conv2d(draw):
    groups = draw(st.sampled_from((1, 1, 2)))
    per_group, out = draw(TINY), groups * draw(TINY)
    r, s, stride = draw(TINY), draw(TINY), draw(st.sampled_from((1, 2)))
    padding, dilation = draw(st.sampled_from((0, 1))), draw(st.sampled_from((1, 2)))
    h, w = _window(draw, r, padding, dilation), _window(draw, s, padding, dilation)
    return [(draw(TINY), per_group * groups, h, w), (out, per_group, r, s)], (stride, padding, dilation, groups)


def _images(draw, h, w):
    """(N, C, H, W) or (C, H, W)."""
    return (draw(TINY), draw(TINY), h, w)[draw(st.sampled_from((0, 1))):]


@st.composite
def _pool(draw):
    kernel, stride = draw(TINY), draw(st.sampled_from((None, 1, 2)))
    padding = draw(st.integers(0, kernel // 2))
    return [_images(draw, _window(draw, kernel, padding), _window(draw, kernel, padding))], (kernel, stride, padding)


@st.composite
def _adaptive(draw):
    return [_images(draw, draw(SIZE), draw(SIZE))], draw(st.sampled_from((1, 2, 3, (1, 2), (3, 1))))


@st.composite
def _normalized(draw):
    n = draw(SIZE)
    return [(*draw(BATCH), n), (n,)], ()


@st.composite
def _attention(draw):
    batch, heads, tq, d = draw(TINY), draw(TINY), draw(SIZE), draw(SIZE)
    causal = draw(st.booleans())
    tk = tq if causal else draw(SIZE)  # torch aligns a causal mask to the start, pyengine to the end
    return [(batch, heads, tq, d), (batch, heads, tk, d)], causal


@st.composite
def _qkv(draw):
    return [(draw(TINY), draw(SIZE), 3, draw(TINY), draw(SIZE))], draw(st.booleans())


def _shape(draw, min_rank=1):
    return tuple(draw(st.lists(ANY, min_size=min_rank, max_size=3)))


def _dim(draw, rank):
    return draw(st.integers(-rank, rank - 1))


@st.composite
def _cat(draw):
    shape = _shape(draw)
    dim = _dim(draw, len(shape))
    other = list(shape)
    other[dim] = draw(ANY)
    return [shape, tuple(other)], dim


@st.composite
def _stack(draw):
    shape = _shape(draw, 0)
    return [shape, shape], _dim(draw, len(shape) + 1)


@st.composite
def _chunk(draw):
    shape = _shape(draw)
    return [shape], (draw(st.sampled_from((1, 2, 3, 5))), _dim(draw, len(shape)))


@st.composite
def _split(draw):
    shape = _shape(draw)
    dim = _dim(draw, len(shape))
    if draw(st.booleans()):
        return [shape], (draw(st.sampled_from((1, 2, 3, 5))), dim)
    sizes, left = [], shape[dim]
    while left:
        sizes.append(draw(st.integers(0, left)))
        left -= sizes[-1]
    return [shape], (sizes + [0] * draw(st.integers(0, 1)), dim)


@st.composite
def _factory(draw):
    return [], draw(st.lists(st.sampled_from((0, 1, 2, 3, 5)), max_size=3))


@st.composite
def _batch_norm(draw):
    n, c, spatial, training = draw(TINY), draw(SIZE), draw(st.lists(TINY, max_size=2)), draw(st.booleans())
    if training and n * math.prod(spatial) == 1:  # torch: more than one value per channel to train on
        n = 2
    return [(n, c, *spatial), (c,)], training


@st.composite
def _embedding(draw):
    rows, dim = draw(SIZE), draw(ANY)
    index = draw(st.lists(st.integers(0, rows - 1), max_size=5))
    return [(rows, dim)], tuple(index)


@st.composite
def _classes(draw):
    """Logits (N, C) with N targets, (C,) with one, or (N, C, d) with (N, d) targets."""
    n, c, d = draw(TINY), draw(SIZE), draw(TINY)
    kind = draw(st.sampled_from(("rows", "one", "spatial")))
    target = st.integers(0, c - 1)
    if kind == "one":
        return [(c,)], draw(target)
    if kind == "rows":
        return [(n, c)], tuple(draw(st.lists(target, min_size=n, max_size=n)))
    rows = st.lists(target, min_size=d, max_size=d).map(tuple)
    return [(n, c, d)], tuple(draw(st.lists(rows, min_size=n, max_size=n)))


@st.composite
def _same_pair(draw):
    shape = _shape(draw, 0)
    return [shape, shape], draw(st.sampled_from((0.0, 0.5)))


VALID = {
    "matmul": _matmul(), "linear": _linear(), "conv2d": _conv2d(),
    "max_pool2d": _pool(), "avg_pool2d": _pool(), "adaptive_avg_pool2d": _adaptive(),
    "layer_norm": _normalized(), "rms_norm": _normalized(),
    "scaled_dot_product_attention": _attention(), "qkv_attention": _qkv(),
    "cat": _cat(), "stack": _stack(), "chunk": _chunk(), "split": _split(),
    **{name: _factory() for name in ("zeros", "ones", "rand", "randn")},
    "batch_norm": _batch_norm(), "embedding": _embedding(),
    "cross_entropy": _classes(), "nll_loss": _classes(),
    "binary_cross_entropy_with_logits": _same_pair(), "dropout_add": _same_pair(),
}
