"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import os
import sys

import pytest

import pyengine

sys.path.insert(0, os.path.dirname(__file__))  # `from helpers import ...` under any import mode


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
