"""The multi-device tests, in a subprocess with 8 fake CPU devices.

XLA fixes the device count when its backend starts, once per process, and the
main suite keeps one CPU device (the default users get, where AdamP/SGDP run
the fused kernel), so ``tests/multi_device`` runs here in a process of its own:
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Its output's tail is
in the failure message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A subprocess with 8 devices: part of the extended run (README, Testing).
pytestmark = pytest.mark.extended

ROOT = Path(__file__).resolve().parent.parent
MULTI_DEVICE = Path(__file__).resolve().parent / "multi_device"
MULTI_DEVICE_ENV = "DECOUPLED_OPTAX_MULTI_DEVICE"  # tests/conftest.py collects it then
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TIMEOUT_S = 600  # it takes ~30 s on 2 cores
TAIL_CHARS = 8000


def test_multi_device_suite_passes_on_8_cpu_devices():
  flags = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)
  ]
  env = dict(os.environ, XLA_FLAGS=" ".join([*flags, f"{DEVICE_COUNT_FLAG}=8"]))
  env[MULTI_DEVICE_ENV] = "1"
  command = [sys.executable, "-m", "pytest", str(MULTI_DEVICE.relative_to(ROOT))]
  # One process: the multi-device tests share the fake devices' XLA backend, not xdist workers.
  command += ["-q", "-p", "no:cacheprovider", "-n", "0"]
  try:
    result = subprocess.run(
      command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
  except subprocess.TimeoutExpired as error:
    output = error.stdout or ""  # what it printed so far: bytes on POSIX
    if isinstance(output, bytes):
      output = output.decode(errors="replace")
    raise AssertionError(
      f"{' '.join(command)} ran past {TIMEOUT_S} s:\n{output[-TAIL_CHARS:]}"
    ) from None
  output = result.stdout + result.stderr
  print(output[-TAIL_CHARS:])  # in the captured output of a passing run too (-rP)
  assert result.returncode == 0, (
    f"{' '.join(command)} exited with {result.returncode}:\n{output[-TAIL_CHARS:]}"
  )
  assert " passed" in result.stdout, output[-TAIL_CHARS:]
