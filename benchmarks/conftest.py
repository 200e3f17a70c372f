"""Benchmark options and fixtures: ``--threads N``, ``--max-rounds N`` and ``threads``.

Every implementation runs with the same thread count: pyengine (OpenMP),
torch (intra-op pool), numba (parallel loops) and numpy's BLAS (through
threadpoolctl, kept active for the whole session).

benchmarks/ is not a package: its modules import each other by plain name (``import base``)
from this folder, which is put first on sys.path here, and ``import pyengine`` finds the
installed package, never the source folder of the repository (which has no compiled ``_C``
after a non-editable install). See README.md, "Imports".
"""

from __future__ import annotations

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _import_from_here():
    """This folder first on sys.path; the repository root (which ``python -m pytest`` puts
    first as the current directory) moved behind the installed packages."""
    def where(entry):
        return os.path.abspath(entry or os.curdir)

    rest = [p for p in sys.path if where(p) not in (_HERE, _ROOT)]
    root = [_ROOT] if any(where(p) == _ROOT for p in sys.path) else []
    sys.path[:] = [_HERE, *rest, *root]


_import_from_here()

import pytest  # noqa: E402

import pyengine  # noqa: E402

import base  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=os.cpu_count(),
                     help="threads for every implementation (default: os.cpu_count())")
    parser.addoption("--max-rounds", type=int, default=None,
                     help="cap every benchmark's timed rounds (quick smoke runs)")


def pytest_configure(config):
    base.MAX_ROUNDS = config.getoption("--max-rounds")


def pytest_report_header(config):
    return (f"benchmark threads: {config.getoption('--threads')}, pyengine from "
            f"{os.path.dirname(pyengine.__file__)} (ISA {pyengine.get_isa()})")


def _optional_module(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _set_threads(n):
    # numba's first set_num_threads starts its OpenMP layer and resets the default
    # of the libgomp it shares with pyengine; pyengine keeps its own count, but is
    # set last anyway so the order never matters.
    numba = _optional_module("numba")
    if numba is not None:
        # numba's OpenMP threading layer loads the system libgomp, and torch, imported after it,
        # then binds to that one (the same soname) instead of its own: PyTorch's GPT "tiny" step
        # took 1556 ms against 390 in a process without it (2 threads). Its own thread pool
        # ("workqueue") leaves torch alone (375 ms). Set before numba starts any layer.
        numba.config.THREADING_LAYER = "workqueue"
        if n > numba.config.NUMBA_NUM_THREADS:
            raise pytest.UsageError(f"--threads {n} exceeds NUMBA_NUM_THREADS="
                                    f"{numba.config.NUMBA_NUM_THREADS}; raise that variable")
        numba.set_num_threads(n)
    torch = _optional_module("torch")
    if torch is not None:
        torch.set_num_threads(n)
    pyengine.set_num_threads(n)


@pytest.fixture(scope="session")
def session_threads(request):
    """Apply --threads to every implementation for the whole session."""
    from threadpoolctl import threadpool_limits

    n = request.config.getoption("--threads")
    if n < 1:
        raise pytest.UsageError(f"--threads must be at least 1, got {n}")
    with threadpool_limits(limits=n, user_api="blas"):
        _set_threads(n)
        yield n


@pytest.fixture
def threads(session_threads):
    """The thread count, checked before each benchmark (another library may have changed it)."""
    assert pyengine.get_num_threads() == session_threads, (
        f"pyengine runs {pyengine.get_num_threads()} threads, not --threads {session_threads}")
    return session_threads
