"""Models built from pyengine.nn."""

from pyengine.models.cnn import CNN
from pyengine.models.gpt import GPT, GPTConfig
from pyengine.models.mlp import MLP

__all__ = ["CNN", "MLP", "GPT", "GPTConfig"]
