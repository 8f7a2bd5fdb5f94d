"""The default a user gets on one CPU: this process has one CPU device, and AdamP/SGDP run the kernel.

``cpu_kernel=None`` runs the fused CPU kernel only when the process has a single
CPU device; the main suite keeps XLA's default of one (tests/conftest.py), so
this pins that default as users get it. The tests with several devices are in
``tests/multi_device``, run in a subprocess by tests/test_multi_device.py.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import decoupled_optax as dopt


def _tree() -> dict:
  rng = np.random.default_rng(0)
  shapes = {"conv": (3, 3, 4, 8), "dense": (6, 5), "bias": (5,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _cpu_text(tx, params) -> str:
  """The update lowered for the CPU (whatever the default backend)."""
  grads = jax.tree.map(jnp.cos, params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  return step.trace(params, tx.init(params), grads).lower(lowering_platforms=("cpu",)).as_text()


def test_the_main_suite_has_one_cpu_device():
  assert jax.device_count("cpu") == 1, (
    "the main suite must see one CPU device, as users do; "
    "the multi-device tests belong in tests/multi_device"
  )


def test_the_default_runs_the_kernel_on_one_cpu_device():
  params = _tree()
  if dopt.cpu_kernel_available():
    # conv and dense; not the bias.
    assert (
      _cpu_text(dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper"), params).count(
        "decoupled_optax_first_pass_adam"
      )
      == 2
    )
    assert _cpu_text(dopt.sgdp(0.1, 0.9), params).count("decoupled_optax_first_pass_momentum") == 2
  else:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", dopt.CPUKernelWarning)  # the missing kernel's, once
      txs = [dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper"), dopt.sgdp(0.1, 0.9)]
    generic = [
      dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper"),
      dopt.sgdp(0.1, 0.9, cpu_kernel=False),
    ]
    grads = jax.tree.map(jnp.cos, params)
    for tx, reference in zip(txs, generic, strict=True):
      assert "decoupled_optax_first_pass" not in _cpu_text(tx, params)
      updates, _ = tx.update(grads, tx.init(params), params)
      expected, _ = reference.update(grads, reference.init(params), params)
      for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
