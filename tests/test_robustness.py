"""Bad hyperparameters fail at construction; degenerate leaves and low precision stay well behaved."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt

BAD_ARGUMENTS = [
  (dopt.adamw, dict(learning_rate=-1e-3, weight_decay=0.0), "learning_rate", r"\[0, inf\)"),
  (dopt.adamw, dict(learning_rate=1e-3, weight_decay=-1e-4), "weight_decay", r"\[0, inf\)"),
  (dopt.adamw, dict(learning_rate=1e-3, weight_decay=0.0, b1=1.0), "b1", r"\[0, 1\)"),
  (dopt.adamw, dict(learning_rate=1e-3, weight_decay=0.0, b2=-0.1), "b2", r"\[0, 1\)"),
  (dopt.adamw, dict(learning_rate=float("nan"), weight_decay=0.0), "learning_rate", r"\[0, inf\)"),
  (dopt.sgdw, dict(learning_rate=0.1, momentum=1.0), "momentum", r"\[0, 1\)"),
  (dopt.sgdw, dict(learning_rate=0.1, momentum=-0.5), "momentum", r"\[0, 1\)"),
  (dopt.sgdw, dict(learning_rate=-0.1), "learning_rate", r"\[0, inf\)"),
  (dopt.adamp, dict(learning_rate=1e-3, weight_decay=0.0, delta=0.0), "delta", r"\(0, inf\)"),
  (
    dopt.adamp,
    dict(learning_rate=1e-3, weight_decay=0.0, wd_ratio=-0.1),
    "wd_ratio",
    r"\[0, inf\)",
  ),
  (dopt.adamp, dict(learning_rate=1e-3, weight_decay=0.0, b1=1.5), "b1", r"\[0, 1\)"),
  (dopt.sgdp, dict(learning_rate=0.1, momentum=1.0), "momentum", r"\[0, 1\)"),
  (dopt.sgdp, dict(learning_rate=0.1, delta=-1.0), "delta", r"\(0, inf\)"),
  (dopt.sgdp, dict(learning_rate=0.1, weight_decay=-1.0), "weight_decay", r"\[0, inf\)"),
  (dopt.add_decoupled_weight_decay, dict(weight_decay=-1.0), "weight_decay", r"\[0, inf\)"),
  (
    dopt.cosine_warm_restart_schedule,
    dict(init_value=1.0, first_period=0),
    "first_period",
    r"\[1, inf\)",
  ),
  (
    dopt.cosine_warm_restart_schedule,
    dict(init_value=1.0, first_period=10, period_mult=0.5),
    "period_mult",
    r"\[1, inf\)",
  ),
  (
    dopt.cosine_warm_restart_schedule,
    dict(init_value=1.0, first_period=2.5),
    "first_period",
    "an integer >= 1",
  ),
  (
    dopt.normalized_weight_decay,
    dict(lambda_norm=0.05, batch_size=0, num_train_points=10, num_epochs=1),
    "batch_size",
    r"\(0, inf\)",
  ),
  (
    dopt.normalized_weight_decay,
    dict(lambda_norm=0.05, batch_size=10, num_train_points=-1, num_epochs=1),
    "num_train_points",
    r"\(0, inf\)",
  ),
  (
    dopt.normalized_weight_decay,
    dict(lambda_norm=0.05, batch_size=10, num_train_points=10, num_epochs=0),
    "num_epochs",
    r"\(0, inf\)",
  ),
  (
    dopt.normalized_weight_decay_schedule,
    dict(lambda_norm=0.05, batch_size=0, num_train_points=10, first_period=5),
    "batch_size",
    r"\(0, inf\)",
  ),
  (
    dopt.normalized_weight_decay_schedule,
    dict(lambda_norm=0.05, batch_size=1, num_train_points=10, first_period=0),
    "first_period",
    r"\[1, inf\)",
  ),
]


@pytest.mark.parametrize(
  "factory, kwargs, name, allowed",
  BAD_ARGUMENTS,
  ids=[f"{f.__name__}-{n}" for f, _, n, _ in BAD_ARGUMENTS],
)
def test_bad_hyperparameters_raise_naming_argument_and_range(factory, kwargs, name, allowed):
  with pytest.raises(ValueError, match=rf"{name} must be (in )?{allowed}"):
    factory(**kwargs)


def test_paper_mode_rejects_a_learning_rate_schedule():
  with pytest.raises(ValueError, match="schedule="):
    dopt.adamw(lambda count: 1e-3, weight_decay=1e-5)
  dopt.adamw(lambda count: 1e-3, weight_decay=1e-2, scale_weight_decay_by_lr=True)  # allowed there


def test_traced_hyperparameters_are_accepted():
  params = {"w": jnp.ones((2, 3))}

  @jax.jit
  def step(lr, wd, b1, momentum):
    a = dopt.adamp(lr, wd, b1=b1)
    s = dopt.sgdp(lr, momentum, wd)
    return a.update(params, a.init(params), params)[0], s.update(params, s.init(params), params)[0]

  step(1e-3, 1e-5, 0.9, 0.9)


ALIASES = [
  lambda: dopt.adamw(1e-3, 1e-5),
  lambda: dopt.adamw(1e-3, 1e-2, nesterov=True, scale_weight_decay_by_lr=True),
  lambda: dopt.sgdw(0.1, 0.9, 1e-5, nesterov=True),
  lambda: dopt.adamp(1e-3, 1e-5),
  lambda: dopt.adamp(1e-3, 1e-5, nesterov=True),
  lambda: dopt.sgdp(0.1, 0.9, 1e-5),
  lambda: dopt.sgdp(0.1, 0.9, 1e-5, nesterov=True),
]
ALIAS_IDS = [
  "adamw",
  "adamw-nesterov-torch",
  "sgdw",
  "adamp",
  "adamp-nesterov",
  "sgdp",
  "sgdp-nesterov",
]


def _degenerate_tree(dtype=jnp.float32):
  return {
    "zero_kernel": jnp.zeros((3, 3, 2, 4), dtype),
    "kernel": jnp.ones((5, 4), dtype),
    "zero_bias": jnp.zeros(4, dtype),
    "scalar": jnp.zeros((), dtype),
    "empty": jnp.zeros((0, 4), dtype),
    "empty_channels": jnp.zeros((4, 0), dtype),
    "empty_vector": jnp.zeros((0,), dtype),
  }


@pytest.mark.parametrize("make", ALIASES, ids=ALIAS_IDS)
@pytest.mark.parametrize("grads_kind", ["zero", "ones"])
def test_zero_empty_and_0d_leaves_give_finite_updates(make, grads_kind):
  tx = make()
  params = _degenerate_tree()
  fill = jnp.zeros_like if grads_kind == "zero" else jnp.ones_like
  grads = jax.tree.map(fill, params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  for path, leaf in jax.tree_util.tree_leaves_with_path((updates, params, state)):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
      assert bool(jnp.all(jnp.isfinite(leaf))), path
  assert updates["empty"].shape == (0, 4) and updates["scalar"].shape == ()


@pytest.mark.parametrize("make", ALIASES, ids=ALIAS_IDS)
def test_bfloat16_params_get_bfloat16_updates(make):
  tx = make()
  params = jax.tree.map(lambda x: x + 0.5, _degenerate_tree(jnp.bfloat16))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.25), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for name, leaf in updates.items():
    assert leaf.dtype == jnp.bfloat16, name
  new = optax.apply_updates(params, updates)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(new))


def test_float32_statistics_for_bfloat16_projection():
  """The projection's sums run in float32: bf16 leaves lose nothing beyond their own rounding."""
  rng = np.random.default_rng(0)
  w = rng.standard_normal((64, 32)).astype(np.float32)
  g = rng.standard_normal((64, 32)).astype(np.float32)
  g -= w * np.sum(w * g, 0) / np.sum(w * w, 0)  # orthogonal per channel
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    params, grads = {"k": jnp.asarray(w, dtype)}, {"k": jnp.asarray(g, dtype)}
    tx = dopt.sgdp(1.0, momentum=0.0)
    results[dtype] = np.asarray(tx.update(grads, tx.init(params), params)[0]["k"], np.float32)
  np.testing.assert_allclose(results[jnp.bfloat16], results[jnp.float32], atol=0.05, rtol=0.02)
