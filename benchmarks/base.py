"""The benchmark base: what every benchmark file in benchmarks/ shares.

A benchmark row is a case, (impl, kernel, shape, pass), timed with pytest-benchmark. This
module holds everything about a row that is not the kernel's own code:

- ``Case``: one benchmark group (a kernel, its pass, its shapes, its group name, its round
  counts, its flops); the ``impl`` parameter makes its rows;
- ``kernel(name, inputs=..., ops=...)``: registers a benchmarked kernel, and its
  ``@k.impl("numpy")`` decorator registers one implementation's builder, so a test runs
  any (impl, kernel) through one table instead of an if-chain;
- inputs: random arrays made once per (kernel, shape, spec), shared read-only by every
  implementation; the arrays a kernel updates in place (its ``inout`` arguments) are copied
  per case;
- output buffers: zeroed per case (pyengine's backward accumulates into its gradients), their
  names and shapes inferred from the pyengine declarations the kernel names (``ops``,
  entries of ``pyengine.registry.ops``): each written argument ``y`` of a forward op is a
  buffer ``y``, each gradient ``dx`` of a backward op a buffer ``grad_x`` (the names
  ``pyengine.kernels``' wrappers give them);
- the correctness check: before timing, every written buffer of a peer must match pyengine's
  on the same inputs, under one tolerance rule (``RTOL``, relative, and ``RTOL`` times the
  largest magnitude, absolute);
- round counts (``Case.rounds``, per-impl overrides, ``rounds_by_flops`` and the
  ``--max-rounds`` cap), the GFLOP/s record (``extra_info["flops"]`` and ``["gflops"]``,
  which compare.py tabulates) and the FMA probe the GFLOP/s figures are read against;
- ``parametrize(cases)`` and ``run(benchmark, threads, case, impl)``: what a benchmark test
  is made of;
- ``training_memory_mib`` and ``report_training_memory``: the memory a training step takes,
  measured in a child process (the training-step benchmarks).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import pyengine
import pyengine.kernels as K
from pyengine import registry

IMPLS = ("pyengine", "numpy", "torch", "numba")
# impl -> the module it needs, skipped without
REQUIRES = {"torch": "torch", "torch_channels_last": "torch", "numba": "numba"}
REFERENCE = "pyengine"  # every peer's outputs are checked against its
RTOL = 1e-3  # loose: the check only guards against timing a wrong kernel
BACKWARD_PASSES = ("backward", "forward+backward")
PASSES = ("forward",) + BACKWARD_PASSES  # "step" (or any other name) times the forward only
MAX_ROUNDS = None  # --max-rounds N (conftest): cap every case's timed rounds, for smoke runs

# Declared argument roles that get a buffer of their own: the outputs and the gradients.
# ``inout`` arguments (sgd_update's param) are inputs copied per case; optional outputs
# (matmul's preact) are not asked for.
_BUFFER_ROLES = ("output", "grad", "optional_grad")
_STATE_ROLES = ("inout", "optional_inout")


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmark group; each implementation is a row of it (the ``impl`` parameter)."""

    kernel: str        # a registered kernel's name (``kernel(...)``)
    pass_name: str     # forward, backward, forward+backward, step
    group: str         # the pytest-benchmark group, as compare.py prints it
    shape: tuple = ()  # the main operand's shape (recorded in extra_info)
    spec: Any = None   # kernel-specific parameters, hashable: a Gemm, a Conv, an axis...
    rounds: int = 10
    impl_rounds: tuple = ()  # (impl, rounds) pairs overriding ``rounds``
    iterations: int = 1
    warmup_rounds: int = 1
    flops: int = 0     # floating-point operations per timed call: 0 when not counted
    info: tuple = ()   # more extra_info, (key, value) pairs
    settle_s: float = 0.0  # wait before timing, for the previous row's thread pools to sleep

    @property
    def runs_backward(self):
        return self.pass_name in BACKWARD_PASSES

    def rounds_for(self, impl):
        n = dict(self.impl_rounds).get(impl, self.rounds)
        return n if MAX_ROUNDS is None else max(1, min(n, MAX_ROUNDS))


def rounds_by_flops(flops):
    """(rounds, iterations per round) for a compute-bound call: about 1-3 s of timed calls per
    case and impl at one thread (3 rounds for the largest, which take ~1 s a call)."""
    for bound, n in ((50e9, 3), (10e9, 5), (1e9, 10), (1e8, 30), (1e7, 100), (1e6, 200)):
        if flops >= bound:
            return n, 1
    return 100, 20  # microseconds a call: several calls per round


# ---------------------------------------------------------------- the kernel registry


@dataclass(frozen=True)
class Impl:
    build: Callable  # (case, buffers) -> (forward, backward or None): argument-less callables
    skip: Callable | None = None  # case -> the reason this impl does not run it, or None


@dataclass
class Kernel:
    """A benchmarked kernel: its inputs, the declarations its buffers come from, its impls."""

    name: str
    inputs: Callable  # case -> {name: array}: random, the same for every impl
    ops: tuple = ()   # the pyengine.registry ops timed, forward first: buffers and checks
    options: Callable = lambda case: {}  # case -> the ops' attributes shapes depend on
    missing: str = "{impl} has no {kernel} here"  # skip reason for an impl not registered
    impls: dict = field(default_factory=dict)

    def __post_init__(self):
        for op in self.ops:
            registry.op(op)  # ValueError now, at collection, for a name not declared

    def impl(self, *impls, skip=None):
        """Decorator registering ``build(case, buffers) -> (forward, backward)`` for impls.

        ``forward`` and ``backward`` take no arguments, read the inputs of ``buffers`` (a
        namespace of numpy arrays) and write its outputs in place (an impl whose library
        allocates its results may instead rebind ``buffers.<name>`` to them); ``backward``
        reads what ``forward`` wrote and is None where the kernel has no backward.
        ``skip(case)`` returns why this impl does not run a case, or None.
        """
        def register(build):
            for name in impls:
                if name in self.impls:
                    raise ValueError(f"{self.name}: {name} registered twice")
                self.impls[name] = Impl(build, skip)
            return build
        return register


KERNELS: dict = {}


def kernel(name, *, inputs, ops=(), options=None, missing=None):
    """Register the kernel ``name``; returns it, whose ``.impl(...)`` registers the builders."""
    if name in KERNELS:
        raise ValueError(f"kernel {name!r} registered twice")
    spec = Kernel(name, inputs, tuple(ops))
    if options is not None:
        spec.options = options
    if missing is not None:
        spec.missing = missing
    KERNELS[name] = spec
    return spec


# ---------------------------------------------------------------- inputs and buffers


_INPUTS: dict = {}  # one (kernel, shape, spec) at a time: a group's rows run back to back


def inputs(case):
    key = (case.kernel, case.shape, case.spec)
    if key not in _INPUTS:
        _INPUTS.clear()  # cross-entropy's logits alone are 200 MB
        _INPUTS[key] = KERNELS[case.kernel].inputs(case)
    return _INPUTS[key]


def _declared_name(name):
    """A buffer's name in the declarations: grad_x -> dx."""
    return "d" + name[len("grad_"):] if name.startswith("grad_") else name


def _buffer_name(arg):
    """A declared argument's buffer: dx -> grad_x for a gradient, the name otherwise."""
    name, role = arg["name"], arg["role"]
    return f"grad_{name[1:]}" if role in ("grad", "optional_grad", "grad_input") else name


@functools.lru_cache(maxsize=64)
def declared_buffers(case):
    """What the kernel's declarations say about the case's buffers, given its inputs.

    Returns ({buffer: (shape, dtype)} to allocate, [inout inputs to copy],
    [buffers the forward ops write], [buffers the backward ops write]).
    """
    spec = KERNELS[case.kernel]
    shapes = {_declared_name(n): a.shape for n, a in inputs(case).items()}
    options = spec.options(case)
    outputs, state, forward, backward = {}, [], [], []
    for op in spec.ops:
        info = registry.op(op)
        args = {a["name"] for a in info.args}
        attrs = {a["name"] for a in info.attrs}
        inferred = K.output_shapes(op, **{k: v for k, v in shapes.items() if k in args},
                                   **{k: v for k, v in options.items() if k in attrs})
        written = backward if op.endswith("_backward") else forward
        for a in info.args:
            name = _buffer_name(a)
            if a["role"] == "optional_inout" and name not in shapes:
                continue  # state the case does not use (Adam's max_exp_avg_sq without amsgrad)
            if a["role"] == "optional_grad" and a["name"] not in inferred:
                continue  # the gradient of an optional input the case does not give (attention's mask)
            if a["role"] in _STATE_ROLES and name not in state:
                state.append(name)
            elif a["role"] in _BUFFER_ROLES and name not in outputs:
                dtype = np.int64 if a["dtype"] == "index" else np.float32
                outputs[name] = (tuple(inferred[a["name"]]), dtype)
            else:
                continue
            written.append(name)
            shapes[a["name"]] = tuple(inferred[a["name"]])
    return outputs, state, forward, backward


def new_buffers(case):
    """The inputs (inout ones copied) and fresh zeroed outputs, as one namespace."""
    outputs, state, _, _ = declared_buffers(case)
    buffers = {n: (a.copy() if n in state else a) for n, a in inputs(case).items()}
    buffers.update({n: np.zeros(shape, dtype) for n, (shape, dtype) in outputs.items()})
    return SimpleNamespace(**buffers)


def checked_outputs(case):
    """The buffers compared with pyengine's: the forward's, and the backward's when it ran."""
    _, _, forward, backward = declared_buffers(case)
    return tuple(forward) + (tuple(backward) if case.runs_backward else ())


# ---------------------------------------------------------------- building and checking


def skip_reason(impl, case):
    spec = KERNELS[case.kernel]
    if impl not in spec.impls:
        return spec.missing.format(impl=impl, kernel=spec.name)
    skip = spec.impls[impl].skip
    return skip(case) if skip else None


def make_case(impl, case):
    """Build a case and run it once, untimed (JIT compilation, first touch, a backward's
    forward). Returns (the callable to time, {checked output: array after that run})."""
    buffers = new_buffers(case)
    forward, backward = KERNELS[case.kernel].impls[impl].build(case, buffers)
    forward()
    if case.runs_backward:
        backward()
    outputs = {name: np.asarray(getattr(buffers, name)) for name in checked_outputs(case)}
    if case.pass_name == "backward":
        return backward, outputs
    if case.pass_name == "forward+backward":
        def forward_backward():
            forward()
            backward()

        return forward_backward, outputs
    return forward, outputs


_REFERENCE: dict = {}  # case -> pyengine's outputs, one case at a time (kept while its group runs)


def reference_outputs(case):
    if case not in _REFERENCE:
        _REFERENCE.clear()
        _REFERENCE[case] = make_case(REFERENCE, case)[1]
    return _REFERENCE[case]


def keep_reference(case, outputs):
    """pyengine's row ran first: keep copies of its outputs (timing goes on writing them)."""
    _REFERENCE.clear()
    _REFERENCE[case] = {name: arr.copy() for name, arr in outputs.items()}


def check(impl, case, outputs):
    """Fail when impl's first-run outputs disagree with pyengine's on the same inputs."""
    if not outputs:
        return
    for name, want in reference_outputs(case).items():
        atol = RTOL * float(np.abs(want).max()) if want.size else 0.0
        np.testing.assert_allclose(outputs[name], want, rtol=RTOL, atol=atol,
                                   err_msg=f"{impl} {case.group}: {name} differs from {REFERENCE}")


# ---------------------------------------------------------------- running a row


def parametrize(cases, impls=IMPLS):
    """Parametrize a test by ``case`` and ``impl``, impl innermost: the rows of a group run
    back to back, with one set of inputs and one reference alive, under the same machine
    conditions."""
    def decorate(test):
        test = pytest.mark.parametrize("case", cases, ids=lambda c: c.group)(test)
        return pytest.mark.parametrize("impl", impls)(test)
    return decorate


def skip_unavailable(impl):
    if impl in REQUIRES:
        pytest.importorskip(REQUIRES[impl])


def run(benchmark, threads, case, impl):
    """The whole benchmark row: skips, build, first run and check, then the timing."""
    reason = skip_reason(impl, case)
    if reason is None:
        skip_unavailable(impl)
    if reason:
        pytest.skip(reason)
    timed, outputs = make_case(impl, case)
    if impl == REFERENCE:
        keep_reference(case, outputs)
    else:
        check(impl, case, outputs)
    del outputs
    benchmark.group = case.group
    benchmark.extra_info.update(threads=threads, kernel=case.kernel, pass_name=case.pass_name,
                                shape=list(case.shape), **dict(case.info))
    if case.flops:
        benchmark.extra_info["flops"] = case.flops
    if case.settle_s:
        time.sleep(case.settle_s)
    benchmark.pedantic(timed, rounds=case.rounds_for(impl), iterations=case.iterations,
                       warmup_rounds=case.warmup_rounds)
    record_gflops(benchmark, case.flops)


def record_gflops(benchmark, flops):
    """extra_info["gflops"] at the median time (compare.py recomputes it at its statistic)."""
    stats = getattr(benchmark, "stats", None)  # None with --benchmark-disable
    if flops and stats is not None and stats.stats.median > 0:
        benchmark.extra_info["gflops"] = round(flops / stats.stats.median / 1e9, 2)


# ---------------------------------------------------------------- the FMA probe


PROBE_ITERATIONS = 4_000_000  # ~30 ms a call at one thread on AVX-512 (~100 GFLOP/s)


def run_fma_probe(benchmark, threads, probe_threads):
    """Time pyengine's register-only FMA loop (``kernels.fma_probe``) on probe_threads: the
    machine's floating-point limit, recorded like every other GFLOP/s figure."""
    flops = K.fma_probe(PROBE_ITERATIONS, probe_threads)
    benchmark.group = f"peak fma probe, {probe_threads} thread{'s' * (probe_threads > 1)}"
    benchmark.extra_info.update(threads=probe_threads, isa=pyengine.get_isa(), flops=flops,
                                iterations=PROBE_ITERATIONS)
    rounds = 20 if MAX_ROUNDS is None else max(1, min(20, MAX_ROUNDS))
    benchmark.pedantic(K.fma_probe, args=(PROBE_ITERATIONS, probe_threads), rounds=rounds,
                       iterations=1, warmup_rounds=2)
    record_gflops(benchmark, flops)


def training_memory_mib(script, *args) -> float:
    """The memory training takes, in MiB, as the child ``python SCRIPT ARGS`` reports it through
    report_training_memory: measured in a child so that one framework's pages do not count for
    the other."""
    out = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.abspath(script)))
    return json.loads(out.stdout.strip().splitlines()[-1])["training_memory_mib"]


def _status_mib(field) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def report_training_memory(make_step, steps) -> None:
    """In the child: the peak resident set of building a step (``make_step()`` returns it: the
    model, the optimizer, a capture) and running it ``steps`` times, less the resident size
    before (the frameworks imported and the batch made); printed as JSON on the last line."""
    # The high-water mark of the resident set, reset first (Linux: "5" to clear_refs), so that
    # neither the imports' transient peak nor, through getrusage's ru_maxrss, the peak of the
    # process this child was forked from (a benchmark session of hundreds of MiB) counts.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    step = make_step()
    for _ in range(steps):
        step()
    peak = _status_mib("VmHWM")
    print(json.dumps({"training_memory_mib": round(peak - before, 1)}))
