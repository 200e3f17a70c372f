"""Models built from pyengine.nn."""

from pyengine.models.cnn import CNN
from pyengine.models.gpt import GPT, GPTConfig
from pyengine.models.lenet import LeNet5
from pyengine.models.mlp import MLP
from pyengine.models.pretrained import from_pretrained
from pyengine.models.resnet import BasicBlock, ResNet
from pyengine.models.sentence import SentenceEncoder

__all__ = ["CNN", "MLP", "LeNet5", "ResNet", "BasicBlock", "GPT", "GPTConfig", "from_pretrained",
           "SentenceEncoder"]
