"""Multi-host: 2 processes on loopback (jax.distributed, gloo), 2 fake CPU devices each.

Runs ``examples/multihost_adamp.py`` in two processes, which train a sharded
model with AdamP on one mesh of their 4 devices, and checks that the params
are those of the same script run in a single process on 4 devices (bit for
bit) and on one device (to rounding). The processes are bounded in time and
always killed.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "multihost_adamp.py"
STEPS = 4
TIMEOUT_S = 90


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _example():
  spec = importlib.util.spec_from_file_location("multihost_adamp", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_two_processes(out: Path, log_dir: Path) -> None:
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the script sets its own
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  processes, logs = [], []
  try:
    for i in range(2):
      log = open(log_dir / f"process{i}.log", "w")  # noqa: SIM115
      logs.append(log)
      command = [sys.executable, str(SCRIPT), "--num-processes", "2", "--process-id", str(i)]
      command += ["--port", str(port), "--devices-per-process", "2", "--steps", str(STEPS)]
      if i == 0:
        command += ["--out", str(out)]
      processes.append(
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
      )
    deadline = time.monotonic() + TIMEOUT_S
    for process in processes:
      process.wait(timeout=max(deadline - time.monotonic(), 1))
    codes = [p.returncode for p in processes]
    if codes != [0, 0]:
      text = "\n".join((log_dir / f"process{i}.log").read_text()[-3000:] for i in range(2))
      pytest.fail(f"exit codes {codes}:\n{text}")
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    for log in logs:
      log.close()


@pytest.mark.skipif(jax.device_count() < 4, reason="the reference needs 4 local devices")
def test_two_processes_equal_one_process(tmp_path):
  out = tmp_path / "params.npz"
  _run_two_processes(out, tmp_path)
  multihost = dict(np.load(out))

  example = _example()
  devices = np.array(jax.devices()[:4])
  single_process, _ = example.train(Mesh(devices.reshape(2, 2), ("data", "model")), STEPS)
  one_device, _ = example.train(Mesh(devices[:1].reshape(1, 1), ("data", "model")), STEPS)
  assert multihost.keys() == single_process.keys()
  for k in multihost:
    np.testing.assert_array_equal(multihost[k], single_process[k])
    np.testing.assert_allclose(multihost[k], one_device[k], rtol=1e-6, atol=1e-6)
  # Training moved the params (w1, weight-normalized per channel, is the one AdamP projects).
  assert not np.allclose(multihost["w1"], example.init_params()["w1"])
