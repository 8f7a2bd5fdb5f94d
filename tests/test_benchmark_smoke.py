"""Smoke test of benchmarks/update_step.py: it runs on a tiny tree and writes well-formed results.

The benchmark itself is not a timed test; this only checks that it runs and
that its JSON and Markdown are complete. It takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "update_step.py"


@pytest.fixture(scope="module")
def update_step():
  spec = importlib.util.spec_from_file_location("update_step", BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  sys.modules["update_step"] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def test_trees_have_the_advertised_sizes(update_step):
  import jax

  resnet = jax.tree.leaves(update_step.resnet50_tree(), is_leaf=update_step.is_spec)
  assert len(resnet) == 161
  assert sum(math.prod(leaf.shape) for leaf in resnet) == 25_557_032
  gpt2 = jax.tree.leaves(update_step.gpt2_tree(), is_leaf=update_step.is_spec)
  assert sum(math.prod(leaf.shape) for leaf in gpt2) == 124_439_808


def test_smoke_run_writes_well_formed_results(update_step, tmp_path):
  only = "ours adamw,optax.adamw,ours adamp,ours sgdp,optax.sgd,official AdamP"
  update_step.main(["--smoke", "--out", str(tmp_path), "--name", "smoke", "--only", only])
  report = json.loads((tmp_path / "smoke.json").read_text())
  assert report["command"].startswith("python update_step.py --smoke")
  assert report["machine"]["jax"] and report["machine"]["cpu_count"]
  (tree,) = report["trees"]
  assert tree["tree"] == "tiny" and tree["copy_bandwidth_gb_per_s"] > 0
  names = {row["name"] for row in tree["candidates"]}
  assert {"ours adamw", "optax.adamw", "ours adamp", "ours sgdp", "optax.sgd"} <= names
  for row in tree["candidates"]:
    assert row["median_ms"] > 0 and row["q1_ms"] <= row["q3_ms"]
    assert row["gb_per_s"] > 0 and row["floor_ms"] > 0
    if row["framework"] == "jax" and row["kind"] != "copy":
      assert row["compile_s"] > 0 and row["xla_peak_bytes"] > 0 and row["hlo_fusions"] > 0
  targets = {t["target"]: t for t in tree["targets"]}
  assert "ours adamp / optax.adamw (time)" in targets
  for target in targets.values():
    assert isinstance(target["met"], bool) and math.isfinite(target["value"])
  markdown = (tmp_path / "smoke.md").read_text()
  assert markdown.startswith("# Update-step benchmark")
  assert "| ours adamp |" in markdown and "| target | measured | bound | met |" in markdown


def test_device_time_mode_runs_k_updates_per_call(update_step, tmp_path):
  """K updates in one jitted fori_loop give the same params as K single updates."""
  params, grads = update_step.make_arrays(update_step.tiny_tree())
  grads = jax.tree.map(jnp.asarray, grads)
  factory = lambda: update_step.dopt.adamp(1e-3, 1e-5)  # noqa: E731
  looped, state, _, _ = update_step.compile_jax(
    factory, jax.tree.map(jnp.array, params), grads, 1, steps_per_call=3
  )
  single, single_state, _, _ = update_step.compile_jax(
    factory, jax.tree.map(jnp.array, params), grads, 1
  )
  p_loop, _ = looped(jax.tree.map(jnp.array, params), state, grads)
  p_single = jax.tree.map(jnp.array, params)
  for i in range(3):
    scaled = jax.tree.map(lambda g, i=i: g * (1.0 + 1e-6 * i), grads)
    p_single, single_state = single(p_single, single_state, scaled)
  for a, b in zip(jax.tree.leaves(p_loop), jax.tree.leaves(p_single), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  update_step.main(
    ["--smoke", "--device-time", "3", "--out", str(tmp_path), "--name", "k", "--only", "ours adamw"]
  )
  (tree,) = json.loads((tmp_path / "k.json").read_text())["trees"]
  assert tree["steps_per_call"] == 3
