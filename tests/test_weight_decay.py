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


# --- Cautious weight decay (Chen et al. 2025, arXiv 2510.12402, Algorithm 1):
# theta_{t+1} = theta_t - eta_t (u_t + lambda 1[u_t * theta_t >= 0] * theta_t), zero included.


def _numpy_decoupled(
  direction: str, convention: str, cautious: bool, steps: int, *, alpha: float, lam: float
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, float]]]:
  """A float64 transcription of AdamW / SGDW (momentum 0.9) with the paper's or cautious decay.

  eta_t follows a cosine, so the conventions differ. Returns the trajectory and, per step, the
  fraction of each leaf's coordinates the cautious decay decayed.
  """
  from _reference import NAMES, grad_jax, init_params, make_targets

  params = {k: v.astype(np.float64) for k, v in init_params().items()}
  targets = make_targets(steps)
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  trajectory, fractions = [params], []
  for t in range(steps):
    eta = 0.55 + 0.45 * math.cos(math.pi * t / steps)
    grads = grad_jax({k: x.astype(np.float32) for k, x in params.items()}, targets[t])
    new, fraction = {}, {}
    for name in NAMES:
      g, w = np.asarray(grads[name], np.float64), params[name]
      if direction == "adam":
        m[name] = 0.9 * m[name] + 0.1 * g
        v[name] = 0.999 * v[name] + 0.001 * g * g
        u = (m[name] / (1 - 0.9 ** (t + 1))) / (np.sqrt(v[name] / (1 - 0.999 ** (t + 1))) + 1e-8)
      else:  # PyTorch's buffer: g at the first step, then 0.9 buf + g
        m[name] = g if t == 0 else 0.9 * m[name] + g
        u = m[name]
      gate = (u * w >= 0) if cautious else np.ones_like(w, bool)
      fraction[name] = float(gate.mean())
      decay = lam * np.where(gate, w, 0.0)
      if convention == "torch":
        new[name] = w - alpha * eta * (u + decay)
      elif convention == "paper":
        new[name] = w - eta * (alpha * u + decay)
      else:  # corrected
        new[name] = w - eta * (alpha * u + eta * decay)
    params = new
    trajectory.append(params)
    fractions.append(fraction)
  return trajectory, fractions


@pytest.mark.parametrize("convention", ["paper", "torch", "corrected"])
@pytest.mark.parametrize("direction", ["adam", "momentum"])
def test_cautious_decay_matches_a_numpy_transcription_of_the_paper(direction, convention):
  from _reference import assert_trajectories_match, max_relative_error, run_ours

  steps, alpha = 40, (1e-2 if direction == "adam" else 0.05)
  lam = 0.5 if convention == "torch" else 0.5 * alpha
  schedule = lambda t: 0.55 + 0.45 * jnp.cos(jnp.pi * t / steps)  # noqa: E731
  factory = dopt.adamw if direction == "adam" else lambda a, w, **k: dopt.sgdw(a, 0.9, w, **k)
  options = dict(weight_decay_convention=convention, cautious_weight_decay=True)
  tx = factory(alpha, lam, schedule=schedule, **options)
  ours, states = run_ours(tx, steps, with_states=True)
  reference, fractions = _numpy_decoupled(direction, convention, True, steps, alpha=alpha, lam=lam)
  assert_trajectories_match(ours, reference)
  # The gate is active: plain decay gives another trajectory...
  plain, _ = _numpy_decoupled(direction, convention, False, steps, alpha=alpha, lam=lam)
  assert max_relative_error(ours, plain)[0] > 1e-4
  # ...and the state keeps the fraction decayed per leaf, in the params' flattening order.
  kept = [
    s
    for s in jax.tree.leaves(
      states[-1], is_leaf=lambda x: isinstance(x, dopt.CautiousWeightDecayState)
    )
    if isinstance(s, dopt.CautiousWeightDecayState)
  ]
  (kept,) = kept
  names = sorted(fractions[-1])  # dict keys flatten sorted
  np.testing.assert_allclose(
    [float(f) for f in kept.decayed_fractions], [fractions[-1][n] for n in names], atol=1e-6
  )
  assert any(0 < f < 1 for f in fractions[-1].values())  # the gate splits some leaves


def test_cautious_decay_reads_the_projected_direction_under_adamp():
  # One AdamP step (torch convention) in NumPy: u = g / (|g| + eps) at t = 1, projected per
  # output channel (columns, Flax layout) since g is orthogonal to each column, then gated.
  # Each column of g is orthogonal to w's, but sign(g) leans on w's large entry: projecting
  # flips the sign of the update there, so the gate differs before and after the projection.
  w = np.array([[4.0, -2.0], [1.0, -0.5], [1.0, -0.5], [1.0, -0.5]])
  g = np.array([[0.5, 1.0], [1.0, -1.0], [1.0, -1.0], [-4.0, -2.0]])
  np.testing.assert_allclose((g * w).sum(axis=0), 0.0)
  lr, wd, wd_ratio, eps = 0.1, 0.5, 0.1, 1e-8
  u = g / (np.abs(g) + eps)
  w_hat = w / (np.linalg.norm(w, axis=0) + eps)
  projected = u - w_hat * (w_hat * u).sum(axis=0)
  gate = projected * w >= 0
  expected = w - lr * (projected + wd * wd_ratio * np.where(gate, w, 0.0))
  assert 0 < gate.mean() < 1  # the gate decides on some coordinates: the test can fail
  before_projection = w - lr * (projected + wd * wd_ratio * np.where(u * w >= 0, w, 0.0))
  assert not np.allclose(expected, before_projection)
  for cpu_kernel in (False, True):
    tx = dopt.adamp(
      lr,
      wd,
      wd_ratio=wd_ratio,
      weight_decay_convention="torch",
      cautious_weight_decay=True,
      cpu_kernel=cpu_kernel if dopt.cpu_kernel_available() else False,
    )
    params, grads = {"w": jnp.asarray(w, jnp.float32)}, {"w": jnp.asarray(g, jnp.float32)}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    np.testing.assert_allclose(
      np.asarray(params["w"] + updates["w"]), expected, rtol=1e-5, atol=1e-6
    )


def test_projected_weight_decay_needs_the_projection():
  tx = dopt.add_decoupled_weight_decay(0.1, projected_weight_decay=0.01)
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="projected_weight_decay needs AdamP's decisions"):
    tx.update(params, tx.init(params), params)


def test_cautious_decay_keeps_dtypes_and_survives_empty_zero_and_none_leaves():
  tx = dopt.add_decoupled_weight_decay(0.1, cautious=True)
  params = {
    "empty": jnp.zeros((0, 3)),
    "scalar": jnp.zeros([]),
    "half": jnp.ones(3, jnp.bfloat16),
    "none": None,
  }
  updates = {
    "empty": jnp.zeros((0, 3)),
    "scalar": jnp.ones([]),
    "half": -jnp.ones(3, jnp.bfloat16),
    "none": None,
  }
  out, state = tx.update(updates, tx.init(params), params)
  assert out["half"].dtype == jnp.bfloat16 and out["none"] is None
  fractions = dict(zip(sorted(params), state.decayed_fractions, strict=True))
  assert fractions["none"] is None and float(fractions["empty"]) == 0.0
  assert float(fractions["scalar"]) == 1.0 and float(fractions["half"]) == 0.0
  assert all(np.isfinite(float(f)) for f in state.decayed_fractions if f is not None)


# --- The decay's timescale (Wang & Aitchison, ICML 2025): tau_iter = 1 / (decay per step).


@pytest.mark.parametrize("convention", ["paper", "torch", "corrected"])
def test_weight_decay_for_timescale_removes_one_over_tau_per_step(convention):
  tau_epochs, batch, points, alpha = 30.0, 128, 6_400, 2e-3
  tau_steps = tau_epochs * points / batch  # 1,500 steps
  lam = dopt.weight_decay_for_timescale(
    weight_decay_convention=convention,
    tau_epochs=tau_epochs,
    batch_size=batch,
    num_train_points=points,
    learning_rate=alpha if convention == "torch" else None,
  )
  assert lam == pytest.approx(1 / tau_steps / (alpha if convention == "torch" else 1.0), rel=1e-12)
  same = dopt.weight_decay_for_timescale(
    weight_decay_convention=convention,
    tau_iterations=tau_steps,
    learning_rate=alpha if convention == "torch" else None,
  )
  assert same == pytest.approx(lam, rel=1e-12)
  # The chain built with it removes 1 / tau of a weight whose direction is zero, per step.
  tx = dopt.adamw(alpha, lam, weight_decay_convention=convention)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(-updates["w"]), 1 / tau_steps, rtol=1e-6)


def test_normalized_weight_decay_is_a_timescale_growing_with_the_run():
  # lambda = lambda_norm sqrt(b / (B T)) is tau_iter = sqrt(B T / b) / lambda_norm steps.
  lam = dopt.normalized_weight_decay(0.05, batch_size=128, num_train_points=50_000, num_epochs=100)
  tau = math.sqrt(50_000 * 100 / 128) / 0.05
  assert dopt.weight_decay_for_timescale(
    weight_decay_convention="paper", tau_iterations=tau
  ) == pytest.approx(lam, rel=1e-12)


def test_weight_decay_for_timescale_asks_for_what_it_needs():
  with pytest.raises(ValueError, match="exactly one of tau_iterations"):
    dopt.weight_decay_for_timescale(weight_decay_convention="paper")
  with pytest.raises(TypeError, match="batch_size"):
    dopt.weight_decay_for_timescale(weight_decay_convention="paper", tau_epochs=1.0)
  with pytest.raises(TypeError, match="learning_rate"):
    dopt.weight_decay_for_timescale(weight_decay_convention="torch", tau_iterations=10.0)
