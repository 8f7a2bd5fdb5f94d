"""add_decoupled_weight_decay, normalized weight decay, the convention warning, and the paper's propositions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _trees import assert_trees_close

import decoupled_optax as dopt


def _params():
  return {
    "kernel": jnp.arange(12.0).reshape(3, 4) / 10 - 0.5,
    "bias": jnp.linspace(-1.0, 1.0, 4),
  }


def _loss(params):
  # Gradients depend on the params, so trajectories diverge if any step is wrong.
  x = jnp.linspace(-1.0, 1.0, 3)
  y = jnp.tanh(x @ params["kernel"] + params["bias"])
  return jnp.sum((y - 0.3) ** 2) + 0.1 * jnp.sum(params["kernel"] ** 3)


def _run(tx, steps=60, params=None):
  params = _params() if params is None else params
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize(
  "mask", [None, {"kernel": True, "bias": False}, lambda p: {"kernel": True, "bias": False}]
)
def test_before_learning_rate_equals_optax_adamw(mask):
  ours = optax.chain(
    optax.scale_by_adam(),
    dopt.add_decoupled_weight_decay(0.1, mask=mask),
    optax.scale_by_learning_rate(1e-2),
  )
  theirs = optax.adamw(1e-2, weight_decay=0.1, mask=mask)
  assert_trees_close(_run(ours), _run(theirs), rtol=1e-6, atol=1e-7, check_dtypes=False)


def test_adds_weight_decay_times_params_per_step_of_its_schedule():
  schedule = lambda count: 0.5 * (count + 1)
  tx = dopt.add_decoupled_weight_decay(schedule)
  params = {"w": jnp.array([2.0, -4.0])}
  state = tx.init(params)
  updates = {"w": jnp.array([1.0, 1.0])}
  for count in range(3):
    out, state = tx.update(updates, state, params)
    np.testing.assert_allclose(out["w"], updates["w"] + schedule(count) * params["w"])


def test_mask_prefix_and_multipliers_from_extra_args():
  tx = dopt.add_decoupled_weight_decay(0.5, mask={"a": True, "b": False})
  params = {"a": {"x": jnp.ones(2), "y": jnp.ones(3)}, "b": jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  multipliers = {"a": {"x": jnp.float32(0.1), "y": jnp.float32(1.0)}, "b": jnp.float32(0.1)}
  out, _ = tx.update(zeros, tx.init(params), params, weight_decay_multipliers=multipliers)
  np.testing.assert_allclose(out["a"]["x"], 0.05)
  np.testing.assert_allclose(out["a"]["y"], 0.5)
  np.testing.assert_allclose(out["b"], 0.0)


def test_proposition_1_sgd_decoupled_decay_equals_l2_over_alpha():
  """Loshchilov & Hutter, Prop. 1: for SGD, decoupled lambda == L2 with lambda' = lambda / alpha."""
  alpha, lam = 0.05, 2e-3
  decoupled = dopt.sgdw(alpha, weight_decay=lam, weight_decay_convention="paper")
  l2 = optax.chain(optax.add_decayed_weights(lam / alpha), optax.sgd(alpha))
  assert_trees_close(_run(decoupled), _run(l2), rtol=2e-6, atol=1e-7, check_dtypes=False)


def test_proposition_2_adam_l2_is_insensitive_to_lambda_on_a_zero_gradient_weight():
  """Prop. 2 witness: with zero loss gradient, Adam normalizes away the L2 term."""
  alpha, steps = 1e-3, 500
  zero_grad = {"w": jnp.zeros(())}

  def final(tx):
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(steps):
      updates, state = step(zero_grad, state, params)
      params = optax.apply_updates(params, updates)
    return float(params["w"])

  adam_l2 = [
    final(optax.chain(optax.add_decayed_weights(lam), optax.adam(alpha)))
    for lam in (1e-4, 1e-2, 1.0)
  ]
  # Adam's normalisation makes each step ~alpha whatever lambda': about the same end point.
  assert max(adam_l2) - min(adam_l2) < 0.02 * max(adam_l2)
  adamw = {
    lam: final(dopt.adamw(alpha, lam, weight_decay_convention="paper"))
    for lam in (1e-5, 1e-4, 9e-4)
  }
  for lam, theta in adamw.items():
    # AdamW's decoupled decay: theta_T = (1 - lambda)^T exactly, strongly dependent on lambda.
    assert theta == pytest.approx((1 - lam) ** steps, rel=1e-4)
  assert adamw[9e-4] < 0.65 < 0.95 < adamw[1e-5]


def test_normalized_weight_decay_formula():
  lam = dopt.normalized_weight_decay(0.05, batch_size=128, num_train_points=50_000, num_epochs=100)
  assert lam == pytest.approx(0.05 * math.sqrt(128 / (50_000 * 100)), rel=1e-12)


@pytest.mark.parametrize("period_mult", [1, 2, 3])
def test_normalized_weight_decay_schedule_follows_restarts(period_mult):
  b, big_b, first = 50, 1000, 40  # 20 steps per epoch
  sched = dopt.normalized_weight_decay_schedule(
    0.05, b, big_b, first_period=first, period_mult=period_mult
  )
  start, period = 0, first
  for _ in range(4):
    expected = dopt.normalized_weight_decay(0.05, b, big_b, num_epochs=period / (big_b / b))
    for step in (start, start + period // 2, start + period - 1):
      assert float(sched(step)) == pytest.approx(expected, rel=1e-6)
    start, period = start + period, period * period_mult
