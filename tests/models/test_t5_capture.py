"""T5 under pyengine.graph.capture: the padding masks are inputs of the graph, not constants frozen
at capture, so one captured graph replayed with other attention masks gives the eager model's
logits (and training step) for them; what capture cannot follow is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe

pytest.importorskip("torch")
pytest.importorskip("transformers")
from t5_cases import padded_batch, pyengine_t5, relative_error  # noqa: E402 - needs transformers


@pytest.fixture(scope="module", params=["relu-square", "gated-untied"])
def model(request, tmp_path_factory):
    return pyengine_t5(tmp_path_factory.mktemp("capture-" + request.param), request.param, seed=5)


def _other_masks():
    """Paddings other than padded_batch's, for its shapes: encoder (3, 11), decoder (3, 8)."""
    mask, decoder_mask = np.ones((3, 11), np.int64), np.ones((3, 8), np.int64)
    mask[0, 9:] = 0
    mask[1, :2] = 0
    decoder_mask[2, 6:] = 0
    decoder_mask[1, 3:] = 0
    return mask, decoder_mask


def test_one_captured_forward_follows_both_paddings(model):
    ids, mask, decoder_ids, decoder_mask = padded_batch(model.config.vocab_size, seed=1)
    with pe.no_grad():
        graph = pe.capture(lambda x, m, d, dm: model(x, m, d, dm), ids, mask, decoder_ids, decoder_mask)
    paddings = [(mask, decoder_mask), _other_masks(), (np.ones_like(mask), np.ones_like(decoder_mask))]
    outputs = []
    for encoder_mask, decoder_padding in paddings:
        with pe.no_grad():
            want = model(ids, encoder_mask, decoder_ids, decoder_padding).numpy()
            got = graph.run(ids, encoder_mask, decoder_ids, decoder_padding).numpy().copy()  # the arena's
        assert relative_error(got, want) < 1e-5
        outputs.append(got)
    assert relative_error(outputs[1], outputs[0]) > 1e-3  # the paddings do change the logits


def test_one_captured_training_step_follows_both_paddings(model):
    ids, mask, decoder_ids, decoder_mask = padded_batch(model.config.vocab_size, seed=2)
    labels = np.random.default_rng(3).integers(2, model.config.vocab_size, decoder_ids.shape)
    model.train()
    try:
        step = pe.capture(lambda x, m, d, y: model(x, m, decoder_input_ids=d, labels=y)[1], ids, mask,
                          decoder_ids, labels, optimizer=pe.optim.SGD(model.parameters(), lr=0.0))
        for encoder_mask in (mask, _other_masks()[0]):
            model.zero_grad()
            _, loss = model(ids, encoder_mask, decoder_input_ids=decoder_ids, labels=labels)
            loss.backward()
            want = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
            got_loss = step.run(ids, encoder_mask, decoder_ids, labels).item()
            assert abs(got_loss - loss.item()) < 1e-5 * abs(loss.item())
            for name, p in model.named_parameters():
                assert relative_error(p.grad.numpy(), want[name]) < 1e-4, name
    finally:
        model.eval()


def test_what_capture_cannot_follow_is_a_clear_error(model):
    ids, mask, decoder_ids, _ = padded_batch(model.config.vocab_size, seed=4)
    with pe.no_grad():
        with pytest.raises(ValueError, match="under capture the attention mask must be an integer"):
            pe.capture(lambda x, m, d: model(x, m, d), ids, mask.astype(bool), decoder_ids)
        with pytest.raises(ValueError, match="under capture, give decoder_input_ids"):
            pe.capture(lambda x, m, y: model(x, m, labels=y)[1], ids, mask, decoder_ids)
        with pytest.raises(ValueError, match="only 0 and 1"):
            model(pe.Tensor(ids), pe.Tensor(mask * 2), decoder_ids)
