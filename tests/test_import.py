"""Importing a source tree that has no compiled module says so, in one clear error."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pyengine


def test_source_tree_without_compiled_module(tmp_path):
    source = pathlib.Path(pyengine.__file__).parent
    shutil.copytree(source, tmp_path / "pyengine", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    # -S: no site-packages, so only the copied source tree can be found.
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import pyengine"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pyengine: the compiled module pyengine._C is missing")
    assert "pip install" in last
