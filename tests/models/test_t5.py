"""T5 loaded from folders that transformers writes, against transformers' own model on the same
files: the relative position buckets, encoder hidden states and logits with padding on both sides,
the loss and every parameter gradient, the cached decode_step against the full decoder, and the
errors of checkpoints that do not fit. Random-weight models of several small configurations: odd
head counts, ReLU and gated GELU, tied and untied heads, encoders and decoders of different depths."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pyengine import Tensor
from pyengine.models import pretrained
from pyengine.models.t5 import T5Config, from_hf, relative_position_bucket

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5_cases import CONFIGS, GENERATION_CONFIGS, write_t5  # noqa: E402 - needs transformers
from t5_cases import padded_batch as _batch  # noqa: E402
from t5_cases import relative_error as _relative_error  # noqa: E402


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = write_t5(folder, request.param)
    return pretrained.from_pretrained(folder), reference


def _torch(*arrays):
    return [torch.tensor(a) for a in arrays]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (12, 30), (64, 256)])
def test_relative_position_buckets_equal_transformers(bidirectional, num_buckets, max_distance):
    relative = np.arange(-3000, 3000, dtype=np.int64)
    want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    got = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(got, want.numpy())


def test_encoder_and_logits_match_transformers_with_padding(models):
    model, reference = models
    ids, mask, decoder_ids, decoder_mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = reference(*_torch(ids, mask, decoder_ids, decoder_mask))
    encoded = model.encode(ids, mask)
    assert encoded.dtype == np.float32 and encoded.shape == (3, 11, model.config.d_model)
    assert _relative_error(encoded, want.encoder_last_hidden_state.numpy()) < 1e-4
    logits = model(ids, mask, decoder_ids, decoder_mask)
    assert isinstance(logits, Tensor) and logits.shape == (3, 8, model.config.vocab_size)
    assert _relative_error(logits.numpy(), want.logits.numpy()) < 1e-4


def test_without_masks_matches_transformers(models):
    model, reference = models
    ids, _, decoder_ids, _ = _batch(model.config.vocab_size, seed=2)
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(decoder_ids)).logits
    assert _relative_error(model(Tensor(ids), decoder_input_ids=decoder_ids).numpy(), want.numpy()) < 1e-4


def test_loss_and_every_gradient_match_transformers(models):
    model, reference = models
    ids, mask, _, _ = _batch(model.config.vocab_size, seed=3)
    labels = np.random.default_rng(4).integers(0, model.config.vocab_size, (3, 6))
    labels[0, 4:] = -100
    labels[2, 5] = -100
    reference.zero_grad()
    want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    want.loss.backward()
    model.zero_grad()
    logits, loss = model(ids, mask, labels=labels)
    loss.backward()
    assert _relative_error(logits.numpy(), want.logits.detach().numpy()) < 1e-4
    assert abs(loss.item() - want.loss.item()) <= 1e-4 * abs(want.loss.item())
    theirs = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        grad = theirs[name].grad.numpy()
        assert _relative_error(param.grad.numpy(), grad) < 1e-4, name
    assert model.tied == ("lm_head.weight" not in dict(model.named_parameters()))


def test_shift_right_follows_transformers(models):
    model, reference = models
    labels = np.array([[5, 7, -100, -100], [3, 4, 5, 6]])
    want = reference._shift_right(torch.tensor(labels)).numpy()
    np.testing.assert_array_equal(model.shift_right(labels), want)


def test_cached_decode_steps_equal_the_full_decoder(models):
    model, _ = models
    ids, mask, decoder_ids, decoder_mask = _batch(model.config.vocab_size, seed=5)
    full = model(ids, mask, decoder_ids, decoder_mask).numpy()
    encoded = model.encode(ids, mask)
    cache = model.new_cache(3, 8)
    position = 0
    for steps in (1, 2, 1, 3, 1):
        end = position + steps
        logits = model.decode_step(decoder_ids[:, position:end], cache, attention_mask=decoder_mask[:, :end],
                                   encoder_hidden=encoded if position == 0 else None, encoder_attention_mask=mask)
        assert logits.shape == (3, model.config.vocab_size) and cache.length == end
        assert _relative_error(logits, full[:, end - 1]) < 1e-5
        position = end


def test_reordered_cache_continues_the_selected_rows(models):
    model, _ = models
    ids, mask, decoder_ids, _ = _batch(model.config.vocab_size, seed=6)
    encoded = model.encode(ids, mask)
    cache = model.new_cache(3, 6)
    model.decode_step(decoder_ids[:, :3], cache, encoder_hidden=encoded, encoder_attention_mask=mask)
    rows = np.array([2, 0, 0, 1])
    cache.reorder(rows)
    got = model.decode_step(decoder_ids[rows, 3:4], cache, encoder_attention_mask=mask[rows])
    full = model(ids[rows], mask[rows], decoder_ids[rows, :4]).numpy()
    assert cache.batch == 4 and _relative_error(got, full[:, 3]) < 1e-5


def test_generation_config_and_config_fields(models):
    model, reference = models
    config = model.generation_config
    assert config["is_encoder_decoder"] and config["decoder_start_token_id"] == 0
    assert config["eos_token_id"] == reference.config.eos_token_id == 1 and config["pad_token_id"] == 0
    assert config["vocab_size"] == reference.config.vocab_size
    assert model.config.scale_decoder_outputs == reference.config.scale_decoder_outputs


def _folder_parts(tmp_path, name="relu-tied"):
    write_t5(tmp_path, name)
    config, tensors = pretrained.read_folder(tmp_path)
    return config, dict(tensors)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    config, tensors = _folder_parts(tmp_path)
    del tensors["decoder.block.2.layer.2.DenseReluDense.wo.weight"]
    tensors["encoder.block.1.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError) as error:
        from_hf(config, tensors)
    message = str(error.value)
    assert "decoder.block.2.layer.2.DenseReluDense.wo.weight" in message and "missing" in message
    assert "encoder.block.1.layer.0.SelfAttention.q.weight" in message and "(3, 3)" in message


def test_unexpected_tensor_and_bad_config_raise(tmp_path):
    config, tensors = _folder_parts(tmp_path)
    with pytest.raises(ValueError, match="encoder.block.9.layer.0.SelfAttention.q.weight"):
        from_hf(config, {**tensors, "encoder.block.9.layer.0.SelfAttention.q.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        from_hf({**config, "feed_forward_proj": "gated-tanhshrink"}, tensors)
    with pytest.raises(ValueError, match="num_heads"):
        T5Config(num_heads=0)


def test_bad_ids_and_masks_raise(models):
    model, _ = models
    ids, mask, decoder_ids, _ = _batch(model.config.vocab_size)
    with pytest.raises(ValueError, match="outside"):
        model(ids + 1000, mask, decoder_ids)
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(ids, mask)
    with pytest.raises(ValueError, match="does not match"):
        model(ids, mask[:, :5], decoder_ids)
    cache = model.new_cache(3, 2)
    with pytest.raises(ValueError, match="first step needs encoder_hidden"):
        model.decode_step(decoder_ids[:, :1], cache)
    with pytest.raises(ValueError, match="capacity"):
        model.decode_step(decoder_ids[:, :3], cache, encoder_hidden=model.encode(ids, mask))


def test_config_json_of_the_folder_is_what_transformers_wrote(tmp_path):
    write_t5(tmp_path, "gated-untied")
    with open(os.path.join(tmp_path, "config.json")) as file:
        config = json.load(file)
    model = pretrained.from_pretrained(tmp_path)
    assert not model.tied and not model.config.scale_decoder_outputs and config["tie_word_embeddings"] is False
    assert model.config.is_gated and model.config.activation == "gelu_new"


# ---------------------------------------------------------------- generation against transformers' generate


@pytest.fixture(scope="module", params=list(GENERATION_CONFIGS))
def generation_models(request, tmp_path_factory):
    pytest.importorskip("pyengine.generation")
    folder = tmp_path_factory.mktemp("generate-" + request.param)
    reference = write_t5(folder, request.param, seed=GENERATION_CONFIGS[request.param])
    return pretrained.from_pretrained(folder), reference


def _prompts(vocab: int):
    """Three prompts of 9, 6 and 4 tokens, right-padded (what T5's tokenizer does)."""
    rng = np.random.default_rng(8)
    ids, mask = rng.integers(2, vocab, (3, 9)), np.ones((3, 9), np.int64)
    for row, length in ((1, 6), (2, 4)):
        ids[row, length:], mask[row, length:] = 0, 0
    return ids, mask


def _with_eos_mid_batch(model, reference, ids, mask, settings: dict):
    """Make a token that the search emits in the middle of a row (and not before in it) the EOS of both
    models, so that rows finish at different steps."""
    model.config.eos_token_id = None
    rows = model.generate(ids, attention_mask=mask, **settings)
    eos = next((int(row[i]) for row in rows for i in range(2, len(row)) if row[i] not in row[1:i]), int(rows[0, 1]))
    model.config.eos_token_id = reference.generation_config.eos_token_id = eos
    return eos


def _compare_generate(model, reference, ids, mask, **settings):
    with torch.no_grad():
        want = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                  **settings).numpy()
    got = model.generate(ids, attention_mask=mask, **settings)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    return got


GENERATE_SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "beam": dict(num_beams=4, max_new_tokens=10),
    "beam-penalty-early": dict(num_beams=4, max_new_tokens=10, length_penalty=0.5, early_stopping=True,
                               num_return_sequences=2),
    "beam-never-long-penalty": dict(num_beams=3, max_length=9, early_stopping="never", length_penalty=2.0,
                                    num_return_sequences=3),
    "beam-ngram": dict(num_beams=2, max_new_tokens=8, no_repeat_ngram_size=2),
}


@pytest.mark.parametrize("settings", list(GENERATE_SETTINGS))
def test_generate_equals_transformers(generation_models, settings):
    model, reference = generation_models
    ids, mask = _prompts(model.config.vocab_size)
    eos = reference.generation_config.eos_token_id
    try:
        _compare_generate(model, reference, ids, mask, **GENERATE_SETTINGS[settings])
    finally:
        model.config.eos_token_id = reference.generation_config.eos_token_id = eos


@pytest.mark.parametrize("settings", ["greedy", "beam", "beam-penalty-early"])
def test_generate_with_eos_in_the_middle_of_the_batch(generation_models, settings):
    model, reference = generation_models
    ids, mask = _prompts(model.config.vocab_size)
    original = reference.generation_config.eos_token_id
    try:
        eos = _with_eos_mid_batch(model, reference, ids, mask, GENERATE_SETTINGS[settings])
        got = _compare_generate(model, reference, ids, mask, **GENERATE_SETTINGS[settings])
        if settings == "greedy":  # rows finish at different steps, and a finished row is padded
            ends = [int(np.argmax(row[1:] == eos)) if (row[1:] == eos).any() else None for row in got]
            assert any(end is not None for end in ends) and len(set(ends)) > 1, f"rows end together: {ends}"
            for row, end in zip(got, ends):
                assert end is None or (row[end + 2:] == model.config.pad_token_id).all()
        # beam search: the EOS, which the search without it emitted, ends hypotheses as they arise
        # (the sequences returned may be others, longer ones, as transformers' are)
    finally:
        model.config.eos_token_id = reference.generation_config.eos_token_id = original


# ---------------------------------------------------------------- fine-tuning with the engine's optimizers


def _training_batches(vocab: int, count: int):
    rng = np.random.default_rng(9)
    return [(rng.integers(2, vocab, (2, 7)), rng.integers(2, vocab, (2, 5))) for _ in range(count)]


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
def test_adamw_fine_tuning_matches_transformers(tmp_path, captured):
    import pyengine as pe

    reference = write_t5(tmp_path, "gated-untied", seed=11).train()
    model = pretrained.from_pretrained(tmp_path).train()
    batches = _training_batches(model.config.vocab_size, 6)
    inputs = [(ids, model.shift_right(labels), labels) for ids, labels in batches]
    if captured:  # the decoder inputs are a graph input: a replay reads each batch's
        optimizer = pe.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, max_grad_norm=1.0)
        graph = pe.capture(lambda x, d, y: model(x, decoder_input_ids=d, labels=y)[1], *inputs[0],
                           optimizer=optimizer)
        losses = [graph.run(*batch).item() for batch in inputs]
    else:
        optimizer, losses = pe.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1), []
        for ids, _, labels in inputs:
            optimizer.zero_grad()
            _, loss = model(ids, labels=labels)
            loss.backward()
            pe.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
    torch_optimizer, expected = torch.optim.AdamW(reference.parameters(), lr=3e-3, weight_decay=0.1), []
    for ids, labels in batches:
        torch_optimizer.zero_grad()
        loss = reference(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        torch_optimizer.step()
        expected.append(loss.item())
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["relu-tied", "gated-untied"])
def test_save_pretrained_folder_loads_in_transformers(tmp_path, name):
    write_t5(tmp_path / "source", name, seed=12)
    model = pretrained.from_pretrained(tmp_path / "source")
    for param in model.parameters():  # weights of pyengine's own, not the ones read
        param.data[...] += np.float32(0.01) * np.sign(param.data)
    model.save_pretrained(tmp_path / "saved")
    loaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    assert (loaded.lm_head.weight is loaded.shared.weight) == model.tied
    assert loaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs
    ids, mask, decoder_ids, decoder_mask = _batch(model.config.vocab_size, seed=13)
    with torch.no_grad():
        want = loaded(*_torch(ids, mask, decoder_ids, decoder_mask)).logits.numpy()
    assert _relative_error(model(ids, mask, decoder_ids, decoder_mask).numpy(), want) < 1e-4
    again = pretrained.from_pretrained(tmp_path / "saved")
    for (key, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=key)
