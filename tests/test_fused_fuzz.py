"""Randomized kernel-against-generic tests, and the kernel's memory bound.

tests/test_fused.py pins the kernel on typical layouts; here random trees
with 1-sized and very unequal dimensions, every channel axis, and gradients
that are orthogonal, zero, tiny, huge, subnormal or not finite go through
``cpu_kernel=True`` and ``cpu_kernel=False`` side by side. The kernel's
threaded paths, which small leaves on two cores never reach, run in a
subprocess that forces the thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

import decoupled_optax as dopt
from decoupled_optax import fused

# Randomized and subprocess runs: part of the extended run (README, Testing).

pytestmark = [
  pytest.mark.extended,
  pytest.mark.skipif(not fused.cpu_kernel_available(), reason="kernel not built"),
]

FLOAT32_EPS = 2.0**-24  # unit roundoff

# The kernel's stack scratch per thread (csrc/radial_first_pass.cc): one row
# block's float sums and one chunk's double sums for 1024 channels, 4
# statistics each.
PER_THREAD_BYTES = 4 * 1024 * (4 + 8)

PLAN_SHAPES = [
  (1, 2**24, 1),
  (64, 256000, 1),
  (2304, 256, 1),  # a 3x3x256x256 HWIO conv, channel last
  (2048, 1000, 1),
  (1, 1, 1),
  (7, 3, 65537),
  (1, 1, 2**24),
  (2**20, 1, 16),
  (15, 2**20, 1),
  (300, 70000, 1),
  (1, 70000, 3),
  (4096, 4096, 1),
]


def _plan(outer, channels, inner, **kw):
  from decoupled_optax import _cpu_kernels  # type: ignore[attr-defined]

  return _cpu_kernels.plan(outer, channels, inner, **kw)


@pytest.mark.parametrize("layout", PLAN_SHAPES, ids=str)
def test_kernel_scratch_is_bounded_by_the_leaf(layout):
  """At most half the leaf plus PER_THREAD_BYTES per thread, on any core count.

  Splitting rows gives every thread double sums of all channels; the plan
  allows that only while they total at most half the leaf (threads * 32 bytes
  per channel <= 2 bytes per element), else it splits channels, which needs
  only the per-thread chunks. The thread count the kernel picks is at most one
  per 2^18 elements, so on any number of cores those chunks add under 5% of
  the leaf (48 KiB per 1 MiB), or 48 KiB for one thread.
  """
  leaf_bytes = 4 * int(np.prod(layout))
  for threads in range(1, 257):
    for plan in (_plan(*layout, cores=threads), _plan(*layout, threads=threads)):
      assert 1 <= plan["threads"] <= threads
      assert plan["scratch_bytes"] <= 0.5 * leaf_bytes + plan["threads"] * PER_THREAD_BYTES, plan
    automatic = _plan(*layout, cores=threads)
    assert automatic["scratch_bytes"] <= 0.55 * leaf_bytes + PER_THREAD_BYTES, automatic


def test_normal_leaves_keep_the_row_split():
  # The fast path on 2 cores for ResNet/GPT kernels: rows over threads, all channels at once.
  for layout in [(2304, 256, 1), (2048, 1000, 1), (768, 3072, 1)]:
    assert _plan(*layout, cores=2) == {
      "threads": 2,
      "split_rows": True,
      "scratch_bytes": 2 * (4 * layout[1] * 8 + 4 * 1024 * 4),
    }


_RSS_SCRIPT = textwrap.dedent(
  """
  import json, resource, sys
  import jax, jax.numpy as jnp, numpy as np
  import decoupled_optax as dopt
  from decoupled_optax import _cpu_kernels

  shape = (1, 2**22)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal(shape, np.float32))}
  grads = {"w": jnp.asarray(rng.standard_normal(shape, np.float32))}
  tx = dopt.adamp(1e-3, 1e-2, cpu_kernel=True, weight_decay_convention="paper")
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(params, state, grads).compile()
  assert "decoupled_optax_first_pass_adam" in step.as_text()
  memory = step.memory_analysis()
  xla = memory.output_size_in_bytes + memory.temp_size_in_bytes - memory.alias_size_in_bytes
  jax.block_until_ready((params, state, grads))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  jax.block_until_ready(step(params, state, grads))
  growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
  print(json.dumps(dict(growth=growth, xla=xla, leaf=4 * 2**22,
                        threads=_cpu_kernels.plan(1, 2**22, 1)["threads"])))
  """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB on Linux")
def test_a_wide_leaf_costs_no_more_memory_than_xla_accounts_for():
  """One step on a (1, 2^22) leaf on 8 forced threads: RSS growth ~ XLA's own buffers.

  XLA's outputs and temporaries (``memory_analysis``) bound what XLA touches;
  the kernel's scratch is invisible to it. Before the channel chunks, the
  kernel's 4 * channels doubles plus a 4 * channels float block per thread
  came to 16x this leaf on 2 threads and RSS grew 5x the leaf past XLA's
  accounting; now it is ~1 MiB past it. The margin is one leaf.
  """
  env = dict(os.environ, DECOUPLED_OPTAX_CPU_KERNEL_THREADS="8", XLA_FLAGS="")
  out = subprocess.run(
    [sys.executable, "-c", _RSS_SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["threads"] == 8
  assert result["growth"] <= result["xla"] + result["leaf"], result


# The fuzz: leaves of 2 to 4 dimensions, so that channel_axis 0, 1, -2 and -1
# are valid for all of them and reach every axis of each.
FUZZ_SHAPES = [
  (1, 5),
  (5, 1),
  (2, 70000),  # 70,000 channels on the last axis: past 65,536, and past a chunk
  (6, 7),
  (1, 1, 300),
  (4, 1, 7),
  (3, 65, 2),
  (3, 3, 2, 4),
  (1, 3, 1, 5),
]
KINDS = ["random", "orthogonal", "zero", "tiny", "huge", "subnormal", "nonfinite"]
CHANNEL_AXES = [0, 1, -2, -1]
OPTIMIZERS = {
  "adamp": lambda **kw: dopt.adamp(1e-2, 1e-2, weight_decay_convention="torch", **kw),
  "adamp_nesterov": lambda **kw: dopt.adamp(
    1e-2, 1e-3, nesterov=True, weight_decay_convention="paper", **kw
  ),
  "sgdp": lambda **kw: dopt.sgdp(1e-2, 0.9, 1e-2, weight_decay_convention="torch", **kw),
  "sgdp_nesterov": lambda **kw: dopt.sgdp(
    1e-2, 0.9, 1e-3, nesterov=True, weight_decay_convention="paper", **kw
  ),
}


def _gradient(rng, w: np.ndarray, kind: str, channel_axis: int) -> np.ndarray:
  g = rng.standard_normal(w.shape).astype(np.float32)
  if kind == "orthogonal":  # as behind a BatchNorm: orthogonal to w per channel
    axes = tuple(a for a in range(w.ndim) if a != channel_axis % w.ndim)
    ww = (w * w).sum(axes, keepdims=True)
    g = g - w * ((w * g).sum(axes, keepdims=True) / np.where(ww > 0, ww, 1))
  elif kind == "zero":
    g = np.zeros_like(g)
  elif kind == "tiny":
    g = g * np.float32(1e-30)  # g*g underflows to 0, g*w does not
  elif kind == "huge":
    g = g * np.float32(1e30)  # g*g overflows to inf
  elif kind == "subnormal":
    g = g * np.float32(1e-41)
  elif kind == "nonfinite":
    flat = g.reshape(-1)
    picks = rng.choice(flat.size, size=min(3, flat.size), replace=False)
    flat[picks] = np.array([np.nan, np.inf, -np.inf], np.float32)[: picks.size]
  return g.astype(np.float32)


def _tolerance(size: int) -> float:
  """Relative to the leaf's scale: the two paths sum the statistics in different orders.

  XLA sums n float32 products in float32, the kernel in double over float
  blocks of 64; the difference of the sums is a rounding error of ~sqrt(n)
  units of 2^-24 relative to sum |x| (random-walk accumulation; the leaf's size
  bounds n for the whole-tensor test too), which the projection carries into
  the update as the same relative error of |u|'s scale. Factor 16 for the
  constants of the cosines and the projection coefficient.
  """
  return 16 * np.sqrt(size) * FLOAT32_EPS


def _assert_close(actual, desired, tolerance: float, what: str):
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.dtype == desired.dtype and actual.shape == desired.shape, what
  if not np.issubdtype(desired.dtype, np.floating):
    np.testing.assert_array_equal(actual, desired, err_msg=what)
    return
  finite = desired[np.isfinite(desired)]
  scale = float(np.max(np.abs(finite), initial=0.0))
  np.testing.assert_allclose(
    actual, desired, rtol=tolerance, atol=tolerance * scale + 1e-37, equal_nan=True, err_msg=what
  )


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_kernel_agrees_with_the_generic_chain_on_random_trees(name):
  for axis_index, channel_axis in enumerate(CHANNEL_AXES):
    config = sorted(OPTIMIZERS).index(name) * len(CHANNEL_AXES) + axis_index
    rng = np.random.default_rng(config)
    # Each config gives each leaf another kind, so every shape meets several.
    kinds = {
      f"{i}_{KINDS[(i + config) % len(KINDS)]}": shape for i, shape in enumerate(FUZZ_SHAPES)
    }
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in kinds.items()}
    txs = [OPTIMIZERS[name](channel_axis=channel_axis, cpu_kernel=k) for k in (True, False)]
    steps = [jax.jit(lambda p, s, g, tx=tx: tx.update(g, s, p)) for tx in txs]
    states = [tx.init(params) for tx in txs]
    for step_index in range(3):
      grads = {
        k: _gradient(rng, params[k], k.split("_", 1)[1], channel_axis) * (1 + step_index)
        for k in params
      }
      (kernel, kernel_state), (generic, generic_state) = (
        step(params, state, grads) for step, state in zip(steps, states, strict=True)
      )
      states = [kernel_state, generic_state]
      where = f"{name} channel_axis={channel_axis} step {step_index}"
      for k in params:
        _assert_close(kernel[k], generic[k], _tolerance(params[k].size), f"{where} update {k}")
      # The moments are elementwise (no sums): equal to a few roundings.
      flat_kernel = jax.tree_util.tree_flatten_with_path(kernel_state)[0]
      flat_generic = jax.tree.leaves(generic_state)
      assert len(flat_kernel) == len(flat_generic)
      for (path, a), d in zip(flat_kernel, flat_generic, strict=True):
        _assert_close(a, d, 4 * FLOAT32_EPS, f"{where} state {jax.tree_util.keystr(path)}")
      params = optax.apply_updates(params, jax.tree.map(np.asarray, generic))
      params = {k: np.asarray(v) for k, v in params.items()}
    # The kernel must have run: every leaf here is float32 with ndim > 1.
    text = steps[0].lower(params, states[0], grads).as_text()
    assert text.count("decoupled_optax_first_pass_") == len(params)


# Kernel-only cases for the forced-thread run: (shape, channel_axis). With 5
# threads, leaves with outer >= 5 and outer * inner >= 80 split rows, the
# rest split channels (some with fewer channels than threads).
THREAD_CASES = [
  ((400, 3), -1),  # rows
  ((5, 16, 3000), 1),  # rows, inner > 1
  ((1, 5000), -1),  # channels, 5 chunks
  ((3, 2, 7), 1),  # channels, fewer than threads
  ((2, 70000), -1),  # channels
  ((700, 2048), -1),  # rows, 2 chunks
  ((9, 1, 33), 0),  # channels: outer * inner = 33 < 80 for 9 channels
]

_THREADS_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import jax, jax.numpy as jnp, numpy as np, optax
  from decoupled_optax import fused, _cpu_kernels

  assert fused.cpu_kernel_available()  # registers outside jit: its self-test cannot run traced
  cases = json.loads(sys.argv[1])
  direction = fused.AdamDirection(0.9, 0.999, 1e-8, nesterov=True)
  scalars = direction.kernel_scalars(optax.ScaleByAdamState(jnp.int32(2), None, None))
  results = {}
  for index, (shape, axis) in enumerate(cases):
    rng = np.random.default_rng(index)
    g, w, m, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    call = jax.jit(lambda *a: fused._kernel_call(direction, scalars, a[0], a[1], a[2:], axis))
    first = [np.asarray(x) for x in jax.tree.leaves(call(g, w, m, v))]
    again = [np.asarray(x) for x in jax.tree.leaves(call(g, w, m, v))]
    layout = fused._layout(tuple(shape), axis)
    results[index] = dict(
      plan=_cpu_kernels.plan(layout.outer, layout.channels, layout.inner),
      deterministic=all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first, again)),
      outputs=[x.tolist() for x in first],
    )
  print(json.dumps(results))
  """
)


def test_threaded_kernel_paths_agree_with_one_thread():
  """5 forced threads (a subprocess) against this process's single thread, and float64."""
  cases = json.dumps([[list(s), a] for s, a in THREAD_CASES])
  env = dict(os.environ, DECOUPLED_OPTAX_CPU_KERNEL_THREADS="5")
  out = subprocess.run(
    [sys.executable, "-c", _THREADS_SCRIPT, cases],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  results = json.loads(out.stdout.strip().splitlines()[-1])
  direction = fused.AdamDirection(0.9, 0.999, 1e-8, nesterov=True)
  scalars = direction.kernel_scalars(optax.ScaleByAdamState(jax.numpy.int32(2), None, None))
  splits = set()
  for index, (shape, axis) in enumerate(THREAD_CASES):
    threaded = results[str(index)]
    assert threaded["deterministic"]
    layout = fused._layout(shape, axis)
    expected_split = layout.outer >= 5 and layout.outer * layout.inner >= 80
    assert threaded["plan"]["split_rows"] == expected_split, (shape, threaded["plan"])
    assert threaded["plan"]["threads"] == (5 if expected_split else min(5, layout.channels))
    rng = np.random.default_rng(index)
    g, w, m, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    call = jax.jit(
      lambda *a, axis=axis: fused._kernel_call(direction, scalars, *a[:2], a[2:], axis)
    )
    single = [np.asarray(x) for x in jax.tree.leaves(call(g, w, m, v))]
    # Leaves: moments (mu, nu), the direction u (XLA's, from the moments), the
    # statistics. All but the statistics are elementwise: identical whatever
    # the threads.
    for a, b in zip(threaded["outputs"][:-1], single[:-1], strict=True):
      np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    u = np.asarray(single[2], np.float64)
    # u's rounding is relative to its numerator's terms b1 mu and (1 - b1) g,
    # which cancel at times (the kernel may round b1 mu + (1 - b1) g with an
    # FMA where XLA does not, or the reverse): the bound for w.u takes |u|
    # without the cancellation.
    mu, nu = (np.asarray(x, np.float64) for x in single[:2])
    u_abs = (0.9 * np.abs(mu) + 0.1 * np.abs(g)) / (1 - 0.9**2)
    u_abs /= np.sqrt(nu / (1 - 0.999**2)) + 1e-8
    g64, w64, u64, u_abs = (
      np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, layout.channels)
      for x in (g, w, u, u_abs)
    )
    terms = [g64 * w64, g64 * g64, w64 * w64, w64 * u64]
    exact = np.stack([t.sum(0) for t in terms])
    # Float sums of at most 64 products (each rounded once) added in double,
    # then rounded to float: |error| <= 65 * 2^-24 * sum |terms|, whatever the
    # split; a few more for u.
    magnitudes = [np.abs(t) for t in terms[:3]] + [np.abs(w64) * u_abs]
    bound = 72 * FLOAT32_EPS * np.stack([t.sum(0) for t in magnitudes])
    for statistics in (np.asarray(threaded["outputs"][-1], np.float32), single[-1]):
      assert np.all(np.abs(statistics - exact) <= bound), (shape, axis)
    splits.add(expected_split)
  assert splits == {True, False}
