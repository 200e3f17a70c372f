"""Every declared kernel fuzzed (tests/reliability/fuzz_cases.py): the reference answer or a clear
ValueError/TypeError naming the op, never a crash, a hang or a wrong answer.

The cases run in a child process (fuzz_child.py); when one crashes or hangs it
is reported with its recipe and a new child goes on with the ops after it.
`pytest --fuzz-examples N` sets the cases per op (default 30; say 2000 for a
long run). `pytest -s` prints the cases run per op.
"""

from __future__ import annotations

import fuzz_cases
from fuzz_child import print_counts, run_children


def test_every_kernel_survives_fuzzing(tmp_path, request):
    max_examples = request.config.getoption("--fuzz-examples")
    names = fuzz_cases.Valid.ops()
    results, failures = run_children("fuzz_cases", names, max_examples, str(tmp_path / "progress.json"))
    print_counts("kernels", names, results, max_examples)
    assert not failures, "\n".join(failures)
