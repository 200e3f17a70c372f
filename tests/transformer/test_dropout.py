"""Dropout: the counter-based mask (Philox known answers through the kernel),
statistics, determinism, thread-count independence, the backward, the fused
residual variant, the generator state, nn.Dropout's modes, and eager steps
against captured replays bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyengine as pe
from pyengine import _C, nn
from pyengine import functional as F

F32 = np.float32
M32 = np.uint64(0xFFFFFFFF)


def philox_block(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Philox-4x32-10 in numpy: the four words of each counter (index, stream) under key seed, (4, n)."""
    index = np.asarray(index, np.uint64)
    c = [index & M32, index >> np.uint64(32), np.full_like(index, stream & 0xFFFFFFFF),
         np.full_like(index, stream >> 32)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & M32, (k1 + np.uint64(0xBB67AE85)) & M32
    return np.stack(c)


def philox_uniform(seed: int, stream: int, n: int) -> np.ndarray:
    e = np.arange(n, dtype=np.uint64)
    bits = philox_block(seed, stream, e >> np.uint64(2))[(e & np.uint64(3)).astype(np.int64), np.arange(n)]
    return (bits >> np.uint64(8)).astype(np.float64) / 2**24


def rng_of(seed: int, stream: int) -> np.ndarray:
    return np.array([seed, stream], np.uint64).view(np.int64)


def test_numpy_philox_matches_random123_known_answers():
    ones = 0xFFFFFFFFFFFFFFFF
    pi_index, pi_stream, pi_seed = 0x85A308D3243F6A88, 0x0370734413198A2E, 0x299F31D0A4093822
    cases = [(0, 0, 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
             (ones, ones, ones, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
             (pi_seed, pi_stream, pi_index, [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1])]
    for seed, stream, index, expected in cases:
        assert philox_block(seed, stream, np.array([index], np.uint64))[:, 0].tolist() == expected


def test_known_answer_through_the_kernel(isa):
    # seed 0, stream 0, elements 0..3: Random123's first block. Element e is
    # kept at p = u_e exactly and dropped at the next float above it.
    words = np.array([0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8], np.uint64)
    u = ((words >> np.uint64(8)).astype(np.float64) / 2**24).astype(F32)
    x = np.ones(4, F32)
    for e in range(4):
        kept = _C.dropout_forward(None, x, rng_of(0, 0), p=float(u[e]))
        dropped = _C.dropout_forward(None, x, rng_of(0, 0), p=float(np.nextafter(u[e], F32(1))))
        assert kept[e] != 0 and dropped[e] == 0


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 1000, 300_001])
@pytest.mark.parametrize("seed,stream", [(0, 0), (12345, 7), (2**63 + 5, 2**40 + 3)])
def test_mask_is_philox_of_the_element(isa, n, seed, stream):
    p = 0.3
    x = np.random.default_rng(n).standard_normal(n).astype(F32)
    y = _C.dropout_forward(None, x, rng_of(seed, stream), p=p)
    keep = philox_uniform(seed, stream, n) >= F32(p)
    scale = F32(1 / (1 - F32(p)))
    np.testing.assert_array_equal(y, np.where(keep, x * scale, F32(0)))


def test_int32_rng_is_the_same_stream():
    x = np.ones(100, F32)
    a = _C.dropout_forward(None, x, np.array([9, 4], np.int64))
    b = _C.dropout_forward(None, x, np.array([9, 4], np.int32))
    np.testing.assert_array_equal(a, b)


def test_keep_fraction_and_scale():
    n, p = 1_000_000, 0.3
    y = _C.dropout_forward(None, np.ones(n, F32), rng_of(1, 2), p=p)
    kept = np.count_nonzero(y)
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-7)
    # torch scales its kept elements the same way
    t = torch.nn.functional.dropout(torch.ones(1000), p=p).numpy()
    np.testing.assert_allclose(t[t != 0], y[y != 0][: np.count_nonzero(t)], rtol=1e-6)


def test_p_one_and_p_zero():
    x = np.random.default_rng(0).standard_normal(77).astype(F32)
    assert not _C.dropout_forward(None, x, rng_of(3, 3), p=1.0).any()
    np.testing.assert_array_equal(_C.dropout_forward(None, x, rng_of(3, 3), p=0.0), x)


def test_thread_count_does_not_change_the_mask(restore_threads):
    x = np.random.default_rng(1).standard_normal(500_000).astype(F32)
    results = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        results.append(_C.dropout_forward(None, x, rng_of(5, 6), p=0.4))
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])


def test_backward_is_mask_times_scale(isa):
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((2, 3000)).astype(F32)
    key = rng_of(8, 1)
    y = _C.dropout_forward(None, x, key, p=0.25)
    factor = _C.dropout_forward(None, np.ones_like(x), key, p=0.25)
    dx = np.zeros_like(x)
    _C.dropout_backward(dx, dy, key, p=0.25)
    np.testing.assert_array_equal(dx, dy * factor)
    _C.dropout_backward(dx, dy, key, p=0.25)  # accumulates (one rounding with FMA)
    np.testing.assert_allclose(dx, 2 * dy * factor, rtol=1e-6)
    np.testing.assert_array_equal(y, x * factor)


def test_dropout_add_is_residual_plus_dropout(isa):
    rng = np.random.default_rng(3)
    res, x, dy = rng.standard_normal((3, 4, 1000)).astype(F32)
    key = rng_of(4, 9)
    y = _C.dropout_add_forward(None, res, x, key, p=0.1)
    np.testing.assert_allclose(y, res + _C.dropout_forward(None, x, key, p=0.1), rtol=1e-6, atol=1e-6)  # FMA
    dres, dx = np.zeros_like(res), np.zeros_like(x)
    _C.dropout_add_backward(dres, dx, dy, key, p=0.1)
    np.testing.assert_array_equal(dres, dy)
    alone = np.zeros_like(x)
    _C.dropout_backward(alone, dy, key, p=0.1)
    np.testing.assert_array_equal(dx, alone)
    only_dx = np.zeros_like(x)
    _C.dropout_add_backward(None, only_dx, dy, key, p=0.1)
    np.testing.assert_array_equal(only_dx, dx)


def test_kernel_errors():
    x = np.ones(4, F32)
    with pytest.raises(ValueError, match=r"dropout_forward: 'rng' must have shape \(2,\) = \(seed, stream\), got "
                                         r"shape \(3,\)"):
        _C.dropout_forward(None, x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="dropout_forward: dropout probability has to be between 0 and 1"):
        _C.dropout_forward(None, x, np.zeros(2, np.int64), p=1.5)
    with pytest.raises(ValueError, match="dropout: dropout probability has to be between 0 and 1, but got -0.1"):
        F.dropout(pe.Tensor(x), p=-0.1)


# ------------------------------------------------------------------ the generator and the functional


def test_functional_draws_a_fresh_stream_per_call():
    pe.manual_seed(11)
    x = pe.Tensor(np.ones(1000, F32))
    a, b = F.dropout(x, 0.5).numpy(), F.dropout(x, 0.5).numpy()
    assert not np.array_equal(a, b)
    assert pe.get_rng_state().tolist() == [11, 2]
    pe.manual_seed(11)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), a)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), b)
    np.testing.assert_array_equal(a, _C.dropout_forward(None, x.numpy(), rng_of(11, 0), p=0.5))


def test_rng_state_round_trip():
    pe.manual_seed(3)
    x = pe.Tensor(np.ones(256, F32))
    F.dropout(x)
    saved = pe.get_rng_state()
    expected = F.dropout(x).numpy()
    F.dropout(x)
    pe.set_rng_state(saved)
    np.testing.assert_array_equal(F.dropout(x).numpy(), expected)
    with pytest.raises(ValueError, match="set_rng_state"):
        pe.set_rng_state(np.zeros(3, np.int64))


def test_seeds_as_torch_accepts_them():
    pe.manual_seed(-1)
    assert pe.initial_seed() == 2**64 - 1
    with pytest.raises(TypeError, match="manual_seed"):
        pe.manual_seed(1.5)


def test_identity_without_a_kernel_call():
    pe.manual_seed(0)
    x = pe.Tensor(np.ones(10, F32), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    assert pe.get_rng_state().tolist() == [0, 0]  # no stream taken


def test_autograd_gradient_is_the_mask():
    pe.manual_seed(4)
    x = pe.Tensor(np.random.default_rng(0).standard_normal((8, 50)).astype(F32), requires_grad=True)
    y = F.dropout(x, 0.2)
    (y * 3.0).sum().backward()
    factor = np.where(y.numpy() != 0, F32(1 / (1 - F32(0.2))), F32(0))
    np.testing.assert_array_equal(x.grad.numpy(), 3 * factor)


def test_dropout_add_functional():
    pe.manual_seed(6)
    rng = np.random.default_rng(1)
    res = pe.Tensor(rng.standard_normal(300).astype(F32), requires_grad=True)
    x = pe.Tensor(rng.standard_normal(300).astype(F32), requires_grad=True)
    fused = F.dropout_add(x, res, 0.3)
    pe.manual_seed(6)
    plain = res + F.dropout(x, 0.3)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-6, atol=1e-6)  # one rounding fewer
    fused.sum().backward()
    np.testing.assert_array_equal(res.grad.numpy(), np.ones(300, F32))
    assert F.dropout_add(x, res, 0.3, training=False).numpy().tolist() == (x.numpy() + res.numpy()).tolist()


def test_module_modes():
    drop = nn.Dropout(0.5)
    assert repr(drop) == "Dropout(p=0.5, inplace=False)"
    model = nn.Sequential(nn.Linear(4, 4), drop)
    x = pe.Tensor(np.ones((64, 4), F32))
    pe.manual_seed(0)
    train_out = model(x).numpy()
    assert (train_out == 0).any()
    model.eval()
    assert not drop.training
    np.testing.assert_array_equal(model(x).numpy(), model[0](x).numpy())
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(2.0)


# ------------------------------------------------------------------ eager against capture and replay


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        pe.manual_seed(21)
        self.up, self.down = nn.Linear(6, 16), nn.Linear(16, 3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.drop(self.up(x).relu())
        h = F.dropout_add(self.drop(h), h, 0.2)  # two more streams
        return self.down(h)


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def test_replayed_steps_equal_eager_steps_bit_for_bit():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, 6)).astype(F32)
    y = rng.integers(0, 3, 10).astype(np.int64)
    steps = 5

    eager_model = _Block()
    opt = pe.optim.SGD(eager_model.parameters(), lr=0.1, momentum=0.9)
    pe.manual_seed(99)
    eager = []
    for _ in range(steps):
        loss = _loss(eager_model, pe.Tensor(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        eager.append(loss.item())
    eager_state = pe.get_rng_state()

    model = _Block()
    opt2 = pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pe.manual_seed(99)
    graph = pe.capture(lambda a, b: _loss(model, a, b), x, y, optimizer=opt2)
    assert pe.get_rng_state().tolist() == [99, 0]  # recording draws nothing
    replayed = [graph.run(x, y).item() for _ in range(steps)]
    assert replayed == eager
    assert len(set(replayed)) == steps  # the masks changed from step to step
    assert pe.get_rng_state().tolist() == eager_state.tolist() == [99, 3 * steps]
    for a, b in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
