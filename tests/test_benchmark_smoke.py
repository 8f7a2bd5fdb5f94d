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

# The benchmarks' smoke runs: part of the extended run (README, Testing).
pytestmark = pytest.mark.extended

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
  factory = lambda: update_step.dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper")  # noqa: E731
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


# The powered reproductions on MNIST-1D (benchmarks/repro_decoupling.py, repro_warm_restarts.py):
# the data is generated without network access, and each --smoke run (a tiny grid, a few steps,
# compiled at O0) writes complete results; about 20 s together on 2 cores.

BENCHMARKS = BENCHMARK.parent


def _load_benchmark(name: str):
  for folder in (BENCHMARKS, BENCHMARKS.parent / "examples"):
    if str(folder) not in sys.path:
      sys.path.insert(0, str(folder))
  spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def test_mnist1d_is_generated_without_network_access(monkeypatch):
  import socket

  import numpy as np

  mnist1d = _load_benchmark("_mnist1d")

  def refuse(*args, **kwargs):
    raise AssertionError("MNIST-1D tried to reach the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  state = np.random.get_state()
  data = mnist1d.load_mnist1d.__wrapped__(200, 100, 7)
  assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator is restored
  assert data.x_train.shape == (200, 40, 1) and data.x_test.shape == (100, 40, 1)
  assert set(np.unique(data.y_train)) == set(range(10))
  again = mnist1d.load_mnist1d.__wrapped__(200, 100, 7)
  assert np.array_equal(data.x_test, again.x_test)  # deterministic in its seed


def test_repro_decoupling_smoke(tmp_path):
  _load_benchmark("repro_decoupling").main(["--smoke", "--out", str(tmp_path)])
  report = json.loads((tmp_path / "repro_decoupling.json").read_text())
  assert report["command"].startswith("python benchmarks/repro_decoupling.py --smoke")
  assert report["dataset"]["name"] == "MNIST-1D" and report["library_version"]
  assert set(report["grids"]) == {"Adam+L2", "AdamW", "SGD+L2", "SGDW"}
  for grid in report["grids"].values():
    assert len(grid["slope_bootstrap_95"]) == 2 and grid["verdict"]
    assert len(grid["test_error_mean"]) == 2 and len(grid["test_error_mean"][0]) == 3
  assert "angular_ratio_mid" in report["grids"]["AdamW"]
  assert (tmp_path / "repro_decoupling.md").read_text().startswith("# Decoupling")
  for figure in ("repro_decoupling.png", "repro_decoupling_equilibrium.png"):
    assert (tmp_path / figure).stat().st_size > 0


def test_repro_warm_restarts_smoke(tmp_path):
  _load_benchmark("repro_warm_restarts").main(["--smoke", "--out", str(tmp_path)])
  report = json.loads((tmp_path / "repro_warm_restarts.json").read_text())
  assert report["command"].startswith("python benchmarks/repro_warm_restarts.py --smoke")
  assert report["period_ends_epochs"] == [1, 3, 7]
  pairs = {c["pair"] for c in report["comparisons"]}
  assert pairs == {"AdamWR - AdamW (cosine)", "SGDWR - SGDW (cosine)"}
  assert len(report["comparisons"]) == 2 * 2 * 3  # pairs x lambda_norms x period ends
  for curve in report["test_error_per_epoch"].values():
    assert len(curve[0][0]) == 7  # one test error per epoch
  assert (tmp_path / "repro_warm_restarts.png").stat().st_size > 0


def test_compile_time_smoke(tmp_path):
  _load_benchmark("compile_time").main(["--smoke", "--out", str(tmp_path)])
  report = json.loads((tmp_path / "compile_time_cpu.json").read_text())
  assert {row["tree"] for row in report["rows"]} == {"tiny", "mlp_20", "mlp_40"}
  for row in report["rows"]:
    assert 0 < row["trace"] <= row["total"] and row["compile"] > 0
  assert set(report["seconds_per_leaf"]) == {
    "optax.adamw",
    "ours adamw",
    "ours adamp",
    "ours adamp generic",
  }


def test_train_step_smoke(tmp_path):
  _load_benchmark("train_step").main(["--smoke", "--out", str(tmp_path)])
  report = json.loads((tmp_path / "train_step_cpu.json").read_text())
  assert report["steps"] == 3
  assert set(report["median_seconds"]) == {
    "optax.adamw",
    "ours adamp",
    "ours adamp + diagnostics every 10",
    "ours adamp + diagnostics every 1",
  }
  assert all(seconds > 0 for seconds in report["median_seconds"].values())
  assert (tmp_path / "train_step_cpu.md").read_text().startswith("# A whole ResNet-18")


def test_repro_adamp_cautious_smoke(tmp_path):
  report = _load_benchmark("repro_adamp_cautious").main(["--smoke", "--out", str(tmp_path)])
  assert set(report["results"]) == {
    "AdamW",
    "AdamP",
    "SGD",
    "SGDP",
    "AdamW, plain decay",
    "AdamW, cautious decay",
  }
  for result in report["results"].values():
    assert len(result["test_error"]) == 2 and result["chosen"] in result["grid"]
  pairs = {c["pair"]: c for c in report["comparisons"]}
  assert set(pairs) == {
    "AdamP - AdamW",
    "SGDP - SGD",
    "AdamW, cautious decay - AdamW, plain decay",
  }
  assert all(c["verdict"] for c in pairs.values())
  payload = json.loads((tmp_path / "repro_adamp_cautious.json").read_text())
  assert payload["command"].startswith("python benchmarks/repro_adamp_cautious.py --smoke")
  assert (tmp_path / "repro_adamp_cautious.png").stat().st_size > 0


def test_repro_corrected_decay_smoke(tmp_path):
  report = _load_benchmark("repro_corrected_decay").main(["--smoke", "--out", str(tmp_path)])
  assert set(report["summary"]) == {"paper", "corrected"}
  for summary in report["summary"].values():
    assert len(summary["rise_per_seed"]) == 2 and len(summary["rise"]) == 3
    assert np.isfinite(summary["equilibrium_ratio_mid"][0])
  payload = json.loads((tmp_path / "repro_corrected_decay.json").read_text())
  assert payload["command"].startswith("python benchmarks/repro_corrected_decay.py --smoke")
  assert (tmp_path / "repro_corrected_decay.png").stat().st_size > 0
