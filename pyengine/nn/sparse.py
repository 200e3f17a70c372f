"""Embedding: a lookup table of learned vectors (torch.nn.Embedding)."""

from __future__ import annotations

from pyengine import functional as F
from pyengine.nn.module import Module, Parameter
from pyengine.random import default_generator


class Embedding(Module):
    """A table of `num_embeddings` vectors of size `embedding_dim`, as
    torch.nn.Embedding: ``weight`` is (num_embeddings, embedding_dim),
    initialised N(0, 1) from `generator` (or pyengine's default generator, see
    pyengine.manual_seed); forward takes integer indices of any shape (*) and
    returns (*, embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, generator=None):
        super().__init__()
        rng = generator or default_generator()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype("float32"))

    def forward(self, input):
        return F.embedding(input, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"
