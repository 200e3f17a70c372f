"""Character-level text corpora: Python's own standard-library source (no
download) or any text file, encoded with a character vocabulary and sampled
as (input, target) windows for language-model training.

The standard-library corpus is every ``.py`` file under the running
interpreter's stdlib folder (``sysconfig.get_paths()["stdlib"]``), with
``site-packages`` and ``dist-packages`` excluded, read in sorted path order as
UTF-8 (undecodable bytes replaced) and joined by newlines. The split is
deterministic: the first ``1 - val_fraction`` of the characters train, the
rest validate, so the same interpreter always gives the same two halves.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

import numpy as np

__all__ = ["CharVocab", "TextCorpus", "stdlib_files", "load_text_corpus", "WindowSampler"]

_EXCLUDED_FOLDERS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: str | None = None) -> list:
    """The .py files under the interpreter's standard-library folder (or
    `root`), sorted, with installed third-party packages excluded."""
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _EXCLUDED_FOLDERS)
        paths.extend(os.path.join(folder, n) for n in names if n.endswith(".py"))
    return sorted(paths)


class CharVocab:
    """A character vocabulary: ids 0..n-1 for the sorted distinct characters."""

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(set(text))

    def encode(self, text: str) -> np.ndarray:
        """int64 ids of `text`; ValueError naming the first characters that
        are not in the vocabulary."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, len(self._codes) - 1) if len(self._codes) else ids
        unknown = (self._codes[ids] != codes) if len(self._codes) else np.ones(codes.shape, bool)
        if unknown.any():
            missing = sorted({chr(c) for c in codes[unknown][:1000]})
            shown = ", ".join(repr(c) for c in missing[:10])
            raise ValueError(f"text has {int(unknown.sum())} characters outside the vocabulary "
                             f"of {len(self)}: {shown}{' ...' if len(missing) > 10 else ''}")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"token ids must be in [0, {len(self)}), got {ids.min()}..{ids.max()}")
        return "".join(self.chars[i] for i in ids.tolist())


@dataclass
class TextCorpus:
    """An encoded corpus: its vocabulary and the train and validation ids."""

    vocab: CharVocab
    train: np.ndarray  # int64 ids
    val: np.ndarray
    source: str

    @property
    def characters(self) -> int:
        return len(self.train) + len(self.val)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def load_text_corpus(path: str | None = None, val_fraction: float = 0.1) -> TextCorpus:
    """The stdlib corpus (path None) or the text file `path`, split into
    train and validation. FileNotFoundError / ValueError with one clear line
    for a missing or too small file."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if path is None:
        files = stdlib_files()
        if not files:
            raise FileNotFoundError(f"no .py files under {sysconfig.get_paths()['stdlib']}")
        text = "\n".join(_read_text(p) for p in files)
        source = f"Python {sysconfig.get_python_version()} standard library ({len(files)} files)"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such text file: {path}")
        text = _read_text(path)
        source = os.fspath(path)
    if len(text) < 100:
        raise ValueError(f"{source}: {len(text)} characters is too little text to train on")
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1.0 - val_fraction))
    return TextCorpus(vocab, ids[:cut], ids[cut:], source)


class WindowSampler:
    """Random (input, target) windows of `block_size` ids, targets shifted by
    one, from a seeded numpy generator. Its state (the generator's) is what a
    checkpoint saves as the data position, so a resumed run draws the same
    batches as an uninterrupted one."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int):
        if len(ids) <= block_size + 1:
            raise ValueError(f"{len(ids)} tokens cannot fill a window of block_size {block_size}")
        self.ids, self.block_size, self.batch_size = ids, int(block_size), int(batch_size)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._offsets = np.arange(self.block_size + 1)

    def next(self) -> tuple:
        starts = self.rng.integers(0, len(self.ids) - self.block_size - 1, size=self.batch_size)
        windows = self.ids[starts[:, None] + self._offsets]
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
