"""Fixtures shared by the kernel tests.

tests/ goes first on sys.path (``from helpers import ...`` under any import mode), and the
repository root, which ``python -m pytest`` puts first as the current directory, behind the
installed packages: after a non-editable ``pip install .`` the tests import the installed
pyengine, not the source folder (which has no compiled ``_C``). benchmarks/conftest.py does
the same for benchmarks/.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _where(entry: str) -> str:
    return os.path.abspath(entry or os.curdir)


sys.path[:] = [_HERE, *(p for p in sys.path if _where(p) not in (_HERE, _ROOT)),
               *([_ROOT] if any(_where(p) == _ROOT for p in sys.path) else [])]

import pytest  # noqa: E402

import pyengine  # noqa: E402


@pytest.fixture(params=pyengine.available_isas())
def isa(request):
    """Runs the test once per ISA level this CPU supports, restoring the level afterwards."""
    with pyengine.use_isa(request.param):
        assert pyengine.get_isa() == request.param
        yield request.param


@pytest.fixture
def restore_threads():
    """Gives the test a free hand with set_num_threads and restores the count afterwards."""
    before = pyengine.get_num_threads()
    yield before
    pyengine.set_num_threads(before)


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=30,
                     help="cases drawn per kernel by tests/reliability/test_fuzz_ops.py (default 30)")
