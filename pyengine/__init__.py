"""pyengine: a deep-learning engine with hand-written C++ kernels.

The kernels live in the compiled module ``pyengine._C``; ``pyengine.kernels``
exposes them on numpy arrays, ``pyengine.Tensor`` adds reverse-mode autodiff,
and ``pyengine.graph`` captures a training step into a static, memory-planned
graph that replays without allocating.
"""

from __future__ import annotations

import contextlib
import operator
import os
import warnings

try:
    from pyengine import _C
except ImportError as error:  # a source tree without its compiled module
    import os as _os
    _here = _os.path.dirname(_os.path.abspath(__file__))
    raise ImportError(
        f"pyengine: the compiled module pyengine._C is missing from {_here}. This is the source "
        "tree, not an installed pyengine: build it in place with "
        "`pip install --no-build-isolation -e .`, or run from another folder so that Python "
        f"imports the installed package ({error})") from None

__version__ = "0.1.0"


def get_isa() -> str:
    """The ISA level the kernels run at: reference, baseline, avx2 or avx512."""
    return _C.get_isa()


def available_isas() -> list:
    """Every level this CPU can run, from 'reference' up to the best."""
    return list(_C.available_isas())


def set_isa(level: str) -> None:
    """Run the kernels at `level` (at most the best this CPU supports)."""
    _C.set_isa(level)


@contextlib.contextmanager
def use_isa(level: str):
    """Run the kernels at `level` inside a with-block."""
    previous = get_isa()
    set_isa(level)
    try:
        yield
    finally:
        set_isa(previous)


def set_num_threads(n: int) -> None:
    """Threads the kernels use (OpenMP), 1 to 1024. A build without OpenMP ignores it."""
    try:
        if isinstance(n, bool) or type(n).__name__ in ("bool_", "bool"):
            raise TypeError
        n = operator.index(n)  # numpy ints too; never a float or a string, silently truncated
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    if not 1 <= n <= 1024:
        raise ValueError(f"set_num_threads: n must be >= 1 and <= 1024, got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


def flushes_denormals() -> bool:
    """True where kernels treat subnormal floats as zero, in and out (x86-64:
    the FTZ and DAZ bits are set while a kernel runs, then restored)."""
    return bool(_C.flushes_denormals())


def has_openmp() -> bool:
    return bool(_C.has_openmp)


def has_cuda() -> bool:
    return bool(_C.has_cuda)


def _apply_isa_from_environment() -> None:
    # PYENGINE_ISA lowers the level for the whole process (documented in README).
    requested = os.environ.get("PYENGINE_ISA")
    if not requested:
        return
    try:
        set_isa(requested)
    except ValueError as error:
        warnings.warn(f"PYENGINE_ISA={requested!r} ignored: {error}", RuntimeWarning, stacklevel=2)


_apply_isa_from_environment()

from pyengine import functional, graph, kernels, nn, optim  # noqa: E402
from pyengine.combine import cat, chunk, concat, split, stack, tril, triu, where  # noqa: E402
from pyengine.factories import (  # noqa: E402
    arange,
    empty,
    empty_like,
    eye,
    float32,
    full,
    full_like,
    int32,
    int64,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    zeros,
    zeros_like,
)
from pyengine.graph import capture  # noqa: E402
from pyengine.io.serialization import load, save  # noqa: E402
from pyengine.pointwise import abs, clamp, clip, exp, log, relu, rsqrt, sigmoid, sqrt, square, tanh  # noqa: E402
from pyengine.random import get_rng_state, initial_seed, manual_seed, set_rng_state  # noqa: E402
from pyengine.tensor import Tensor, from_numpy, is_grad_enabled, no_grad, tensor  # noqa: E402

__all__ = [
    "Tensor", "tensor", "from_numpy", "no_grad", "is_grad_enabled", "manual_seed", "capture", "save", "load",
    "zeros", "ones", "full", "empty", "rand", "randn", "randint", "arange", "linspace", "eye",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
    "float32", "int64", "int32",
    "cat", "concat", "stack", "split", "chunk", "where", "tril", "triu",
    "abs", "clamp", "clip", "exp", "log", "relu", "rsqrt", "sigmoid", "sqrt", "square", "tanh",
    "kernels", "functional", "nn", "optim", "graph",
    "get_isa", "set_isa", "use_isa", "available_isas", "set_num_threads", "get_num_threads",
    "has_openmp", "has_cuda", "flushes_denormals", "__version__",
    "get_rng_state", "set_rng_state", "initial_seed",
]
