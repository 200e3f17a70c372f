"""Checkpoints in the safetensors format (readable by PyTorch and Hugging Face)."""

from pyengine.io.safetensors import load, load_into, save

__all__ = ["save", "load", "load_into"]
