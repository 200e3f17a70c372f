"""A folder's generation_config.json as the defaults of generate: folders written by transformers with
a GenerationConfig of their own (beam settings, lengths, special tokens), pyengine's generate with no
arguments against transformers' generate with none, and explicit arguments winning on both sides;
a setting pyengine does not implement is a clear error; a folder without the file keeps the defaults."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pyengine.generation import config as generation_config
from pyengine.models import pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_gpt2_cases import PAD, hf_gpt2, prompts  # noqa: E402 - needs transformers
from t5_cases import write_t5  # noqa: E402

T5_SETTINGS = {
    "beams-penalty-early": dict(num_beams=3, max_length=9, length_penalty=0.5, early_stopping=True,
                                num_return_sequences=2),
    "beams-ngram-new-tokens": dict(num_beams=4, max_new_tokens=7, no_repeat_ngram_size=2, early_stopping="never"),
    "greedy-start-and-eos": dict(max_new_tokens=10, decoder_start_token_id=3, eos_token_id=5, pad_token_id=0),
}


def _t5_prompts(vocab: int):
    rng = np.random.default_rng(8)
    ids, mask = rng.integers(2, vocab, (3, 9)), np.ones((3, 9), np.int64)
    ids[1, 6:], mask[1, 6:] = 0, 0
    return ids, mask


def _write_t5(folder, settings: dict):
    """A T5 folder whose generation_config.json transformers wrote from GenerationConfig(**settings) (the
    special tokens the model's config.json holds, unless settings give their own)."""
    write_t5(folder, "relu-square", seed=3)
    tokens = dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    transformers.GenerationConfig(**{**tokens, **settings}).save_pretrained(folder)
    return transformers.T5ForConditionalGeneration.from_pretrained(folder).eval(), pretrained.from_pretrained(folder)


def _transformers(reference, ids, mask, **options) -> np.ndarray:
    transformers.logging.set_verbosity_error()
    with torch.no_grad():
        return reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **options).numpy()


@pytest.mark.parametrize("name", list(T5_SETTINGS))
def test_t5_generate_takes_the_folders_settings(tmp_path, name):
    reference, model = _write_t5(tmp_path, T5_SETTINGS[name])
    ids, mask = _t5_prompts(model.config.vocab_size)
    want = _transformers(reference, ids, mask)
    got = model.generate(ids, attention_mask=mask)
    np.testing.assert_array_equal(got, want)
    settings = T5_SETTINGS[name]
    assert got.shape[0] == 3 * settings.get("num_return_sequences", 1)
    if "decoder_start_token_id" in settings:
        assert (got[:, 0] == 3).all() and model.generation_config["eos_token_id"] == 5
    else:
        assert model.generation_defaults["num_beams"] == settings["num_beams"]


@pytest.mark.parametrize("explicit", [dict(num_beams=2, max_new_tokens=5), dict(max_length=6),
                                      dict(num_beams=1, num_return_sequences=1, early_stopping=False)],
                         ids=["beams-new-tokens", "max-length", "greedy"])
def test_explicit_arguments_win_over_the_folder(tmp_path, explicit):
    reference, model = _write_t5(tmp_path, T5_SETTINGS["beams-penalty-early"])
    ids, mask = _t5_prompts(model.config.vocab_size)
    got = model.generate(ids, attention_mask=mask, **explicit)
    np.testing.assert_array_equal(got, _transformers(reference, ids, mask, **explicit))
    assert got.shape[0] == 3 * (1 if explicit.get("num_beams") == 1 else 2)


def test_the_folders_max_new_tokens_wins_over_an_explicit_max_length(tmp_path):
    reference, model = _write_t5(tmp_path, T5_SETTINGS["beams-ngram-new-tokens"])  # max_new_tokens=7
    ids, mask = _t5_prompts(model.config.vocab_size)
    with pytest.warns(UserWarning, match=r"max_new_tokens \(=7\) and max_length \(=4\)"):
        got = model.generate(ids, attention_mask=mask, max_length=4)
    np.testing.assert_array_equal(got, _transformers(reference, ids, mask, max_length=4))
    np.testing.assert_array_equal(got, model.generate(ids, attention_mask=mask))
    assert got.shape[1] > 4


def test_gpt2_generate_takes_the_folders_settings(tmp_path):
    reference = hf_gpt2("3heads", seed=1)
    reference.save_pretrained(tmp_path)
    transformers.GenerationConfig(num_beams=3, max_new_tokens=6, length_penalty=2.0, num_return_sequences=2,
                                  eos_token_id=7, pad_token_id=PAD, bos_token_id=1).save_pretrained(tmp_path)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    model = pretrained.from_pretrained(tmp_path)
    ids, mask = prompts(seed=2)
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask), _transformers(reference, ids, mask))
    assert model.generation_config["eos_token_id"] == 7


def test_a_setting_pyengine_does_not_implement_is_named(tmp_path):
    reference, model = _write_t5(tmp_path, dict(repetition_penalty=1.3, min_length=4, max_new_tokens=4))
    ids, mask = _t5_prompts(model.config.vocab_size)
    with pytest.raises(ValueError, match="min_length=4, repetition_penalty=1.3"):
        model.generate(ids, attention_mask=mask)
    model.generation_defaults.update(repetition_penalty=1.0, min_length=0)  # transformers' defaults: allowed
    reference.generation_config.repetition_penalty, reference.generation_config.min_length = 1.0, 0
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask), _transformers(reference, ids, mask))


def test_a_folder_without_the_file_keeps_the_defaults(tmp_path):
    write_t5(tmp_path, "relu-square", seed=3)
    os.remove(tmp_path / "generation_config.json")
    assert pretrained.read_generation_config(tmp_path) is None
    model = pretrained.from_pretrained(tmp_path)
    assert not getattr(model, "generation_defaults", None)
    ids, mask = _t5_prompts(model.config.vocab_size)
    assert model.generate(ids, attention_mask=mask).shape == (3, 21)  # 20 new tokens after the start token


def test_split_keeps_tokens_and_settings_and_drops_bookkeeping():
    tokens, settings = generation_config.split_generation_config(
        {"eos_token_id": [1, 2], "num_beams": 4, "transformers_version": "5.0", "_from_model_config": True,
         "use_cache": True, "min_length": 3})
    assert tokens == {"eos_token_id": [1, 2]} and settings == {"num_beams": 4, "min_length": 3}
    with pytest.raises(ValueError, match="JSON object"):
        generation_config.split_generation_config([1])
