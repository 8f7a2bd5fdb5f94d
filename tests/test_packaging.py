"""The install the README gives is one that type checkers can read."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest


def test_the_editable_install_is_a_path_entry_that_type_checkers_follow():
  """setuptools' import-hook editable mode hides the package from pyright and mypy."""
  distribution = importlib.metadata.distribution("decoupled_optax")
  pth_files = [f for f in distribution.files or [] if f.name.endswith(".pth")]
  if not pth_files:
    pytest.skip("decoupled_optax is installed as a regular (non-editable) wheel")
  lines = [
    line.strip()
    for f in pth_files
    for line in Path(distribution.locate_file(f)).read_text().splitlines()
    if line.strip()
  ]
  assert not any(line.startswith("import ") for line in lines), lines
  assert any((Path(line) / "decoupled_optax" / "py.typed").is_file() for line in lines), lines
