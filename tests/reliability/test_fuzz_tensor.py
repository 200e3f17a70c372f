"""The public Tensor surface fuzzed (tests/reliability/fuzz_tensor_cases.py) against PyTorch in
float64: the same answer and gradients, or a ValueError/TypeError naming the op, never a
crash, a hang, an OverflowError or a wrong answer. The cases run in child processes
(fuzz_child.py). `pytest --fuzz-examples N` sets the cases per op (a third of it here, at
least 5: the Tensor ops are many); `pytest -s` prints the cases run per op: valid ones (the answer
compared), clear errors (torch refusing too, with an agreeing error type) and allowed mismatches.
"""

from __future__ import annotations

import fuzz_tensor_cases
from fuzz_child import print_counts, run_children

import pyengine.functional as F
from pyengine.tensor import Tensor

# Public names of Tensor and pyengine.functional that are not fuzzed ops, each with why.
NOT_OPS = {
    "backward", "zero_grad", "detach", "numpy", "item",  # autograd and conversion plumbing
    "shape", "ndim", "dtype", "size", "grad", "is_leaf", "requires_grad", "data", "name",  # attributes
    "clip",  # an alias of clamp (the same function object)
}
# Ops reached under another fuzz entry: the method or function -> the entry that covers it.
COVERED_BY = {
    "__add__": "add", "__radd__": "add", "__sub__": "sub", "__rsub__": "sub", "__mul__": "mul", "__rmul__": "mul",
    "__truediv__": "truediv", "__rtruediv__": "truediv", "__neg__": "neg", "__pow__": "pow",
    "__matmul__": "matmul", "__rmatmul__": "matmul", "__getitem__": "getitem", "__abs__": "abs",
}
# Not yet fuzzed (listed so that a new op cannot slip in unnoticed): none left.
NOT_YET: set = set()


def public_ops() -> set:
    methods = {n for n in dir(Tensor) if not n.startswith("_") or n in COVERED_BY or n in ("__iter__", "__len__")}
    return methods | set(F.__all__)


def test_every_public_op_has_a_fuzz_entry():
    missing = {n for n in public_ops() - NOT_OPS - NOT_YET
               if n not in fuzz_tensor_cases.OPS and COVERED_BY.get(n) not in fuzz_tensor_cases.OPS}
    assert not missing, f"public ops without a fuzz entry in fuzz_tensor_cases.OPS: {sorted(missing)}"


def test_every_tensor_op_survives_fuzzing(tmp_path, request):
    max_examples = max(5, request.config.getoption("--fuzz-examples") // 3)
    names = sorted(fuzz_tensor_cases.OPS)
    results, failures = run_children("fuzz_tensor_cases", names, max_examples, str(tmp_path / "progress.json"))
    print_counts("Tensor ops", names, results, max_examples)
    assert not failures, "\n".join(failures)
    # every op reached its answer, not only its error paths (fuzz_tensor_valid.py draws such cases)
    unchecked = [n for n in names if results[n].get("ok", 0) == 0]
    assert not unchecked, f"ops whose fuzz cases were all errors: {unchecked}"
