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
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _peers import PeerResults, read_fixtures, write_fixtures

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


# ---------------------------------------------------------------- tiers and peers

PEER_RESULTS = pytest.StashKey[PeerResults]()
# Imports torch and adamp: only the peer fixture imports it, when the peers run live
# (--doctest-modules would import it in every run).
collect_ignore = ["_peer_runs.py"]
EXTENDED = (
  "the extended tests (marker `extended`): live torch/adamp comparisons, the multi-device "
  "subprocess, the fuzz, the packaging build, the docs build and the benchmark smoke runs"
)


def pytest_addoption(parser) -> None:
  group = parser.getgroup("decoupled_optax")
  group.addoption(
    "--extended",
    action="store_true",
    help=f"also run {EXTENDED}, with the peers live (needs the `peers` extra)",
  )
  group.addoption(
    "--record-peers",
    action="store_true",
    help="run the peers live and write tests/fixtures/peers.npz anew from their results",
  )


def pytest_configure(config) -> None:
  config.addinivalue_line("markers", f"extended: one of {EXTENDED}; runs with --extended")
  config.addinivalue_line(
    "markers", "peers: compares against a peer (set on every test that uses the peer fixture)"
  )
  if config.getoption("--record-peers"):
    mode = "record"
  elif config.getoption("--extended"):
    mode = "live"
  else:
    mode = "fixtures"
  config.stash[PEER_RESULTS] = PeerResults(mode)


def pytest_collection_modifyitems(config, items) -> None:
  for item in items:
    if "peer" in getattr(item, "fixturenames", ()):
      item.add_marker("peers")
  if config.getoption("--extended"):
    return
  extended = [item for item in items if item.get_closest_marker("extended")]
  if extended:
    config.hook.pytest_deselected(items=extended)
    items[:] = [item for item in items if not item.get_closest_marker("extended")]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
  # Under pytest-xdist the workers collect, so the line cannot count what they left out.
  if not (config.getoption("--extended") or config.getoption("--record-peers")):
    terminalreporter.write_line(
      "The extended tests did not run: `python -m pytest --extended` runs them too (README, Testing)."
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
  """``-n auto``: one worker per core, at most 4 (each holds its own JAX, about 1.5 GB)."""
  return max(1, min(os.cpu_count() or 1, 4))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
  """A worker sees the controller's options; recording must stay in one process."""
  if node.config.getoption("--record-peers"):
    raise pytest.UsageError("--record-peers writes one file: run it with -n 0")


def pytest_sessionfinish(session, exitstatus) -> None:
  results = session.config.stash[PEER_RESULTS]
  if results.mode == "record" and results.recorded:
    write_fixtures({**read_fixtures(), **results.recorded})


@pytest.fixture
def peer(request) -> Callable[..., Any]:
  """``peer(produce, name="")``: a peer's result, from its fixture or live (``_peers.py``)."""
  results = request.config.stash[PEER_RESULTS]

  def get(produce: Callable[[ModuleType], Any], name: str = "") -> Any:
    key = request.node.nodeid + (f"::{name}" if name else "")
    return results.get(key, produce)

  return get
