"""The aliases and blocks inside optax's ecosystem: inject_hyperparams, MultiSteps, apply_if_finite, jit, vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _trees import assert_trees_close

import decoupled_optax as dopt

ALIASES = {
  "adamw": (
    dopt.adamw,
    dict(learning_rate=1e-2, weight_decay=1e-3, weight_decay_convention="paper"),
  ),
  "sgdw": (
    dopt.sgdw,
    dict(learning_rate=0.05, momentum=0.9, weight_decay=1e-3, weight_decay_convention="paper"),
  ),
  "adamp": (
    dopt.adamp,
    dict(learning_rate=1e-2, weight_decay=1e-3, weight_decay_convention="paper"),
  ),
  "sgdp": (
    dopt.sgdp,
    dict(
      learning_rate=0.05,
      momentum=0.9,
      weight_decay=1e-3,
      nesterov=True,
      weight_decay_convention="paper",
    ),
  ),
}


def _params():
  rng = np.random.default_rng(0)
  return {
    "conv": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32),
    "dense": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
    "bias": jnp.asarray(rng.standard_normal(3), jnp.float32),
  }


def _loss(params):
  conv = params["conv"] / jnp.linalg.norm(
    params["conv"].reshape(-1, 4), axis=0
  )  # scale invariant per channel
  hidden = jnp.tanh(jnp.sum(conv, axis=(0, 1, 2)) @ params["dense"] + params["bias"])
  return jnp.sum((hidden - 0.5) ** 2)


def _trajectory(tx, steps=20, params=None):
  params = _params() if params is None else params
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("name", ALIASES)
def test_inject_hyperparams_matches_and_changes_at_run_time(name):
  factory, kwargs = ALIASES[name]
  plain, _ = _trajectory(factory(**kwargs))
  injected_tx = dopt.inject_hyperparams(factory)(**kwargs)
  injected, state = _trajectory(injected_tx)
  assert_trees_close(injected, plain, 1e-5, 1e-5, check_dtypes=False)

  # Raising the decay at run time equals an optimizer built with the new value.
  state.hyperparams["weight_decay"] = jnp.asarray(2e-3)
  state.hyperparams["learning_rate"] = jnp.asarray(kwargs["learning_rate"] / 2)
  continued, _ = _trajectory_from(injected_tx, injected, state)
  fresh_kwargs = dict(kwargs, weight_decay=2e-3, learning_rate=kwargs["learning_rate"] / 2)
  inner_state = state.inner_state
  reference, _ = _trajectory_from(factory(**fresh_kwargs), injected, inner_state)
  assert_trees_close(continued, reference, 1e-5, 1e-5, check_dtypes=False)


def _trajectory_from(tx, params, state, steps=5):
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  return params, state


def test_schedules_are_injected_and_callable_masks_stay_static():
  sched = dopt.cosine_warm_restart_schedule(1.0, first_period=4, period_mult=2, min_value=0.1)
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  kwargs = dict(
    learning_rate=1e-2,
    weight_decay=1e-3,
    schedule=sched,
    mask=mask,
    weight_decay_convention="paper",
  )
  plain, _ = _trajectory(dopt.adamp(**kwargs))
  ours, _ = _trajectory(dopt.inject_hyperparams(dopt.adamp)(**kwargs))
  optax_static, _ = _trajectory(
    optax.inject_hyperparams(dopt.adamp, static_args=("mask", "channel_axis"))(**kwargs)
  )
  assert_trees_close(ours, plain, 1e-5, 1e-5, check_dtypes=False)
  assert_trees_close(optax_static, plain, 1e-5, 1e-5, check_dtypes=False)


def test_mask_mistaken_for_a_schedule_is_an_error_not_silent():
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  tx = optax.inject_hyperparams(dopt.adamw)(
    learning_rate=1e-2, weight_decay=1e-3, mask=mask, weight_decay_convention="paper"
  )
  with pytest.raises(ValueError, match="static_args"):
    tx.init(_params())


def test_vmap_over_hyperparameters_equals_separate_runs():
  rates = jnp.asarray([1e-3, 1e-2, 3e-2])
  decays = jnp.asarray([1e-4, 1e-3, 1e-5])
  factory = dopt.inject_hyperparams(dopt.adamp)

  def run(lr, wd):
    return _trajectory(
      factory(learning_rate=lr, weight_decay=wd, weight_decay_convention="paper"), steps=10
    )[0]

  batched = jax.jit(jax.vmap(run))(rates, decays)
  for i in range(3):
    single, _ = _trajectory(
      dopt.adamp(float(rates[i]), float(decays[i]), weight_decay_convention="paper"), steps=10
    )
    assert_trees_close(
      jax.tree.map(lambda x, i=i: x[i], batched), single, 2e-5, 2e-5, check_dtypes=False
    )


@pytest.mark.parametrize("name", ALIASES)
def test_multisteps_equals_one_step_on_the_mean_gradient(name):
  factory, kwargs = ALIASES[name]
  tx = factory(**kwargs)
  multi = optax.MultiSteps(factory(**kwargs), every_k_schedule=2)
  params = _params()
  grads_a = jax.grad(_loss)(params)
  grads_b = jax.tree.map(lambda g: 0.5 * g + 0.1, grads_a)
  state = multi.init(params)
  zero, state = multi.update(grads_a, state, params)
  assert all(float(jnp.max(jnp.abs(z))) == 0 for z in jax.tree.leaves(zero))
  accumulated, _ = multi.update(grads_b, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, grads_a, grads_b)
  direct, _ = tx.update(mean, tx.init(params), params)
  assert_trees_close(accumulated, direct, 1e-5, 1e-5, check_dtypes=False)


@pytest.mark.parametrize("name", ALIASES)
def test_apply_if_finite_skips_non_finite_steps(name):
  factory, kwargs = ALIASES[name]
  tx = optax.apply_if_finite(factory(**kwargs), max_consecutive_errors=3)
  params = _params()
  state = tx.init(params)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
  updates, state = jax.jit(tx.update)(bad, state, params)
  assert all(float(jnp.max(jnp.abs(u))) == 0 for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1
  good = jax.grad(_loss)(params)
  updates, _ = jax.jit(tx.update)(good, state, params)
  reference, _ = factory(**kwargs).update(good, factory(**kwargs).init(params), params)
  assert_trees_close(updates, reference, 1e-6, 1e-6, check_dtypes=False)


def test_multi_transform_with_a_projecting_branch():
  """A user setup: AdamP on kernels only, plain Adam on the bias, via optax.multi_transform."""
  labels = {"conv": "adamp", "dense": "adamp", "bias": "adam"}
  tx = optax.multi_transform(
    {"adamp": dopt.adamp(1e-2, 1e-3, weight_decay_convention="paper"), "adam": optax.adam(1e-2)},
    labels,
  )
  params = _params()
  grads = jax.grad(_loss)(params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  adamp = dopt.adamp(1e-2, 1e-3, weight_decay_convention="paper")
  expected, _ = adamp.update(grads, adamp.init(params), params)
  assert_trees_close(updates["conv"], expected["conv"], 1e-6, 1e-6, check_dtypes=False)
  assert_trees_close(updates["dense"], expected["dense"], 1e-6, 1e-6, check_dtypes=False)
  adam = optax.adam(1e-2)
  assert_trees_close(
    updates["bias"],
    adam.update(grads, adam.init(params))[0]["bias"],
    1e-6,
    1e-6,
    check_dtypes=False,
  )


def test_optax_inject_hyperparams_with_a_traced_channel_axis_is_an_explicit_error():
  tx = optax.inject_hyperparams(dopt.adamp)(
    learning_rate=1e-2, weight_decay=1e-3, weight_decay_convention="paper", channel_axis=-1
  )
  params = _params()
  with pytest.raises(TypeError, match="channel_axis must be None .* static_args"):
    tx.update(params, tx.init(params), params)


def test_optax_inject_hyperparams_reads_the_layout_without_static_args():
  """The default channel_axis (None, read from the model) is no number for optax to trace."""
  tx = optax.inject_hyperparams(dopt.adamp)(
    learning_rate=1e-2, weight_decay=1e-3, weight_decay_convention="torch"
  )
  params = _params()
  plain = dopt.adamp(1e-2, 1e-3, weight_decay_convention="torch")
  expected = plain.update(params, plain.init(params), params)
  assert_trees_close(
    tx.update(params, tx.init(params), params)[0], expected[0], 1e-6, 1e-6, check_dtypes=False
  )


BF16_FACTORIES = {
  "adamw": (
    dopt.adamw,
    dict(learning_rate=1e-2, weight_decay=1e-4, weight_decay_convention="paper"),
  ),
  "adamp": (
    dopt.adamp,
    dict(learning_rate=1e-2, weight_decay=1e-4, weight_decay_convention="paper"),
  ),
  "sgdp": (
    dopt.sgdp,
    dict(learning_rate=1e-1, momentum=0.9, weight_decay=1e-4, weight_decay_convention="paper"),
  ),
}


@pytest.mark.parametrize("name", sorted(BF16_FACTORIES))
def test_injected_hyperparameters_stay_exact_with_bfloat16_params(name):
  """optax stores them in the params' dtype: b2 = 0.999 would become 1.0 in bfloat16."""
  factory, kwargs = BF16_FACTORIES[name]
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  tx = dopt.inject_hyperparams(factory)(**kwargs)
  state = tx.init(params)
  assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
  if "b2" in state.hyperparams:
    assert float(state.hyperparams["b2"]) == pytest.approx(0.999, abs=1e-7)
  tx.update(params, state, params)  # no "b2 must be in [0, 1)" for an argument never passed


@pytest.mark.parametrize("name", sorted(BF16_FACTORIES))
def test_injected_state_and_updates_keep_their_dtypes_across_steps(name):
  """float32 hyperparameters must not promote bfloat16 moments: lax.scan needs a stable carry."""
  factory, kwargs = BF16_FACTORIES[name]
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  tx = dopt.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**kwargs)
  state = tx.init(params)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(lambda p: _loss(jax.tree.map(lambda x: x.astype(jnp.float32), p)))(params)
    updates, state = tx.update(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    return (optax.apply_updates(params, updates), state), None

  (new_params, new_state), _ = jax.lax.scan(step, (params, state), length=3)
  dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]  # noqa: E731
  assert dtypes(new_state) == dtypes(state)
  assert dtypes(new_params) == dtypes(params)
  # A restored checkpoint (the state as saved) continues exactly as the run itself.
  restored = jax.tree.map(lambda x: np.asarray(x), new_state)
  (continued, _), _ = jax.lax.scan(step, (new_params, restored), length=2)
  (uninterrupted, _), _ = jax.lax.scan(step, (params, state), length=5)
  for a, b in zip(jax.tree.leaves(continued), jax.tree.leaves(uninterrupted), strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
