"""Kernel benchmarks: pyengine against numpy, torch and numba, grouped side by side.

Run with ``pytest benchmarks/ --benchmark-only`` (see README.md).
"""

from __future__ import annotations

import pytest

from .cases import PASSES, check_against_reference, make_case, rounds

MATMUL_SIZES = (256, 512, 1024, 2048)
ROW_SHAPES = ((8192, 1024), (4096, 768))


def _shape_id(shape):
    return "x".join(map(str, shape))


def run_benchmark(benchmark, impl, threads, kernel, shape, pass_name, group):
    timed, outputs = make_case(impl, kernel, shape, pass_name)
    check_against_reference(impl, kernel, shape, pass_name, outputs)
    benchmark.group = group
    benchmark.extra_info.update(threads=threads, kernel=kernel, shape=list(shape), pass_name=pass_name)
    benchmark.pedantic(timed, rounds=rounds(impl, kernel, shape), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("size", MATMUL_SIZES)
def test_matmul(benchmark, impl, threads, size):
    shape = (size, size)
    run_benchmark(benchmark, impl, threads, "matmul", shape, "forward", f"matmul {size}x{size}")


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("kernel", ("softmax", "layer_norm"))
def test_row_kernel(benchmark, impl, threads, kernel, shape, pass_name):
    run_benchmark(benchmark, impl, threads, kernel, shape, pass_name, f"{kernel} {pass_name} {shape}")
