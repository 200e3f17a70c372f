"""Every declared kernel fuzzed (tests/reliability/fuzz_cases.py): the reference answer or a clear
ValueError/TypeError naming the op, never a crash, a hang or a wrong answer.

The cases run in a child process (fuzz_child.py); when one crashes or hangs it
is reported with its recipe and a new child goes on with the ops after it.
`pytest --fuzz-examples N` sets the cases per op (default 30; say 2000 for a
long run). `pytest -s` prints the cases run per op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fuzz_cases

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_child.py")


def _run_children(names: list, max_examples: int, progress: str) -> tuple[dict, list]:
    results, failures = {}, []
    remaining = list(names)
    while remaining:
        proc = subprocess.run([sys.executable, CHILD, progress, str(max_examples), *remaining],
                              capture_output=True, text=True, timeout=1200)
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


def test_every_kernel_survives_fuzzing(tmp_path, request):
    max_examples = request.config.getoption("--fuzz-examples")
    names = fuzz_cases.Valid.ops()
    results, failures = _run_children(names, max_examples, str(tmp_path / "progress.json"))
    print(f"\nfuzz cases per op ({max_examples} drawn each): ok / clear error / MemoryError")
    for name in names:
        r = results[name]
        print(f"  {name:32s} {r['cases']!s:>6} cases: {r.get('ok', '-')} ok, {r.get('error', '-')} errors, "
              f"{r.get('memory', '-')} MemoryError")
    total = sum(r["cases"] for r in results.values() if isinstance(r["cases"], int))
    print(f"  total: {total} cases over {len(names)} kernels")
    assert not failures, "\n".join(failures)
