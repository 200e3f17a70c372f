"""Tokenisation for pretrained models, by the `tokenizers` package, as transformers' fast tokenizers do it.

`Tokenizer.from_pretrained(folder)` reads the folder's `tokenizer.json` (or, lacking one, a WordPiece
`vocab.txt`) and the special tokens, `model_max_length` and `padding_side` of `tokenizer_config.json`
and `special_tokens_map.json`. The padding and truncation settings stored inside tokenizer.json are
dropped, as transformers drops them: each call says its own, with transformers' meaning:

- `padding=True` (or "longest") pads to the longest text of the batch, "max_length" to `max_length`,
  False pads nothing (and the texts must then have one length, since the result is one array);
- `truncation=True` cuts each text to `max_length`, or to `model_max_length` when that is None, special
  tokens included.

Calling the tokenizer returns int64 numpy arrays (B, T): `input_ids`, `attention_mask`, and
`token_type_ids` for the models that take them (BERT's family), as `return_tensors="np"` does.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["Tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers' tokenizer classes whose models read token_type_ids (used when the config does not list
# model_input_names itself).
_TOKEN_TYPE_CLASSES = ("BertTokenizer", "ElectraTokenizer", "ConvBertTokenizer", "SqueezeBertTokenizer")
_NO_LIMIT = int(1e20)  # transformers writes a huge model_max_length for "no limit"


class Tokenizer:
    """A `tokenizers.Tokenizer` with the special tokens and conventions of a Hugging Face folder."""

    def __init__(self, backend, settings: dict | None = None):
        settings = settings or {}
        self.backend = backend
        backend.no_padding()
        backend.no_truncation()
        for name in SPECIAL_TOKENS:
            setattr(self, name, _token_text(settings.get(name)))
        max_length = settings.get("model_max_length")
        self.model_max_length = int(max_length) if isinstance(max_length, (int, float)) else _NO_LIMIT
        self.padding_side = settings.get("padding_side", "right")
        self.truncation_side = settings.get("truncation_side", "right")
        names = settings.get("model_input_names")
        if names is None:
            wants_types = str(settings.get("tokenizer_class", "")).startswith(_TOKEN_TYPE_CLASSES)
            names = ["input_ids", "token_type_ids", "attention_mask"]
            if not wants_types:
                names.remove("token_type_ids")
        self.model_input_names = list(names)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        folder = os.fspath(path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Tokenizer.from_pretrained: no such folder: {folder}")
        settings = {**_read_json(folder, "special_tokens_map.json"), **_read_json(folder, "tokenizer_config.json")}
        return cls(_backend(folder, settings), settings)

    # ------------------------------------------------------------- ids of the special tokens
    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (transformers' len(tokenizer))."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def check_vocab(self, model_vocab_size: int) -> None:
        """ValueError when this tokenizer produces ids the model's embedding does not have."""
        if self.vocab_size > model_vocab_size:
            raise ValueError(f"Tokenizer: the tokenizer has {self.vocab_size} tokens, more than the model's "
                             f"vocabulary of {model_vocab_size}: they do not belong together")

    # ------------------------------------------------------------- encoding
    def __call__(self, texts, padding=True, truncation: bool = False, max_length: int | None = None,
                 padding_side: str | None = None, add_special_tokens: bool = True) -> dict[str, np.ndarray]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(text, str) for text in batch):
            raise TypeError("Tokenizer: texts must be a str or a list of str")
        encodings = self._encode(batch, truncation, max_length, add_special_tokens)
        rows = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings]}
        length = self._padded_length(rows["input_ids"], padding, max_length)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"Tokenizer: padding_side must be 'left' or 'right', got {side!r}")
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        if any(len(row) < length for row in rows["input_ids"]) and fill["input_ids"] is None:
            raise ValueError("Tokenizer: asked to pad, but the tokenizer has no padding token "
                             "(set tokenizer.pad_token, e.g. to its eos_token)")
        return {name: _padded(rows[name], length, fill[name], side)
                for name in self.model_input_names if name in rows}

    def _encode(self, batch: list, truncation: bool, max_length, add_special_tokens: bool) -> list:
        if truncation:
            limit = self.model_max_length if max_length is None else max_length
            if limit < _NO_LIMIT:
                self.backend.enable_truncation(int(limit), direction=self.truncation_side)
        try:
            return self.backend.encode_batch(batch, add_special_tokens=add_special_tokens)
        finally:
            self.backend.no_truncation()

    def _padded_length(self, ids: list, padding, max_length) -> int:
        longest = max((len(row) for row in ids), default=0)
        if padding is True or padding == "longest":
            return longest
        if padding == "max_length":
            if max_length is None:
                raise ValueError("Tokenizer: padding='max_length' needs max_length")
            return max(max_length, longest)
        if padding is False or padding == "do_not_pad":
            if len({len(row) for row in ids}) > 1:
                raise ValueError("Tokenizer: the texts have different lengths; pass padding=True to return "
                                 "one array")
            return longest
        raise ValueError(f"Tokenizer: padding must be True, False, 'longest' or 'max_length', got {padding!r}")

    # ------------------------------------------------------------- decoding
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                   skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in rows]


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Tokenizer: {path} is not valid JSON ({error})") from None
    return data if isinstance(data, dict) else {}


def _backend(folder: str, settings: dict):
    from tokenizers import Tokenizer as Backend

    path = os.path.join(folder, TOKENIZER_FILE)
    if os.path.isfile(path):
        try:
            return Backend.from_file(path)
        except Exception as error:  # the tokenizers package raises its own Exception subclass
            raise ValueError(f"Tokenizer: {path} is not a tokenizer file ({error})") from None
    vocab = os.path.join(folder, VOCAB_FILE)
    if os.path.isfile(vocab):
        from tokenizers.implementations import BertWordPieceTokenizer

        wordpiece = BertWordPieceTokenizer(vocab, lowercase=bool(settings.get("do_lower_case", True)))
        return wordpiece._tokenizer
    raise FileNotFoundError(f"Tokenizer.from_pretrained: {folder} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}")


def _padded(rows: list, length: int, fill: int, side: str) -> np.ndarray:
    out = np.full((len(rows), length), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, :len(row)] = row
        elif row:
            out[i, length - len(row):] = row
    return out
