"""Data sets that ship inside installed packages (no download)."""

from pyengine.data.digits import Split, batches, load_digits

__all__ = ["Split", "load_digits", "batches"]
