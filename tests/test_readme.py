"""The README runs as written: every Python snippet executes (in a fresh interpreter, as a
user would run it: no TRITON_INTERPRET), and it names every registered op."""

import os
import re
import subprocess
import sys

import pytest

from fusednn import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_python_snippets():
    assert SNIPPETS


@pytest.mark.slow  # a fresh interpreter per snippet
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDNN_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", SNIPPETS[index]], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"README snippet {index} failed:\n{proc.stderr[-3000:]}"


def test_readme_names_every_op():
    for info in registry.ops():
        assert f"fusednn.ops.{info.name}`" in README, info.name
