"""pyengine.generation against transformers' generate on the same random-weight
GPT-2s: exactly the same token ids for greedy search and beam search (its
settings), batched prompts of different lengths (left padding), an EOS that
ends some rows of a batch before others; sampling reproducible for a seed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pyengine.generation import generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_gpt2_cases import PAD, hf_gpt2, load, prompts, set_special_tokens  # noqa: E402 - needs transformers

BEAM_SETTINGS = {
    "beams3": dict(num_beams=3),
    "beams4-return2-penalty0.5": dict(num_beams=4, num_return_sequences=2, length_penalty=0.5),
    "beams3-early": dict(num_beams=3, early_stopping=True),
    "beams3-never-penalty2": dict(num_beams=3, early_stopping="never", length_penalty=2.0),
    "beams2-never-penalty-neg": dict(num_beams=2, early_stopping="never", length_penalty=-1.0),
    "beams4-ngram2": dict(num_beams=4, no_repeat_ngram_size=2, num_return_sequences=4),
}


def _transformers(model, ids, mask, **options):
    transformers.logging.set_verbosity_error()
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask),
                             do_sample=False, **options)
    return out.numpy()


def _eos_from_greedy(reference, ids, mask) -> int:
    """A token that greedy decoding produces in the middle of row 0's output
    (and not as the first new token of every row): EOS then ends rows at
    different steps."""
    set_special_tokens(reference, eos_token_id=None)
    out = _transformers(reference, ids, mask, max_new_tokens=8)
    new = out[:, ids.shape[1]:]
    for token in new[0, 2:]:
        if not (new[:, 0] == token).all() and token != PAD:
            return int(token)
    raise AssertionError(f"no usable EOS in {new}")


@pytest.fixture(scope="module", params=["3heads", "5heads"])
def models(request, tmp_path_factory):
    """(transformers model, pyengine model, ids, mask) with an EOS that occurs."""
    reference = hf_gpt2(request.param, seed=1)
    ids, mask = prompts(seed=2)
    eos = _eos_from_greedy(reference, ids, mask)
    set_special_tokens(reference, eos_token_id=eos, pad_token_id=PAD)
    return reference, load(tmp_path_factory.mktemp(request.param), reference), ids, mask, eos


@pytest.mark.parametrize("lengths", [dict(max_new_tokens=9), dict(max_length=12), dict()],
                         ids=["max_new_tokens", "max_length", "default"])
def test_greedy_equals_transformers_with_an_eos_mid_batch(models, lengths):
    reference, model, ids, mask, eos = models
    expected = _transformers(reference, ids, mask, **lengths)
    got = model.generate(ids, attention_mask=mask, **lengths)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64
    if "max_length" not in lengths:
        new = got[:, ids.shape[1]:]
        assert (new == eos).any(axis=1).any() and not (new == eos).any(axis=1).all() or len(new[0]) < 9


@pytest.mark.parametrize("setting", list(BEAM_SETTINGS))
def test_beam_search_equals_transformers(models, setting):
    reference, model, ids, mask, eos = models
    options = dict(BEAM_SETTINGS[setting], max_new_tokens=8)
    expected = _transformers(reference, ids, mask, **options)
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, **options), expected)


def test_beam_search_finishes_hypotheses_at_the_eos(models):
    reference, model, ids, mask, eos = models
    options = dict(num_beams=4, num_return_sequences=4, max_new_tokens=10)
    got = model.generate(ids, attention_mask=mask, **options)
    np.testing.assert_array_equal(got, _transformers(reference, ids, mask, **options))
    assert (got[:, ids.shape[1]:] == eos).any(), "the EOS never occurs: the test would prove nothing"


def test_the_mask_is_inferred_from_the_pad_token_as_transformers(models):
    reference, model, ids, mask, eos = models
    expected = _transformers(reference, ids, None, max_new_tokens=6)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6), expected)
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, max_new_tokens=6), expected)


def test_unpadded_single_prompts_equal_transformers(models):
    reference, model, ids, _, _ = models
    prompt = ids[:1]
    for options in (dict(max_new_tokens=7), dict(max_new_tokens=7, num_beams=3, no_repeat_ngram_size=1)):
        np.testing.assert_array_equal(generate(model, prompt, **options),
                                      _transformers(reference, prompt, None, **options))


def test_sampling_is_reproducible_for_a_seed(models):
    _, model, ids, mask, _ = models
    options = dict(do_sample=True, max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9)
    a = model.generate(ids, attention_mask=mask, seed=5, **options)
    np.testing.assert_array_equal(a, model.generate(ids, attention_mask=mask, seed=5, **options))
    runs = [model.generate(ids, attention_mask=mask, seed=s, **options) for s in (6, 7, 8)]
    assert any(not np.array_equal(a, b) for b in runs)
    np.testing.assert_array_equal(a[:, :ids.shape[1]], ids)
    repeated = model.generate(ids, attention_mask=mask, seed=5, num_return_sequences=3, **options)
    assert repeated.shape[0] == 9 and (repeated[::3, :ids.shape[1]] == ids).all()
    beams = dict(options, num_beams=3)
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, seed=1, **beams),
                                  model.generate(ids, attention_mask=mask, seed=1, **beams))


def test_top_k_one_sampling_is_greedy(models):
    _, model, ids, mask, _ = models
    np.testing.assert_array_equal(model.generate(ids, attention_mask=mask, do_sample=True, top_k=1, seed=3),
                                  model.generate(ids, attention_mask=mask))


def test_max_new_tokens_wins_over_max_length_with_a_warning(models):
    reference, model, ids, mask, eos = models
    both = dict(max_length=ids.shape[1] + 2, max_new_tokens=6)
    with pytest.warns(UserWarning, match=r"max_new_tokens \(=6\) and max_length \(=9\).*max_new_tokens takes"):
        got = model.generate(ids, attention_mask=mask, **both)
    np.testing.assert_array_equal(got, _transformers(reference, ids, mask, **both))
    np.testing.assert_array_equal(got, model.generate(ids, attention_mask=mask, max_new_tokens=6))
    assert got.shape[1] > ids.shape[1] + 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one of the two alone: no warning
        model.generate(ids, attention_mask=mask, max_new_tokens=3)
        model.generate(ids, attention_mask=mask, max_length=ids.shape[1] + 3)


def _sampled_torch(reference, ids, **options):
    torch.manual_seed(11)
    transformers.logging.set_verbosity_error()
    with torch.no_grad():
        return reference.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                  do_sample=True, max_new_tokens=12, temperature=3.0, **options).numpy()


def test_top_k_none_filters_nothing_as_in_transformers(models):
    reference, model, ids, mask, _ = models
    prompt = ids[:1]
    # transformers' meaning, which pyengine follows: top_k=None adds no top-k warper (as 0), even over the
    # model's generation config; left out, it is the model's top_k, else 50.
    assert np.array_equal(_sampled_torch(reference, prompt, top_k=None), _sampled_torch(reference, prompt, top_k=0))
    assert not np.array_equal(_sampled_torch(reference, prompt, top_k=None), _sampled_torch(reference, prompt))
    np.testing.assert_array_equal(_sampled_torch(reference, prompt), _sampled_torch(reference, prompt, top_k=50))

    def sampled(**options):
        return model.generate(prompt, do_sample=True, max_new_tokens=12, temperature=3.0, seed=4, **options)

    unfiltered, default = sampled(top_k=0), sampled(top_k=50)
    assert not np.array_equal(unfiltered, default), "top_k 0 and 50 agree: the test would prove nothing"
    np.testing.assert_array_equal(sampled(top_k=None), unfiltered)
    np.testing.assert_array_equal(sampled(), default)
    saved = getattr(model, "generation_defaults", None)
    model.generation_defaults = dict(saved or {}, top_k=3)
    try:
        np.testing.assert_array_equal(sampled(), sampled(top_k=3))
        np.testing.assert_array_equal(sampled(top_k=None), unfiltered)
    finally:
        model.generation_defaults = saved


def test_bad_options_are_clear_errors(models):
    _, model, ids, mask, _ = models
    bad = [(dict(num_beams=0), "num_beams"), (dict(num_return_sequences=2), "greedy"),
           (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
           (dict(early_stopping="sometimes"), "early_stopping"), (dict(top_p=1.5), "top_p"),
           (dict(do_sample=True, temperature=0.0), "temperature"), (dict(max_length=ids.shape[1]), "max_length"),
           (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=100), "block_size")]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            model.generate(ids, attention_mask=mask, **options)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(ids, attention_mask=mask[:2])
