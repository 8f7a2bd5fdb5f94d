"""The install the README gives is one that type checkers can read."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest


def test_the_editable_install_is_a_path_entry_that_type_checkers_follow():
  """setuptools' import-hook editable mode hides the package from pyright and mypy."""
  site_packages = Path(sysconfig.get_paths()["purelib"])
  records = list(site_packages.glob("decoupled_optax-*.dist-info/direct_url.json"))
  editable = any(json.loads(r.read_text()).get("dir_info", {}).get("editable") for r in records)
  if not editable:
    pytest.skip("decoupled_optax is not installed in editable mode here")
  lines = [
    line.strip()
    for pth in site_packages.glob("__editable__*decoupled_optax*.pth")
    for line in pth.read_text().splitlines()
    if line.strip()
  ]
  assert lines, "no .pth file of the editable install"
  assert not any(line.startswith("import ") for line in lines), lines
  assert any((Path(line) / "decoupled_optax" / "py.typed").is_file() for line in lines), lines
