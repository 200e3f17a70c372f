"""ISA level selection (set_isa, use_isa, PYENGINE_ISA) and thread-count independence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyengine
from pyengine import kernels as K

LEVELS = ["reference", "baseline", "avx2", "avx512"]


def test_available_isas_are_ordered_from_reference():
    isas = pyengine.available_isas()
    assert isas[:2] == ["reference", "baseline"]
    assert isas == LEVELS[:len(isas)]  # a prefix of the ordered levels, without gaps
    assert pyengine.get_isa() in isas


def test_set_isa_unknown_name_raises():
    before = pyengine.get_isa()
    for name in ["sse9", "", "AVX2", "neon"]:
        with pytest.raises(ValueError, match="set_isa") as info:
            pyengine.set_isa(name)
        assert repr(name) in str(info.value) or f"'{name}'" in str(info.value)
    assert pyengine.get_isa() == before


def test_set_isa_above_cpu_raises():
    isas = pyengine.available_isas()
    if len(isas) == len(LEVELS):
        pytest.skip("this CPU runs every level")
    before = pyengine.get_isa()
    with pytest.raises(ValueError, match="not supported"):
        pyengine.set_isa(LEVELS[len(isas)])
    assert pyengine.get_isa() == before


def test_use_isa_restores_level():
    before = pyengine.get_isa()
    for level in pyengine.available_isas():
        with pyengine.use_isa(level):
            assert pyengine.get_isa() == level
            with pyengine.use_isa("reference"):
                assert pyengine.get_isa() == "reference"
            assert pyengine.get_isa() == level
        assert pyengine.get_isa() == before


def test_use_isa_restores_level_after_an_exception():
    before = pyengine.get_isa()
    with pytest.raises(RuntimeError, match="boom"):
        with pyengine.use_isa("baseline"):
            assert pyengine.get_isa() == "baseline"
            raise RuntimeError("boom")
    assert pyengine.get_isa() == before


def test_levels_agree_with_reference():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((37, 53), np.float32), rng.standard_normal((53, 29), np.float32)
    x = rng.standard_normal((5, 101), np.float32)
    with pyengine.use_isa("reference"):
        ref_c, ref_y = K.matmul(a, b), K.softmax(x)
    for level in pyengine.available_isas():
        with pyengine.use_isa(level):
            np.testing.assert_allclose(K.matmul(a, b), ref_c, rtol=1e-5, atol=1e-4, err_msg=level)
            np.testing.assert_allclose(K.softmax(x), ref_y, rtol=1e-5, atol=1e-7, err_msg=level)


_CHILD = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyengine
print(json.dumps({"isa": pyengine.get_isa(), "best": pyengine._C.best_isa(),
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def _child_isa(value):
    env = {k: v for k, v in os.environ.items() if k != "PYENGINE_ISA"}
    if value is not None:
        env["PYENGINE_ISA"] = value
    # cwd: this folder, where `-c` cannot pick up the repository's source folder instead of the install
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_environment_selects_level():
    result = _child_isa("baseline")
    assert result["isa"] == "baseline"
    assert result["warnings"] == []
    assert _child_isa("reference")["isa"] == "reference"


def test_environment_unset_uses_best_level():
    result = _child_isa(None)
    assert result["isa"] == result["best"] == pyengine.available_isas()[-1]
    assert result["warnings"] == []


def test_environment_unknown_level_warns_and_falls_back():
    result = _child_isa("sse9")
    assert result["isa"] == result["best"]
    assert len(result["warnings"]) == 1
    warning = result["warnings"][0]
    assert warning.startswith("RuntimeWarning") and "PYENGINE_ISA" in warning and "sse9" in warning


def test_environment_unsupported_level_warns_and_falls_back():
    isas = pyengine.available_isas()
    if len(isas) == len(LEVELS):
        pytest.skip("this CPU runs every level")
    result = _child_isa(LEVELS[len(isas)])
    assert result["isa"] == result["best"]
    assert len(result["warnings"]) == 1 and "not supported" in result["warnings"][0]


# ---------------------------------------------------------------- threads


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_rejects_non_positive(n):
    before = pyengine.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        pyengine.set_num_threads(n)
    assert pyengine.get_num_threads() == before


def test_set_num_threads_takes_effect(restore_threads):
    if not pyengine.has_openmp():
        pytest.skip("built without OpenMP")
    for n in (1, 2, 3):
        pyengine.set_num_threads(n)
        assert pyengine.get_num_threads() == n


def _threaded_ops(rng):
    # Each problem is above PYENGINE_PARALLEL_MIN_WORK, so more threads really split it.
    a, b = rng.standard_normal((150, 211), np.float32), rng.standard_normal((211, 97), np.float32)
    g = rng.standard_normal((150, 97), np.float32)
    x = rng.standard_normal((64, 769), np.float32) * 5
    gy = rng.standard_normal((64, 769), np.float32)
    w, bias = rng.standard_normal(769, np.float32), rng.standard_normal(769, np.float32)

    def run():
        y = K.softmax(x)
        ln, mean, rstd = K.layer_norm(x, w, bias)
        return [K.matmul(a, b, bias[:97]), *K.matmul_backward(g, a, b, needs_bias=True)[:3], y,
                K.softmax_backward(gy, y), ln, *K.layer_norm_backward(gy, x, w, mean, rstd),
                K.sum(x, 0), np.asarray(K.cross_entropy(x, np.arange(64) * 11))]
    return run


@pytest.mark.parametrize("isa", pyengine.available_isas())
def test_results_independent_of_thread_count(isa, restore_threads):
    run = _threaded_ops(np.random.default_rng(3))
    with pyengine.use_isa(isa):
        pyengine.set_num_threads(1)
        one = run()
        pyengine.set_num_threads(2)
        two = run()
    for i, (r1, r2) in enumerate(zip(one, two, strict=True)):
        np.testing.assert_allclose(r2, r1, rtol=1e-5, atol=1e-4, err_msg=f"{isa} result {i}")
