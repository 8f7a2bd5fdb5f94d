"""Degenerate leaves through every public transform: None, empty, 0-d and optax.MaskedNode.

Equinox users pass ``eqx.filter(model, eqx.is_inexact_array)``, which keeps a
``None`` for every non-array field (four in each ``eqx.nn.BatchNorm``);
``optax.masked`` hands its inner transform ``optax.MaskedNode`` leaves. Every
transform must init and run jitted updates on such trees: no crash, no NaN,
``None`` stays ``None`` and every update keeps its param's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt


def _chain_with_projection(**options: Any) -> optax.GradientTransformation:
  return dopt.detect_scale_invariance(
    optax.chain(
      optax.scale_by_adam(),
      dopt.project_out_radial(),
      dopt.add_decoupled_weight_decay(1e-4),
      optax.scale(-1e-3),
    ),
    dopt.RadialProjection(**options),
  )


def _fused(direction: dopt.Direction, cpu_kernel: bool) -> optax.GradientTransformation:
  tail = optax.chain(
    dopt.project_out_radial(), dopt.add_decoupled_weight_decay(1e-4), optax.scale(-1e-2)
  )
  return dopt.fused_scale_invariance(direction, tail, dopt.RadialProjection(cpu_kernel=cpu_kernel))


TRANSFORMS: list[tuple[str, Callable[[], optax.GradientTransformation]]] = [
  ("adamw", lambda: dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper")),
  (
    "adamw-mask",
    lambda: dopt.adamw(1e-3, 1e-4, mask=dopt.weight_decay_mask, weight_decay_convention="paper"),
  ),
  ("sgdw", lambda: dopt.sgdw(0.1, 0.9, 1e-4, nesterov=True, weight_decay_convention="paper")),
  (
    "adamp-kernel",
    lambda: dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper"),
  ),
  (
    "adamp-generic",
    lambda: dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper"),
  ),
  (
    "sgdp-kernel",
    lambda: dopt.sgdp(0.1, 0.9, 1e-4, cpu_kernel=True, weight_decay_convention="paper"),
  ),
  (
    "sgdp-generic",
    lambda: dopt.sgdp(0.1, 0.9, 1e-4, cpu_kernel=False, weight_decay_convention="paper"),
  ),
  (
    "decoupled_chain-lion",
    lambda: dopt.decoupled_chain(
      optax.scale_by_lion(),
      learning_rate=1e-4,
      weight_decay=1e-5,
      schedule=0.5,
      weight_decay_convention="paper",
    ),
  ),
  (
    "decoupled_chain-projection",
    lambda: dopt.decoupled_chain(
      optax.scale_by_rms(),
      learning_rate=1e-3,
      weight_decay=1e-5,
      radial_projection=dopt.RadialProjection(wd_ratio=0.5),
      weight_decay_convention="torch",
    ),
  ),
  ("add_decoupled_weight_decay", lambda: dopt.add_decoupled_weight_decay(1e-4)),
  (
    "add_decoupled_weight_decay-schedule-mask",
    lambda: dopt.add_decoupled_weight_decay(
      optax.linear_schedule(1e-4, 0.0, 10), mask=dopt.weight_decay_mask
    ),
  ),
  ("detect_scale_invariance", _chain_with_projection),
  ("fused-adam-kernel", lambda: _fused(dopt.AdamDirection(), True)),
  ("fused-adam-generic", lambda: _fused(dopt.AdamDirection(), False)),
  ("fused-momentum-kernel", lambda: _fused(dopt.MomentumDirection(0.9, True), True)),
  ("keep_param_sharding", lambda: dopt.keep_param_sharding(optax.adam(1e-3))),
  (
    "inject_hyperparams-adamp",
    lambda: dopt.inject_hyperparams(dopt.adamp)(
      1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper"
    ),
  ),
  (
    "inject_hyperparams-adamw-mask",
    lambda: dopt.inject_hyperparams(dopt.adamw)(
      1e-3, 1e-4, mask=dopt.weight_decay_mask, weight_decay_convention="paper"
    ),
  ),
]
if not dopt.cpu_kernel_available():  # the kernel variants need the built extension
  TRANSFORMS = [(n, m) for n, m in TRANSFORMS if "kernel" not in n]
WRAPPED = [(name, make, False) for name, make in TRANSFORMS] + [
  (f"with_diagnostics({name})", make, True) for name, make in TRANSFORMS
]


def _degenerate_params() -> dict[str, Any]:
  return {
    "kernel": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5,
    "bf16_kernel": jnp.ones((2, 3, 4), jnp.bfloat16),
    "bias": jnp.full((3,), 0.5),
    "scalar": jnp.asarray(2.0),
    "empty": jnp.zeros((0,)),
    "empty_rows": jnp.zeros((0, 3)),
    "nothing": None,
    "masked": optax.MaskedNode(),
    "nested": {"none": None, "w": jnp.ones((3, 2), jnp.float16)},
  }


def _grads_like(params: Any) -> Any:
  # 0.5 + a ramp: neither orthogonal to the weights nor constant.
  return jax.tree.map(
    lambda p: (jnp.full(p.shape, 0.5) + jnp.arange(p.size).reshape(p.shape) / 7).astype(p.dtype),
    params,
  )


def _is_none(x: Any) -> bool:
  return x is None


def _check_two_jitted_steps(tx: optax.GradientTransformation, params: Any) -> None:
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(2):
    updates, state = step(_grads_like(params), state, params)
    new_params = optax.apply_updates(params, updates)
    # None stays None and MaskedNode stays MaskedNode: the same tree, None as a leaf.
    assert jax.tree.structure(updates, is_leaf=_is_none) == jax.tree.structure(
      params, is_leaf=_is_none
    )
    assert jax.tree.structure(new_params, is_leaf=_is_none) == jax.tree.structure(
      params, is_leaf=_is_none
    )
    for (path, u), p, n in zip(
      jax.tree_util.tree_leaves_with_path(updates),
      jax.tree.leaves(params),
      jax.tree.leaves(new_params),
      strict=True,
    ):
      where = jax.tree_util.keystr(path)
      assert u.dtype == p.dtype and n.dtype == p.dtype, where
      assert u.shape == p.shape, where
      assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))), where
    params = new_params
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
      assert bool(jnp.all(jnp.isfinite(jnp.asarray(leaf, jnp.float32)))), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name, make, diagnose", WRAPPED, ids=[n for n, _, _ in WRAPPED])
def test_none_empty_0d_and_masked_leaves(name, make, diagnose):
  tx = make()
  if diagnose:
    tx = dopt.with_diagnostics(tx)
  _check_two_jitted_steps(tx, _degenerate_params())
  if diagnose:
    state = tx.init(_degenerate_params())
    state = tx.update(_grads_like(_degenerate_params()), state, _degenerate_params())[1]
    diagnostics = dopt.read_diagnostics(state)
    assert not any("nothing" in key or "masked" in key for key in diagnostics), name
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in diagnostics.values()), name


def _equinox_params() -> Any:
  eqx = pytest.importorskip("equinox")

  class Net(eqx.Module):
    conv: Any
    norm: Any
    linear: Any

    def __init__(self, key: jax.Array) -> None:
      k1, k2 = jax.random.split(key)
      self.conv = eqx.nn.Conv2d(3, 4, 3, key=k1)
      self.norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")
      self.linear = eqx.nn.Linear(4, 2, key=k2)

  model, _ = eqx.nn.make_with_state(Net)(jax.random.PRNGKey(0))
  params = eqx.filter(model, eqx.is_inexact_array)
  leaves = jax.tree.leaves(params, is_leaf=_is_none)
  assert sum(leaf is None for leaf in leaves) >= 4  # what the fix is about
  return params


@pytest.mark.parametrize("name, make, diagnose", WRAPPED, ids=[n for n, _, _ in WRAPPED])
def test_equinox_batchnorm_model_filtered_with_eqx_filter(name, make, diagnose):
  tx = make()
  if diagnose:
    tx = dopt.with_diagnostics(tx)
  _check_two_jitted_steps(tx, _equinox_params())


def test_diagnostics_of_adamp_report_the_equinox_conv_weight():
  """The projection's decisions are merged only where params have arrays."""
  params = _equinox_params()
  tx = dopt.with_diagnostics(
    dopt.adamp(1e-3, 1e-4, channel_axis=0, weight_decay_convention="paper")
  )
  state = tx.update(_grads_like(params), tx.init(params), params)[1]
  diagnostics = dopt.read_diagnostics(state)
  assert "projection/conv/weight" in diagnostics
  assert "projection/norm/batch_counter" not in diagnostics
  np.testing.assert_array_equal(diagnostics["weight_decay_multiplier/norm/bias"], 1.0)
