"""docs/checkpointing.md runs as shown, and a resumed run equals an uninterrupted one bit for bit.

Each ``## `` section of the page is one program: its ```python blocks are run in order, in a
temporary directory, exactly as the page shows them. The program trains 3 steps, saves,
restores into fresh objects and trains 3 more; the test then trains 6 steps without a
checkpoint, with the program's own functions, and compares every leaf (params, optimizer state,
step counts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _trees import assert_trees_close

PAGE = Path(__file__).resolve().parents[1] / "docs" / "checkpointing.md"


def _programs() -> dict[str, list[str]]:
  """The ```python blocks of the page, per ``## `` section (sections without code left out)."""
  programs = {}
  for section in re.split(r"^## ", PAGE.read_text(), flags=re.M)[1:]:
    title = section.splitlines()[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.M | re.S)
    if blocks:
      programs[title] = blocks
  return programs


def _run(title: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
  monkeypatch.chdir(tmp_path)
  namespace: dict[str, Any] = {"__name__": "checkpointing_page"}
  for block in _programs()[title]:
    exec(compile(block, f"{PAGE.name}: {title}", "exec"), namespace)
  return namespace


def test_the_page_has_the_three_programs():
  assert [t.split(":")[0] for t in _programs()] == ["Flax linen", "Flax NNX", "Equinox"]


def test_flax_linen_train_state_resumes_bit_identically(tmp_path, monkeypatch):
  ns = _run("Flax linen: `TrainState` and orbax-checkpoint", tmp_path, monkeypatch)
  uninterrupted = ns["create_state"]()
  for _ in range(6):
    uninterrupted = ns["train_step"](uninterrupted)
  assert int(ns["state"].step) == 6
  assert_trees_close(ns["state"], uninterrupted)


def test_flax_nnx_optimizer_resumes_bit_identically(tmp_path, monkeypatch):
  ns = _run("Flax NNX: `nnx.Optimizer` and orbax-checkpoint", tmp_path, monkeypatch)
  nnx = ns["nnx"]
  model, optimizer = ns["create"]()
  for _ in range(6):
    ns["train_step"](model, optimizer)
  assert int(ns["optimizer"].step[...]) == 6
  assert_trees_close(nnx.state((ns["model"], ns["optimizer"])), nnx.state((model, optimizer)))


def test_equinox_resumes_bit_identically(tmp_path, monkeypatch):
  ns = _run("Equinox: `eqx.tree_serialise_leaves`", tmp_path, monkeypatch)
  eqx = ns["eqx"]
  model, opt_state = ns["create"]()
  for _ in range(6):
    model, opt_state = ns["train_step"](model, opt_state)
  assert_trees_close(
    (eqx.filter(ns["model"], eqx.is_array), ns["opt_state"]),
    (eqx.filter(model, eqx.is_array), opt_state),
  )
