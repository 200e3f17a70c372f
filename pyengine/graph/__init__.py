"""Static graphs: capture once, replay without allocating."""

from pyengine.graph.executor import CompiledGraph, NonFiniteError, capture

__all__ = ["capture", "CompiledGraph", "NonFiniteError"]
