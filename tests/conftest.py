"""Test configuration: the main suite runs on one CPU device, as users do.

With ``cpu_kernel=None`` (the default) AdamP/SGDP run the fused CPU kernel only
when the process has a single CPU device, so this process keeps XLA's default
of one: nothing here sets ``XLA_FLAGS``. The tests that need several devices
live in ``tests/multi_device``, whose conftest.py sets
``--xla_force_host_platform_device_count=8``; the XLA backend starts once per
process, so this process does not collect them and ``tests/test_multi_device.py``
runs them in a subprocess. They are collected in a process that names them on
the command line (``python -m pytest tests/multi_device``) or that has
``DECOUPLED_OPTAX_MULTI_DEVICE=1`` (the subprocess).
"""

from __future__ import annotations

import os
from pathlib import Path

MULTI_DEVICE = Path(__file__).resolve().parent / "multi_device"
MULTI_DEVICE_ENV = "DECOUPLED_OPTAX_MULTI_DEVICE"


def _names_multi_device(config) -> bool:
  """Whether a command-line argument is tests/multi_device or a path inside it."""
  for arg in config.args:
    path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
    if path == MULTI_DEVICE or MULTI_DEVICE in path.parents:
      return True
  return False


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
  if collection_path != MULTI_DEVICE or os.environ.get(MULTI_DEVICE_ENV) == "1":
    return None
  return None if _names_multi_device(config) else True
