"""The peers' results: live, or as the committed fixtures the peers themselves produced.

A reference test asks for a peer's result through the ``peer`` fixture
(conftest.py), giving the function that produces it from the live peers:

  reference = peer(lambda live: live.run_torch(..., live.torch.optim.AdamW, ...))

``live`` is the module ``_peer_runs`` (torch, the official ``adamp``, timm's
and Keras's code as transcribed there, the authors' sgd.lua). The result is
a tree of dicts, lists and tuples of NumPy arrays and numbers. What happens
depends on how pytest runs:

* by default the result is read from ``tests/fixtures/peers.npz``: the run
  needs neither torch nor ``adamp``;
* with ``--extended`` the peer runs live, and its result must equal the
  fixture (1e-6 relative per leaf), so a fixture cannot go stale unnoticed;
* with ``--record-peers`` the peers run live and their results replace
  those of the same keys in the fixtures (``scripts/record_peer_fixtures.sh``
  deletes the file first and records the whole suite, so that no key of a
  renamed test stays behind).

A result is keyed by the test's node id and ``name`` (for a test that asks
for several), so renaming a test asks for a new recording.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

# Another file for a partial recording that must not touch the committed one.
FIXTURES = Path(
  os.environ.get("DECOUPLED_OPTAX_PEER_FIXTURES")
  or Path(__file__).resolve().parent / "fixtures" / "peers.npz"
)
FRESHNESS = 1e-6
MODES = ("fixtures", "live", "record")
INSTALL_PEERS = (
  "the live peers need torch and the official adamp: "
  "pip install 'torch>=2.5,<2.16' --index-url https://download.pytorch.org/whl/cpu "
  "&& pip install -e '.[test,peers]'"
)
RECORD = "re-record them with scripts/record_peer_fixtures.sh"


def _encode(tree: Any, arrays: list[np.ndarray], seen: dict | None = None) -> Any:
  """JSON for the structure of ``tree``; its arrays go to ``arrays``, each distinct one once."""
  seen = {} if seen is None else seen
  if isinstance(tree, dict):
    if not all(isinstance(k, str) for k in tree):
      raise TypeError(f"a recorded dict needs str keys, got {list(tree)}")
    return {"dict": {k: _encode(v, arrays, seen) for k, v in tree.items()}}
  if isinstance(tree, (list, tuple)):
    return {type(tree).__name__: [_encode(v, arrays, seen) for v in tree]}
  array = np.asarray(tree)
  identity = (array.dtype.str, array.shape, array.tobytes())
  if identity not in seen:
    arrays.append(array)
    seen[identity] = len(arrays) - 1
  return {"array": seen[identity]}


def _decode(spec: Any, arrays: dict[str, np.ndarray]) -> Any:
  ((kind, value),) = spec.items()
  if kind == "dict":
    return {k: _decode(v, arrays) for k, v in value.items()}
  if kind == "list":
    return [_decode(v, arrays) for v in value]
  if kind == "tuple":
    return tuple(_decode(v, arrays) for v in value)
  return arrays[f"a{value}"]


def _leaves(tree: Any, path: str = "") -> list[tuple[str, np.ndarray]]:
  if isinstance(tree, dict):
    return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{path}/{k}")]
  if isinstance(tree, (list, tuple)):
    return [leaf for i, v in enumerate(tree) for leaf in _leaves(v, f"{path}/{i}")]
  return [(path, np.asarray(tree))]


def write_fixtures(results: dict[str, Any], path: Path = FIXTURES) -> None:
  """Writes ``results`` (key -> tree) as one compressed npz with a JSON index."""
  arrays: list[np.ndarray] = []
  seen: dict = {}
  index = {key: _encode(results[key], arrays, seen) for key in sorted(results)}
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    path,
    index=np.frombuffer(json.dumps(index).encode(), np.uint8),
    **{f"a{i}": a for i, a in enumerate(arrays)},
  )


def read_fixtures(path: Path = FIXTURES) -> dict[str, Any]:
  if not path.exists():
    return {}
  with np.load(path, allow_pickle=False) as data:
    arrays = {name: data[name] for name in data.files}
  index = json.loads(arrays.pop("index").tobytes().decode())
  return {key: _decode(spec, arrays) for key, spec in index.items()}


def assert_same_result(live: Any, recorded: Any, key: str) -> None:
  """The live peer reproduces its fixture: same structure, 1e-6 relative per leaf."""
  live_leaves, recorded_leaves = _leaves(live), _leaves(recorded)
  if [p for p, _ in live_leaves] != [p for p, _ in recorded_leaves]:
    pytest.fail(
      f"the live peer's result for {key!r} has another structure than its fixture; {RECORD}"
    )
  for (path, a), (_, b) in zip(live_leaves, recorded_leaves, strict=True):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
      pytest.fail(f"{key!r}{path}: live shape {a64.shape}, fixture {b64.shape}; {RECORD}")
    scale = max(float(np.linalg.norm(b64)), 1e-30)
    error = float(np.linalg.norm(a64 - b64)) / scale
    if error > FRESHNESS:
      pytest.fail(f"{key!r}{path}: the live peer differs from its fixture by {error:.3g}; {RECORD}")


def import_live_peers() -> ModuleType:
  try:
    import _peer_runs
  except ImportError as error:
    raise pytest.UsageError(f"{INSTALL_PEERS} ({error})") from error
  return _peer_runs


class PeerResults:
  """One session's access to the peers' results, in one of ``MODES``."""

  def __init__(self, mode: str):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.recorded: dict[str, Any] = {}
    self._fixtures: dict[str, Any] | None = None

  def fixtures(self) -> dict[str, Any]:
    if self._fixtures is None:
      self._fixtures = read_fixtures()
    return self._fixtures

  def get(self, key: str, produce: Callable[[ModuleType], Any]) -> Any:
    if self.mode == "fixtures":
      if key not in self.fixtures():
        pytest.fail(f"no recorded peer result for {key!r}; {RECORD}")
      return self.fixtures()[key]
    # Through the fixtures' encoding, so that a test sees the same types in every mode.
    arrays: list[np.ndarray] = []
    spec = _encode(produce(import_live_peers()), arrays)
    result = _decode(spec, {f"a{i}": a for i, a in enumerate(arrays)})
    if self.mode == "record":
      self.recorded[key] = result
    elif key not in self.fixtures():
      pytest.fail(f"no recorded peer result for {key!r}; {RECORD}")
    else:
      assert_same_result(result, self.fixtures()[key], key)
    return result
