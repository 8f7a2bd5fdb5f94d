"""The directions' moment dtypes: ``mu_dtype`` as in optax, and ``nu_dtype``, which optax lacks.

optax's ``scale_by_adam`` sets the first moment's dtype only (optax #1552).
:class:`decoupled_optax.AdamDirection` and
:func:`decoupled_optax.scale_by_adamp_nesterov` also take the second's: stored
in that dtype after every update, updated in at least float32, and without it
exactly optax's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _trees import assert_trees_close

import decoupled_optax as dopt

B1, B2, EPS = 0.9, 0.999, 1e-8
STEPS = 5


def _params(dtype=jnp.float32) -> dict:
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  return {
    "kernel": jax.random.normal(keys[0], (3, 4, 8)).astype(dtype),
    "bias": jax.random.normal(keys[1], (8,)).astype(dtype),
  }


def _grads(params: dict, step: int) -> dict:
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1.3)).astype(p.dtype), params)


def _run(tx: optax.GradientTransformation, params: dict, steps: int = STEPS) -> list:
  """``steps`` jitted updates: ``(updates, state)`` after each."""
  update = jax.jit(tx.update)
  state, history = tx.init(params), []
  for step in range(steps):
    updates, state = update(_grads(params, step), state, params)
    history.append((updates, state))
  return history


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16, jnp.float32])
def test_without_nu_dtype_adam_is_optax_scale_by_adam_bit_for_bit(mu_dtype, param_dtype):
  params = _params(param_dtype)
  ours = dopt.AdamDirection(B1, B2, EPS, mu_dtype=mu_dtype, nu_dtype=None).transform()
  assert_trees_close(
    _run(ours, params), _run(optax.scale_by_adam(B1, B2, EPS, 0.0, mu_dtype), params)
  )


@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
def test_a_float32_nu_dtype_on_float32_params_changes_no_bit(mu_dtype):
  """nu_dtype runs its own update; where it changes no dtype, it is optax's, bit for bit."""
  params = _params()
  ours = dopt.AdamDirection(B1, B2, EPS, mu_dtype=mu_dtype, nu_dtype=jnp.float32).transform()
  assert_trees_close(
    _run(ours, params), _run(optax.scale_by_adam(B1, B2, EPS, 0.0, mu_dtype), params)
  )
  nesterov = dopt.scale_by_adamp_nesterov(B1, B2, EPS, mu_dtype=mu_dtype, nu_dtype=jnp.float32)
  assert_trees_close(
    _run(nesterov, params), _run(dopt.scale_by_adamp_nesterov(B1, B2, EPS, 0.0, mu_dtype), params)
  )


@pytest.mark.parametrize("nesterov", [False, True])
def test_nu_keeps_its_dtype_and_is_updated_in_float32(nesterov):
  """bfloat16 params and nu: nu = bf16(b2 * f32(nu) + (1 - b2) * f32(g)^2) at every step.

  In bfloat16 arithmetic (optax's, whose nu has the gradients' dtype) the
  default b2 = 0.999 rounds to 1 and nu would never decay.
  """
  params = _params(jnp.bfloat16)
  tx = dopt.AdamDirection(B1, B2, EPS, nesterov, nu_dtype=jnp.bfloat16).transform()
  state = tx.init(params)
  assert isinstance(state, optax.ScaleByAdamState)
  assert _dtypes(state.nu) == {"bfloat16"} and _dtypes(state.mu) == {"bfloat16"}
  nu = jax.tree.map(lambda p: np.zeros(p.shape, np.float32), params)
  for step, (updates, state) in enumerate(_run(tx, params)):
    grads = _grads(params, step)
    nu = jax.tree.map(
      lambda v, g: np.asarray(
        jnp.asarray(B2 * v + (1 - B2) * np.asarray(g, np.float32) ** 2).astype(jnp.bfloat16),
        np.float32,
      ),
      nu,
      grads,
    )
    assert _dtypes(state.nu) == {"bfloat16"} and _dtypes(state.mu) == {"bfloat16"}
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda g: g.dtype, grads)
    for name in params:
      np.testing.assert_array_equal(np.asarray(state.nu[name], np.float32), nu[name])
  assert all(np.all(v > 0) for v in nu.values())


@pytest.mark.parametrize("nesterov", [False, True])
def test_low_precision_moments_of_float32_params_keep_their_dtypes(nesterov):
  """The MaxText case: float32 params, bfloat16 moments; the updates stay float32."""
  params = _params()
  tx = dopt.AdamDirection(
    B1, B2, EPS, nesterov, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
  ).transform()
  assert _dtypes(tx.init(params)[1:]) == {"bfloat16"}
  for updates, state in _run(tx, params):
    assert _dtypes(updates) == {"float32"}
    assert _dtypes((state.mu, state.nu)) == {"bfloat16"}
    assert state.count.dtype == jnp.int32

  def steps(state, step_grads):
    updates, state = tx.update(step_grads, state, params)
    return state, updates

  stacked = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(params, s) for s in range(STEPS)])
  final, updates = jax.jit(lambda s: jax.lax.scan(steps, s, stacked))(tx.init(params))
  assert _dtypes((final.mu, final.nu)) == {"bfloat16"} and _dtypes(updates) == {"float32"}


def test_the_dtype_arguments_are_checked_and_canonical():
  with pytest.raises(TypeError, match="nu_dtype must be a dtype or None, got str"):
    dopt.AdamDirection(nu_dtype="not-a-dtype")
  with pytest.raises(TypeError, match="mu_dtype must be a dtype or None"):
    dopt.AdamDirection(mu_dtype=3.5)
  with pytest.raises(TypeError, match="nu_dtype must be a dtype or None"):
    dopt.scale_by_adamp_nesterov(nu_dtype="not-a-dtype")
  # float64 without jax_enable_x64 is stored as float32, as optax does with mu_dtype.
  state = dopt.AdamDirection(nu_dtype="float64", mu_dtype="float64").transform().init(_params())
  assert _dtypes(state[1:]) == {"float32"}


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("nesterov", [False, True])
def test_angular_equilibrium_factor_is_the_ratio_of_the_coefficient_sums(beta, nesterov):
  # A gradient enters the updates with coefficients c_j at lag j: b^j for heavy-ball momentum
  # (Adam's first moment: (1 - b) b^j, the same ratio); Nesterov: 1 + b, then b^(j+1).
  lags = np.arange(20_000)
  c = beta**lags if not nesterov else np.where(lags == 0, 1 + beta, beta ** (lags + 1))
  expected = np.sum(c**2) / np.sum(c) ** 2
  np.testing.assert_allclose(dopt.angular_equilibrium_factor(beta, nesterov), expected, rtol=1e-9)
  for direction in (
    dopt.AdamDirection(b1=beta, nesterov=nesterov),
    dopt.MomentumDirection(beta, nesterov),
  ):
    np.testing.assert_allclose(direction.angular_equilibrium_factor(), expected, rtol=1e-9)
