"""Benchmark options and fixtures: ``--threads N`` and the ``impl`` parameter.

Every implementation runs with the same thread count: pyengine (OpenMP),
torch (intra-op pool), numba (parallel loops) and numpy's BLAS (through
threadpoolctl, kept active for the whole session).
"""

from __future__ import annotations

import importlib
import os

import pytest

import pyengine

from .impls import IMPLS

OPTIONAL_IMPLS = ("torch", "numba")


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=os.cpu_count(),
                     help="threads for every implementation (default: os.cpu_count())")


def pytest_report_header(config):
    return f"benchmark threads: {config.getoption('--threads')}"


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


@pytest.fixture(params=IMPLS)
def impl(request):
    if request.param in OPTIONAL_IMPLS:
        pytest.importorskip(request.param)
    return request.param
