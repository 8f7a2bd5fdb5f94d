"""The tree is ruff-clean (lint and format, configured in pyproject.toml) and the package type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
  result = subprocess.run(
    [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.extended
def test_pyright_reports_no_errors():
  """The version is pinned in the test extra, so a new pyright cannot turn the suite red."""
  result = subprocess.run(
    [sys.executable, "-m", "pyright", "decoupled_optax"], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert "0 errors" in result.stdout
