"""Multi-device tests: 8 fake CPU devices, in a process of their own.

XLA reads ``XLA_FLAGS`` when the backend starts, so the flag is set here, at
import time: pytest imports this file before the test modules, and no test
touches a device before that. Only this folder gets the flag: the main suite
(``python -m pytest``) does not collect it and runs it in a subprocess
(``tests/test_multi_device.py``), so that every other test sees one CPU
device, the default users get on a CPU. ``python -m pytest tests/multi_device``
runs it directly.
"""

import os
import sys
from pathlib import Path

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
DEVICE_COUNT = 8

if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_COUNT_FLAG}={DEVICE_COUNT}"
  ).strip()

# The shared helpers of tests/ (``_reference``), next to this folder's own.
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
  sys.path.append(_TESTS)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _several_cpu_devices():
  """Fails, rather than skips, when the flag came too late (jax started before this file)."""
  import jax

  count = jax.device_count("cpu")
  if count < DEVICE_COUNT:
    pytest.fail(
      f"the multi-device tests need {DEVICE_COUNT} CPU devices, this process has {count}: "
      f"jax started before tests/multi_device/conftest.py set XLA_FLAGS={_DEVICE_COUNT_FLAG}="
      f"{DEVICE_COUNT}; run them on their own: python -m pytest tests/multi_device",
      pytrace=False,
    )
