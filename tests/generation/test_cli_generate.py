"""`pyengine generate --model PATH`: a Hugging Face folder (a random-weight
GPT-2 and a byte-level BPE tokenizer trained here) gives the text of
transformers' generate and decode; errors are one line."""

from __future__ import annotations

import pytest

from pyengine.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_gpt2_cases import hf_gpt2  # noqa: E402 - needs transformers

EOS = "<|endoftext|>"
PROMPTS = ["the quick brown", "hello"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("gpt2")
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 10],
                                vocab_size=300, special_tokens=[EOS])
    trainer.save(str(folder / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=EOS,
                                                eos_token=EOS)
    fast.save_pretrained(folder)
    eos = fast.convert_tokens_to_ids(EOS)
    model = hf_gpt2("3heads", seed=2, vocab_size=300, eos_token_id=eos, bos_token_id=eos, pad_token_id=None)
    model.save_pretrained(folder)
    return folder


def _expected(folder, **options):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    transformers.logging.set_verbosity_error()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, pad_token_id=tokenizer.pad_token_id, **options)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("flags, options", [(["--max-new-tokens", "6"], dict(max_new_tokens=6)),
                                            (["--max-length", "12", "--num-beams", "3", "--early-stopping", "true"],
                                             dict(max_length=12, num_beams=3, early_stopping=True))],
                         ids=["greedy", "beams"])
def test_generate_model_prints_transformers_text(folder, capsys, flags, options):
    prompts = [arg for text in PROMPTS for arg in ("--prompt", text)]
    assert main(["generate", "--model", str(folder), *prompts, *flags]) == 0
    assert capsys.readouterr().out.splitlines() == _expected(folder, **options)


def test_options_not_given_are_the_folders_generation_config(folder, tmp_path, capsys):
    import json
    import shutil

    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    settings = json.loads((tmp_path / "generation_config.json").read_text())
    settings.update(num_beams=3, max_new_tokens=5, length_penalty=0.5, early_stopping=True)
    (tmp_path / "generation_config.json").write_text(json.dumps(settings))
    prompts = [arg for text in PROMPTS for arg in ("--prompt", text)]
    assert main(["generate", "--model", str(tmp_path), *prompts]) == 0
    assert capsys.readouterr().out.splitlines() == _expected(tmp_path)
    assert main(["generate", "--model", str(tmp_path), *prompts, "--num-beams", "1", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == _expected(tmp_path, num_beams=1, max_new_tokens=3)


def test_generate_model_errors_are_one_line(folder, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "absent")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pyengine generate: ") and error.count("\n") == 1
    assert main(["generate", "--model", str(folder), "--num-beams", "0"]) == 2
    assert "num_beams" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(folder), "--early-stopping", "sometimes"])


def test_a_published_char_gpt_generates_the_same_text_in_transformers(tmp_path, capsys):
    import numpy as np

    import pyengine as pe
    from pyengine.data.text import CharVocab
    from pyengine.models import GPT, GPTConfig

    vocab = CharVocab("def return(x):\n    pass é")
    pe.manual_seed(1)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=len(vocab)))
    for _, parameter in model.named_parameters():
        parameter.data[...] += np.random.default_rng(0).normal(0, 0.5, parameter.shape)
    model.save_pretrained(tmp_path, vocab=vocab)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n  é"
    assert tokenizer(text)["input_ids"] == vocab.encode(text).tolist()
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = reference.generate(torch.from_numpy(vocab.encode(text)[None]), max_new_tokens=8, do_sample=False)
    assert main(["generate", "--model", str(tmp_path), "--prompt", text, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(out[0]) + "\n" == vocab.decode(out[0]) + "\n"


T5_PROMPTS = ["summarize: the quick brown fox", "translate: hello world, the lazy dog jumps"]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A random-weight T5 (written by transformers) with a unigram tokenizer trained here: T5's special
    tokens (<pad> 0, </s> 1, <unk> 2) and its template (the EOS after each input)."""
    from t5_cases import write_t5
    from tokenizers import SentencePieceUnigramTokenizer, processors

    folder = tmp_path_factory.mktemp("t5")
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 10,
                                 "summarize: translate: , " * 5], vocab_size=60,
                                special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    trainer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    trainer.save(str(folder / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")
    assert [fast.convert_tokens_to_ids(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    write_t5(folder, "gated-untied", seed=7, vocab_size=len(fast) + 3)
    fast.save_pretrained(folder)
    return folder


def _t5_expected(folder, **options):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    batch = tokenizer(T5_PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any() and (batch["input_ids"][:, -1] != 1).any()  # padded on the right
    transformers.logging.set_verbosity_error()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, **options)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("flags, options", [(["--max-new-tokens", "7"], dict(max_new_tokens=7)),
                                            (["--max-length", "9", "--num-beams", "3", "--length-penalty", "0.5",
                                              "--num-return-sequences", "2"],
                                             dict(max_length=9, num_beams=3, length_penalty=0.5,
                                                  num_return_sequences=2))],
                         ids=["greedy", "beams"])
def test_generate_model_prints_transformers_text_for_a_t5(t5_folder, capsys, flags, options):
    prompts = [arg for text in T5_PROMPTS for arg in ("--prompt", text)]
    assert main(["generate", "--model", str(t5_folder), *prompts, *flags]) == 0
    expected = _t5_expected(t5_folder, **options)
    assert capsys.readouterr().out.splitlines() == expected
    assert len(expected) == len(T5_PROMPTS) * options.get("num_return_sequences", 1)
    assert len({text for text in expected if text.strip()}) > 1, "the outputs are alike: the test would prove little"
