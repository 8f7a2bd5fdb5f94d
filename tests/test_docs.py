"""The docs stay in step with the code: the API reference and the porting guide's tests.

The site itself is built by .ci/run (``python -m sphinx -W``), whose
``docs/ext/coverage_check.py`` fails the build on a public name without an
entry; these checks need no Sphinx.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import decoupled_optax

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "ext"))

import coverage_check  # noqa: E402


def test_the_api_reference_lists_every_public_name():
  listed = set(re.findall(r"^   (\w+)$", (DOCS / "api.rst").read_text(), re.M))
  assert sorted(set(decoupled_optax.__all__) - listed) == []
  assert sorted(listed - set(decoupled_optax.__all__)) == []


def test_the_coverage_check_names_what_is_missing():
  documented = {f"decoupled_optax.{n}" for n in decoupled_optax.__all__ if n != "adamw"}
  assert coverage_check.missing_names(list(decoupled_optax.__all__), documented) == ["adamw"]
  assert coverage_check.missing_names(["adamw"], documented | {"decoupled_optax.adamw"}) == []


def test_every_porting_row_names_a_test_and_every_test_is_a_row():
  guide = (DOCS / "porting.md").read_text()
  named = set(re.findall(r"`(test_\w+)`", guide))
  tree = ast.parse((Path(__file__).parent / "test_porting.py").read_text())
  tests = {
    n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
  }
  assert sorted(named - tests) == [], "rows naming a test that does not exist"
  assert sorted(tests - named) == [], "tests that no row names"


def _python_blocks(page: str, folder: Path = DOCS) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```$", (folder / page).read_text(), flags=re.M | re.S)


def test_the_readme_training_step_runs_and_decays_only_the_kernel():
  (block,) = _python_blocks("README.md", DOCS.parent)
  namespace: dict = {}
  exec(compile(block, "README.md", "exec"), namespace)
  params = namespace["params"]
  # One Adam step of -lr on every entry (the gradients are positive), and PyTorch's decay
  # lr * wd = 1e-5 of the kernel's value on the kernel only.
  assert abs(float(params["bias"][0]) + 1e-3) < 1e-7
  assert abs(float(params["kernel"][0, 0]) - (1 - 1e-3 - 1e-5)) < 1e-7


def test_the_landing_page_example_runs_and_decays_only_the_kernel():
  (block,) = _python_blocks("index.md")
  namespace: dict = {}
  exec(compile(block, "index.md", "exec"), namespace)
  params = namespace["params"]
  step = float(params["bias"][0])  # one Adam step of about -lr, and no decay
  assert abs(step + 1e-3) < 1e-7
  # The kernel takes the same step and the decay, lr * wd = 1e-5 of its value.
  assert abs(float(params["kernel"][0, 0]) - (1 + step - 1e-5)) < 1e-7


def test_the_choosing_guide_examples_run():
  for block in _python_blocks("choosing.md"):
    exec(compile(block, "choosing.md", "exec"), {"dopt": decoupled_optax})


@pytest.mark.extended
def test_the_site_builds_with_warnings_as_errors(tmp_path):
  """The docs site (about 10 s); the coverage check fails the build on an undocumented name."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sphinx",
      "-W",
      "--keep-going",
      "-q",
      "-b",
      "html",
      str(DOCS),
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  assert (tmp_path / "index.html").exists()


def test_every_public_name_has_an_example():
  """Each API page shows a runnable example: a doctest that pytest runs (--doctest-modules)."""
  documented = {
    name: inspect.getdoc(getattr(decoupled_optax, name)) or "" for name in decoupled_optax.__all__
  }
  assert sorted(name for name, doc in documented.items() if ">>>" not in doc) == []
