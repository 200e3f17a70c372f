"""Static graphs: capture once, replay without allocating."""

from pyengine.graph.executor import CompiledGraph, capture

__all__ = ["capture", "CompiledGraph"]
