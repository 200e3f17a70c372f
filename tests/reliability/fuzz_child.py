"""The fuzzing's child process: fuzz_child.py PROGRESS MAX_EXAMPLES OP [OP ...].

Runs each op's cases (fuzz_cases.py) under hypothesis and prints one JSON line
per op: cases run, outcomes, the first failure. Before each case it writes
the case to the PROGRESS file, so that a crash or a hang (faulthandler ends
a case that runs too long) still says which case it was; the parent starts a
new child for the ops after it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for op_cases

import fuzz_cases  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CASE_TIMEOUT_S = 20.0


def fuzz(name: str, max_examples: int, progress) -> dict:
    counts = {"ok": 0, "error": 0, "memory": 0}

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        recipe = data.draw(fuzz_cases.recipes(name))
        progress.seek(0)
        progress.write(json.dumps({"op": name, "recipe": repr(recipe)}).ljust(400))
        progress.flush()
        faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
        try:
            counts[fuzz_cases.outcome(name, recipe)] += 1
        finally:
            faulthandler.cancel_dump_traceback_later()

    failure = None
    try:
        case()
    except Exception as error:  # noqa: BLE001 (reported to the parent, which fails the test)
        failure = f"{type(error).__name__}: {error}"[:2000]
    return {"op": name, "cases": sum(counts.values()), **counts, "failure": failure}


def main() -> None:
    faulthandler.enable()
    progress_path, max_examples, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with open(progress_path, "w") as progress:
        for name in names:
            print(json.dumps(fuzz(name, max_examples, progress)), flush=True)


if __name__ == "__main__":
    main()
