from pyengine import _C  # noqa: F401
