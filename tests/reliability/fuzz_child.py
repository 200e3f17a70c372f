"""The fuzzing's child process: fuzz_child.py PROGRESS MAX_EXAMPLES CASES_MODULE OP [OP ...].

Runs each op's cases (CASES_MODULE: fuzz_cases.py for the kernels, fuzz_tensor_cases.py
for the Tensor surface; each gives `recipes(op)` and `outcome(op, recipe)`) under hypothesis and prints one JSON line
per op: cases run, outcomes, the first failure. Before each case it writes
the case to the PROGRESS file, so that a crash or a hang (faulthandler ends
a case that runs too long) still says which case it was; the parent starts a
new child for the ops after it. `run_children` is that parent side.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for op_cases
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the cases modules

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CASE_TIMEOUT_S = 20.0


def fuzz(cases, name: str, max_examples: int, progress) -> dict:
    counts = {"ok": 0, "error": 0, "memory": 0, "known": 0}

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        recipe = data.draw(cases.recipes(name))
        progress.seek(0)
        progress.write(json.dumps({"op": name, "recipe": repr(recipe)}).ljust(400))
        progress.flush()
        faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
        try:
            counts[cases.outcome(name, recipe)] += 1
        finally:
            faulthandler.cancel_dump_traceback_later()

    failure = None
    try:
        case()
    except Exception as error:  # noqa: BLE001 (reported to the parent, which fails the test)
        failure = _describe(error)[:4000]
    return {"op": name, "cases": sum(counts.values()), **counts, "failure": failure}


def _describe(error: BaseException) -> str:
    """The error, its notes (hypothesis's falsifying example) and each error of a group."""
    notes = "".join(f" [{note}]" for note in getattr(error, "__notes__", ()))
    text = f"{type(error).__name__}: {error}{notes}"
    for sub in getattr(error, "exceptions", ()):  # an ExceptionGroup (hypothesis's distinct failures)
        text += f"\n    - {_describe(sub)}"
    return text


def main() -> None:
    faulthandler.enable()
    progress_path, max_examples, module, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    cases = importlib.import_module(module)
    with open(progress_path, "w") as progress:
        for name in names:
            print(json.dumps(fuzz(cases, name, max_examples, progress)), flush=True)


def run_children(module: str, names: list, max_examples: int, progress: str) -> tuple[dict, list]:
    """The parent side: every op of `names` fuzzed in child processes, a new child after each crash.
    Returns ({op: its counts}, [failure lines])."""
    results, failures = {}, []
    remaining = list(names)
    while remaining:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), progress, str(max_examples), module,
                               *remaining], capture_output=True, text=True, timeout=1200)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                results[entry["op"]] = entry
                if entry["failure"]:
                    failures.append(f"{entry['op']}: {entry['failure']}")
        remaining = [n for n in remaining if n not in results]
        if proc.returncode != 0 or remaining:
            with open(progress) as file:
                last = file.read().strip()
            crashed = remaining.pop(0) if remaining else "?"
            failures.append(f"{crashed}: the child died (exit {proc.returncode}) in case {last}; "
                            f"stderr: {proc.stderr[-1500:]}")
            results[crashed] = {"op": crashed, "cases": "crashed"}
    return results, failures


def print_counts(what: str, names: list, results: dict, max_examples: int) -> None:
    """The cases run per op (seen with pytest -s) and the total."""
    print(f"\nfuzz cases per op ({max_examples} drawn each): valid (answer checked) / clear error / MemoryError"
          f" / known mismatch")
    for name in names:
        r = results[name]
        print(f"  {name:32s} {r['cases']!s:>6} cases: {r.get('ok', '-')} valid, {r.get('error', '-')} errors, "
              f"{r.get('memory', '-')} MemoryError, {r.get('known', '-')} known")
    total = sum(r["cases"] for r in results.values() if isinstance(r["cases"], int))
    print(f"  total: {total} cases over {len(names)} {what}")


if __name__ == "__main__":
    main()
