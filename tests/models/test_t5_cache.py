"""T5's key/value cache (pyengine.models.t5_generate): decode steps append into the same
preallocated buffers and attend over them in place (no copy of the cache from step to step), beam
search's reorder moves the filled prefix within those buffers, and the rows of one input (its beams)
share their input's cross-attention keys and values, computed once, until a reorder mixes the
groups. The logits are compared with the full model's on the same rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
from t5_cases import padded_batch, pyengine_t5, relative_error  # noqa: E402 - needs transformers


@pytest.fixture(scope="module", params=["relu-square", "gated-untied"])
def model(request, tmp_path_factory):
    return pyengine_t5(tmp_path_factory.mktemp("cache-" + request.param), request.param, seed=4)


def _pointer(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_decode_steps_write_into_the_same_buffers(model):
    ids, mask, decoder_ids, decoder_mask = padded_batch(model.config.vocab_size, seed=2)
    full = model(ids, mask, decoder_ids, decoder_mask).numpy()
    cache = model.new_cache(3, 8)
    buffers = [(k, v, _pointer(k), _pointer(v)) for k, v in zip(cache.keys, cache.values)]
    cross = None
    position = 0
    for steps in (1, 2, 1, 1):
        end = position + steps
        logits = model.decode_step(decoder_ids[:, position:end], cache, attention_mask=decoder_mask[:, :end],
                                   encoder_hidden=model.encode(ids, mask) if position == 0 else None,
                                   encoder_attention_mask=mask)
        assert relative_error(logits, full[:, end - 1]) < 1e-5
        for (k, v, k_at, v_at), k_now, v_now in zip(buffers, cache.keys, cache.values):
            assert k_now is k and v_now is v and _pointer(k_now) == k_at and _pointer(v_now) == v_at
        cross = cross or (list(cache.cross_keys), list(cache.cross_values))
        assert all(a is b for a, b in zip(cross[0] + cross[1], cache.cross_keys + cache.cross_values))
        position = end
    untouched = cache.keys[0][:, :, position:]
    assert not untouched.any()  # nothing written past the filled prefix


def test_a_step_allocates_less_than_one_layer_of_the_filled_prefix(model):
    """A step after a long prefix: what it allocates (numpy's arrays, traced) stays below the size of
    one layer's cached keys, which a copy of the prefix for the attention would take."""
    ids, mask, _, _ = padded_batch(model.config.vocab_size, seed=7)
    prefix = np.random.default_rng(8).integers(2, model.config.vocab_size, (3, 300))
    cache = model.new_cache(3, 400)  # a slice of it: a copy of the filled part would allocate
    model.decode_step(prefix, cache, encoder_hidden=model.encode(ids, mask), encoder_attention_mask=mask)
    one_layer = cache.keys[0][:, :, :cache.length].nbytes
    tracemalloc.start()
    try:
        model.decode_step(prefix[:, :1], cache, encoder_attention_mask=mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < one_layer / 2, f"a step allocated {peak} bytes, one layer's prefix is {one_layer}"


def test_reorder_moves_the_filled_prefix_within_the_buffers(model):
    ids, mask, decoder_ids, _ = padded_batch(model.config.vocab_size, seed=3)
    cache = model.new_cache(3, 6)
    model.decode_step(decoder_ids[:, :3], cache, encoder_hidden=model.encode(ids, mask), encoder_attention_mask=mask)
    before = [k.copy() for k in cache.keys]
    arrays = list(cache.keys)
    rows = np.array([1, 1, 0])
    cache.reorder(rows)
    for old, new, array in zip(before, cache.keys, arrays):
        assert new is array
        np.testing.assert_array_equal(new[:, :, :3], old[rows, :, :3])
    got = model.decode_step(decoder_ids[rows, 3:4], cache, encoder_attention_mask=mask[rows])
    want = model(ids[rows], mask[rows], decoder_ids[rows, :4]).numpy()[:, 3]
    assert relative_error(got, want) < 1e-5


def test_the_rows_of_an_input_share_its_cross_attention(model):
    """Two inputs, three rows each: one cross-attention row per input, the same logits as the full
    model on the repeated inputs, through a reorder within the groups and one across them."""
    ids, mask, decoder_ids, _ = padded_batch(model.config.vocab_size, seed=4)
    ids, mask = ids[1:], mask[1:]  # two inputs, both padded
    decoder_ids = np.random.default_rng(5).integers(2, model.config.vocab_size, (6, 4))
    rows = np.repeat(np.arange(2), 3)
    cache = model.new_cache(6, 4)
    got = model.decode_step(decoder_ids[:, :2], cache, encoder_hidden=model.encode(ids, mask),
                            encoder_attention_mask=mask)
    assert cache.group == 3 and cache.cross_keys[0].shape[0] == 2
    assert relative_error(got, model(ids[rows], mask[rows], decoder_ids[:, :2]).numpy()[:, 1]) < 1e-5
    shared = list(cache.cross_keys)
    within = np.array([2, 0, 0, 5, 3, 3])  # every row stays with its input
    cache.reorder(within)
    assert all(a is b for a, b in zip(shared, cache.cross_keys)) and cache.group == 3
    history = decoder_ids[within]  # row i continues row within[i], of the same input
    got = model.decode_step(history[:, 2:3], cache, encoder_attention_mask=mask)
    assert relative_error(got, model(ids[rows], mask[rows], history).numpy()[:, 2]) < 1e-5
    across = np.array([4, 0, 1, 2])  # rows of both inputs mixed, fewer of them
    cache.reorder(across)
    assert cache.group == 1 and cache.cross_keys[0].shape[0] == 4
    got = model.decode_step(history[across, 3:4], cache, encoder_attention_mask=mask)  # a mask per input still
    sources = rows[across]
    want = model(ids[sources], mask[sources], history[across]).numpy()[:, 3]
    assert relative_error(got, want) < 1e-5


def test_encoder_rows_that_do_not_divide_the_cache_raise(model):
    ids, mask, decoder_ids, _ = padded_batch(model.config.vocab_size, seed=6)
    cache = model.new_cache(4, 3)
    with pytest.raises(ValueError, match="one row per input"):
        model.decode_step(decoder_ids[:1].repeat(4, 0)[:, :1], cache, encoder_hidden=model.encode(ids, mask))
    cache = model.new_cache(3, 3)
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        model.decode_step(decoder_ids[:, :1], cache, encoder_hidden=model.encode(ids, mask),
                          encoder_attention_mask=mask[:2])
