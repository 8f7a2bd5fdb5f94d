"""with_diagnostics / read_diagnostics: every quantity against NumPy, AdamP's decisions against
the official code, the norm identity of projected leaves, and the lookup through optax and Flax."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import SHAPES, init_params, loss_jax, make_targets
from _trees import assert_trees_close

import decoupled_optax as dopt

PATHS = pytest.mark.parametrize("cpu_kernel", [True, False], ids=["kernel", "generic"])


def _params():
  return jax.tree.map(jnp.asarray, init_params())


def _run(tx, steps, params=None):
  """(params_t, update_t, diagnostics after update t) for t < steps, every value as NumPy."""
  params = _params() if params is None else params
  targets = make_targets(steps)
  state = tx.init(params)
  step = jax.jit(tx.update)
  rows = []
  for t in range(steps):
    g = _grads(params, targets[t])
    updates, state = step(g, state, params)
    diagnostics = jax.tree.map(np.asarray, dopt.read_diagnostics(state))
    rows.append((jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, updates), diagnostics))
    params = optax.apply_updates(params, updates)
  return rows


def _grads(params, targets):
  return jax.grad(loss_jax)(params, targets)


def _angle(w, u):
  w, u = w.astype(np.float64).ravel(), u.astype(np.float64).ravel()
  v = w + u
  cosine = np.dot(w, v) / (np.linalg.norm(w) * np.linalg.norm(v))
  return float(np.arccos(np.clip(cosine, -1.0, 1.0)))


@PATHS
def test_every_per_leaf_quantity_matches_numpy(cpu_kernel):
  tx = dopt.with_diagnostics(
    dopt.adamp(1e-2, 5e-3, cpu_kernel=cpu_kernel, weight_decay_convention="paper")
  )
  for t, (params, updates, d) in enumerate(_run(tx, 6)):
    assert int(d["count"]) == t + 1
    for name in SHAPES:
      w, u = params[name].astype(np.float64), updates[name].astype(np.float64)
      np.testing.assert_allclose(d[f"weight_norm/{name}"], np.linalg.norm(w), rtol=1e-6)
      np.testing.assert_allclose(d[f"update_norm/{name}"], np.linalg.norm(u), rtol=1e-5)
      np.testing.assert_allclose(
        d[f"relative_update/{name}"], np.linalg.norm(u) / np.linalg.norm(w), rtol=1e-5
      )
      if w.ndim > 1:
        np.testing.assert_allclose(d[f"angular_update/{name}"], _angle(w, u), rtol=1e-3)
      else:
        assert f"angular_update/{name}" not in d
    projected = [n for n in SHAPES if len(SHAPES[n]) > 1 and d[f"projection/{n}"] > 0]
    assert d["summary/fraction_projected"] == pytest.approx(len(projected) / 3)
    np.testing.assert_allclose(
      d["summary/mean_angular_update"],
      np.mean([d[f"angular_update/{n}"] for n in projected]),
      rtol=1e-6,
    )


def _official_views(live, param, grad, delta=0.1, eps=1e-8):
  """The official AdamP's decision for one PyTorch-layout tensor: 0, 1 (channel), 2 (layer)."""
  optimizer = live.AdamP([live.torch.zeros(1, requires_grad=True)])
  p, g = live.torch.tensor(param), live.torch.tensor(grad)
  if len(p.shape) <= 1:
    return 0
  for code, view in ((1, optimizer._channel_view), (2, optimizer._layer_view)):
    cosine = optimizer._cosine_similarity(g, p, eps, view)
    if cosine.max() < delta / math.sqrt(view(p).size(1)):
      return code
  return 0


def _case(kind, shape, rng):
  w = rng.standard_normal(shape).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)
  rows_w, rows_g = w.reshape(shape[0], -1), g.reshape(shape[0], -1)
  if kind == "channel":
    rows_g -= rows_w * (
      np.sum(rows_w * rows_g, 1, keepdims=True) / np.sum(rows_w**2, 1, keepdims=True)
    )
  elif kind == "whole":
    g[0] += 3 * w[0]
    g -= w * np.sum(w * g) / np.sum(w * w)
  else:
    g += w
  return w, g


@PATHS
def test_projection_codes_are_the_official_adamps_decisions(cpu_kernel, peer):
  rng = np.random.default_rng(7)
  params, grads = {}, {}
  for kind in ("channel", "whole", "none"):
    for i, shape in enumerate([(8, 3, 3, 3), (6, 10), (5, 4, 2)]):
      name = f"{kind}{i}"
      params[name], grads[name] = _case(kind, shape, rng)
  official = peer(lambda live: {n: _official_views(live, params[n], grads[n]) for n in params})
  expected = {name: int(code) for name, code in official.items()}
  params["bias"], grads["bias"] = np.ones(4, np.float32), np.ones(4, np.float32)
  expected["bias"] = 0
  assert sorted(set(expected.values())) == [0, 1, 2]  # the tree exercises every decision
  tx = dopt.with_diagnostics(
    dopt.adamp(
      1e-3,
      1e-4,
      wd_ratio=0.25,
      channel_axis=0,
      cpu_kernel=cpu_kernel,
      weight_decay_convention="paper",
    )
  )
  p, g = (jax.tree.map(jnp.asarray, x) for x in (params, grads))
  _, state = jax.jit(tx.update)(g, tx.init(p), p)
  d = dopt.read_diagnostics(state)
  for name, code in expected.items():
    assert int(d[f"projection/{name}"]) == code, name
    assert float(d[f"weight_decay_multiplier/{name}"]) == (0.25 if code else 1.0), name
  assert d["projection/bias"].dtype == jnp.int8


@PATHS
def test_a_projected_leaf_without_decay_follows_the_pythagorean_identity(cpu_kernel):
  # ||w_{t+1}||^2 = ||w_t||^2 + ||dw||^2 when dw is orthogonal to w_t, and the angle is
  # atan(||dw|| / ||w_t||): the norm growth of scale-invariant weights, made visible.
  tx = dopt.with_diagnostics(dopt.sgdp(0.2, 0.9, 0.0, cpu_kernel=cpu_kernel))
  rows = _run(tx, 8)
  for (_, _, d), (_, _, d_next) in zip(rows, rows[1:], strict=False):
    assert int(d["projection/conv"]) == 1
    w, u, w_next = d["weight_norm/conv"], d["update_norm/conv"], d_next["weight_norm/conv"]
    np.testing.assert_allclose(w_next**2, w**2 + u**2, rtol=1e-5)
    np.testing.assert_allclose(d["angular_update/conv"], np.arctan(u / w), rtol=1e-3)
    assert u / w > 1e-3  # the identity is not trivially true


@pytest.mark.parametrize("convention", ["paper", "torch", "corrected"])
@pytest.mark.parametrize("alias", ["adamw", "sgdw", "adamp", "sgdp"])
def test_the_step_scalars_are_the_decay_as_applied_in_each_convention(alias, convention):
  alpha, lam, momentum = 0.05, 2e-3, 0.9
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=5, min_value=0.1)
  make = {
    "adamw": lambda **kw: dopt.adamw(alpha, lam, **kw),
    "sgdw": lambda **kw: dopt.sgdw(alpha, momentum, lam, **kw),
    "adamp": lambda **kw: dopt.adamp(alpha, lam, **kw),
    "sgdp": lambda **kw: dopt.sgdp(alpha, momentum, lam, **kw),
  }[alias]
  factor = 1 / (1 - momentum) if alias == "sgdp" else 1.0
  tx = dopt.with_diagnostics(make(schedule=schedule, weight_decay_convention=convention))
  for t, (_, _, d) in enumerate(_run(tx, 7)):
    eta = 0.1 + 0.45 * (1 + math.cos(math.pi * (t % 5) / 5))
    applied = {"paper": lam * eta, "torch": alpha * eta * lam, "corrected": lam * eta**2}
    assert float(d["schedule"]) == pytest.approx(eta, rel=1e-6)
    assert float(d["learning_rate"]) == pytest.approx(alpha * eta, rel=1e-6)
    assert float(d["weight_decay"]) == pytest.approx(factor * applied[convention], rel=1e-5)


def test_the_decay_as_applied_is_what_the_update_applies():
  # With a zero gradient the update of sgdw is exactly -(weight decay as applied) * w.
  tx = dopt.with_diagnostics(
    dopt.sgdw(
      0.1,
      weight_decay=1e-2,
      schedule=optax.linear_schedule(1.0, 0.2, 10),
      weight_decay_convention="corrected",
    )
  )
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update({"w": jnp.zeros(2)}, state, params)
    decay = float(dopt.read_diagnostics(state)["weight_decay"])
    np.testing.assert_allclose(updates["w"], -decay * params["w"], rtol=1e-6)


def test_any_optax_transform_gets_norms_and_count_but_no_invented_scalars():
  tx = dopt.with_diagnostics(optax.adamw(1e-3))
  rows = _run(tx, 2)
  d = rows[-1][2]
  assert int(d["count"]) == 2
  assert not {"learning_rate", "weight_decay", "schedule"} & set(d)
  assert not [k for k in d if k.startswith("projection/")]
  assert "summary/fraction_projected" not in d
  # the mean angle runs over every leaf with ndim > 1 when nothing is projected
  angles = [d[f"angular_update/{n}"] for n in SHAPES if len(SHAPES[n]) > 1]
  np.testing.assert_allclose(d["summary/mean_angular_update"], np.mean(angles), rtol=1e-6)


def test_the_wrapped_updates_and_state_are_unchanged():
  params = _params()
  grads = _grads(params, make_targets(1)[0])
  plain = dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper")
  wrapped = dopt.with_diagnostics(plain)
  u1, s1 = plain.update(grads, plain.init(params), params)
  u2, s2 = wrapped.update(grads, wrapped.init(params), params)
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2.inner_state)), strict=True):
    np.testing.assert_array_equal(a, b)


def _lookup_cases():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
  inner = dopt.with_diagnostics(dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper"))
  return params, {
    "bare": inner,
    "nested_chain": optax.chain(optax.clip_by_global_norm(1.0), optax.chain(inner)),
    "multi_steps": optax.MultiSteps(inner, every_k_schedule=2),
    "apply_if_finite": optax.apply_if_finite(inner, 3),
    "inject_hyperparams": dopt.with_diagnostics(
      dopt.inject_hyperparams(dopt.adamp)(
        learning_rate=1e-3, weight_decay=1e-5, weight_decay_convention="paper"
      )
    ),
  }


@pytest.mark.parametrize("case", list(_lookup_cases()[1]))
def test_read_diagnostics_finds_the_wrapper_wherever_it_sits(case):
  params, cases = _lookup_cases()
  tx = cases[case]
  grads = {"dense": {"kernel": jnp.full((3, 4), 0.5), "bias": jnp.ones(4)}}
  state = tx.init(params)
  for _ in range(2):
    _, state = jax.jit(tx.update)(grads, state, params)
  d = dopt.read_diagnostics(state)
  assert int(d["count"]) == (1 if case == "multi_steps" else 2)
  assert float(d["learning_rate"]) == pytest.approx(1e-3)
  assert float(d["weight_norm/dense/kernel"]) == pytest.approx(math.sqrt(12))
  assert "projection/dense/kernel" in d


def test_read_diagnostics_through_a_flax_train_state_and_an_nnx_optimizer():
  from flax import nnx
  from flax.training import train_state

  tx = dopt.with_diagnostics(dopt.adamw(1e-3, 1e-5, weight_decay_convention="paper"))
  params = {"w": jnp.ones((2, 3))}
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  state = state.apply_gradients(grads={"w": jnp.ones((2, 3))})
  for holder in (state, state.opt_state):
    assert int(dopt.read_diagnostics(holder)["count"]) == 1
    assert float(dopt.read_diagnostics(holder)["learning_rate"]) == pytest.approx(1e-3)

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3))) ** 2))(model)
  optimizer.update(model, grads)
  for holder in (optimizer, optimizer.opt_state):
    d = dopt.read_diagnostics(holder)
    assert int(d["count"]) == 1
    np.testing.assert_allclose(
      d["weight_norm/kernel"], np.linalg.norm(np.asarray(model.kernel[...])), rtol=0.01
    )
    assert "angular_update/kernel" in d and "angular_update/bias" not in d


def test_around_multisteps_the_chain_state_tells_its_last_update():
  tx = dopt.with_diagnostics(
    optax.MultiSteps(dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper"), every_k_schedule=2)
  )
  params = {"w": jnp.ones((2, 3))}
  grads = {"w": jnp.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])}  # orthogonal to each column
  state = tx.init(params)
  step = jax.jit(tx.update)
  _, state = step(grads, state, params)  # accumulated: the chain has not updated yet
  d = dopt.read_diagnostics(state)
  assert float(d["learning_rate"]) == 0.0 and int(d["projection/w"]) == 0
  _, state = step(grads, state, params)
  d = dopt.read_diagnostics(state)
  assert float(d["learning_rate"]) == pytest.approx(1e-3, rel=1e-6) and int(d["projection/w"]) == 1
  assert int(d["count"]) == 2 and float(d["weight_norm/w"]) == pytest.approx(math.sqrt(6))


@PATHS
@pytest.mark.parametrize("every", [1, 3])
def test_the_jitted_updates_are_bit_identical_and_the_norms_follow_every(cpu_kernel, every):
  plain = dopt.adamp(1e-2, 1e-3, cpu_kernel=cpu_kernel, weight_decay_convention="paper")
  wrapped = dopt.with_diagnostics(plain, every=every)

  def train_step(tx):
    def step(params, state, g):
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state, updates

    return jax.jit(step)

  params = _params()
  targets = make_targets(7)
  plain_step, wrapped_step = train_step(plain), train_step(wrapped)
  plain_state, wrapped_state = plain.init(params), wrapped.init(params)
  for t in range(7):
    g = _grads(params, targets[t])
    new_params, plain_state, u_plain = plain_step(params, plain_state, g)
    _, wrapped_state, u_wrapped = wrapped_step(params, wrapped_state, g)
    assert_trees_close(u_wrapped, u_plain)  # not a bit apart
    d = dopt.read_diagnostics(wrapped_state)
    norm = float(np.linalg.norm(np.asarray(u_plain["conv"], np.float64)))
    if t % every == 0:
      logged_norm = norm
    assert float(d["update_norm/conv"]) == pytest.approx(logged_norm, rel=1e-5)
    params = new_params


def test_every_must_be_a_positive_int():
  for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
    with pytest.raises(error, match="every must be a Python int >= 1"):
      dopt.with_diagnostics(optax.sgd(0.1), every=bad)


def test_works_under_vmap_and_grad():
  params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3)}
  tx = dopt.with_diagnostics(dopt.adamp(1e-2, 1e-4, weight_decay_convention="paper"))
  batch = jnp.stack([jnp.ones((2, 3)), -jnp.ones((2, 3)), jnp.eye(2, 3)])

  def one(g):
    _, state = tx.update({"w": g}, tx.init(params), params)
    return dopt.read_diagnostics(state)

  batched = jax.jit(jax.vmap(one))(batch)
  for i in range(3):
    single = one(batch[i])
    for key, value in single.items():
      np.testing.assert_allclose(batched[key][i], value, rtol=1e-6, err_msg=key)

  def loss(lr_scale):
    updates, _ = tx.update({"w": batch[0] * lr_scale}, tx.init(params), params)
    return jnp.sum(updates["w"])

  plain = dopt.adamp(1e-2, 1e-4, weight_decay_convention="paper")

  def plain_loss(lr_scale):
    updates, _ = plain.update({"w": batch[0] * lr_scale}, plain.init(params), params)
    return jnp.sum(updates["w"])

  np.testing.assert_allclose(jax.grad(loss)(2.0), jax.grad(plain_loss)(2.0), rtol=1e-6)


def test_zero_empty_and_scalar_leaves_give_no_nan():
  params = {"zero": jnp.zeros((3, 2)), "empty": jnp.zeros((0, 4)), "scalar": jnp.ones(())}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = dopt.with_diagnostics(dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, state = tx.update(grads, tx.init(params), params)
  d = dopt.read_diagnostics(state)
  assert not any(np.isnan(np.asarray(v)).any() for v in d.values()), d
  assert float(d["angular_update/zero"]) == 0.0 and float(d["relative_update/zero"]) == 0.0


def test_bfloat16_params_keep_their_dtype_and_the_diagnostics_are_float32():
  params = {"w": jnp.ones((4, 4), jnp.bfloat16)}
  tx = dopt.with_diagnostics(dopt.adamw(1e-3, 1e-5, weight_decay_convention="paper"))
  updates, state = tx.update({"w": jnp.ones((4, 4), jnp.bfloat16)}, tx.init(params), params)
  assert updates["w"].dtype == jnp.bfloat16
  assert dopt.read_diagnostics(state)["weight_norm/w"].dtype == jnp.float32


def test_the_state_structure_is_stable_under_scan():
  params = {"w": jnp.ones((2, 3))}
  tx = dopt.with_diagnostics(dopt.sgdp(0.1, 0.9, 1e-4, weight_decay_convention="paper"))

  def body(carry, g):
    params, state = carry
    updates, state = tx.update(g, state, params)
    return (optax.apply_updates(params, updates), state), None

  grads = {"w": jnp.ones((5, 2, 3))}
  (_, state), _ = jax.lax.scan(body, (params, tx.init(params)), grads)
  assert int(dopt.read_diagnostics(state)["count"]) == 5


def test_params_sharded_over_axes_the_wrapper_does_not_name_raise():
  from jax.sharding import PartitionSpec as P

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
  tx = dopt.with_diagnostics(dopt.adamp(1e-3, 1e-5, axis_name="x", weight_decay_convention="paper"))
  params = {"w": jnp.ones((2, 3))}
  state = tx.init(params)
  step = jax.shard_map(
    lambda p, s: tx.update(p, s, p), mesh=mesh, in_specs=(P(None, "x"), P()), out_specs=P()
  )
  with pytest.raises(ValueError, match="pass the same axis_name"):
    jax.jit(step)(params, state)


@PATHS
def test_the_gradient_norm_is_that_of_the_raw_gradient(cpu_kernel):
  params = _params()
  grads = _grads(params, make_targets(1)[0])
  tx = dopt.with_diagnostics(
    dopt.adamp(1e-2, 5e-3, cpu_kernel=cpu_kernel, weight_decay_convention="paper")
  )
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  d = dopt.read_diagnostics(state)
  for name in SHAPES:
    g = np.asarray(grads[name], np.float64)
    np.testing.assert_allclose(d[f"gradient_norm/{name}"], np.linalg.norm(g), rtol=1e-6)


# --- Rotational equilibrium (Kosson et al. 2024): a scale-invariant weight decayed by d per step
# settles at an angular update of sqrt(2 d c).


def _random_walk_ratio(tx, steps: int = 4000, seed: int = 0) -> float:
  """Measured / predicted angular update, averaged over the last quarter of a random walk.

  The paper's model: each column of a (64, 16) kernel is scale invariant (as behind
  BatchNorm), and the gradients are Gaussian noise projected orthogonal to each column.
  """
  params = {"w": jax.random.normal(jax.random.key(seed), (64, 16))}

  def step(carry, key):
    params, state = carry
    noise = jax.random.normal(key, (64, 16))
    w = params["w"]
    grads = {"w": noise - w * jnp.sum(w * noise, axis=0) / jnp.sum(w * w, axis=0)}
    updates, state = tx.update(grads, state, params)
    read = dopt.read_diagnostics(state)
    measured = read["angular_update/w"]
    return (optax.apply_updates(params, updates), state), (
      measured,
      read["equilibrium_angular_update/w"],
    )

  keys = jax.random.split(jax.random.key(seed + 1), steps)
  _, (measured, predicted) = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys))(params)
  return float(np.mean(np.asarray(measured)[-steps // 4 :]) / np.asarray(predicted)[-1])


EQUILIBRIUM_CASES = {
  "adamw paper": lambda: dopt.adamw(1e-2, 1e-3, weight_decay_convention="paper"),
  "adamw torch": lambda: dopt.adamw(1e-2, 0.1, weight_decay_convention="torch"),
  "sgdw paper": lambda: dopt.sgdw(0.1, 0.9, 1e-3, weight_decay_convention="paper"),
  "sgdw torch": lambda: dopt.sgdw(0.1, 0.9, 1e-2, weight_decay_convention="torch"),
  "sgdw nesterov": lambda: dopt.sgdw(
    0.1, 0.9, 1e-3, nesterov=True, weight_decay_convention="paper"
  ),
  "sgd": lambda: dopt.sgdw(0.1, 0.0, 1e-3, weight_decay_convention="paper"),
  "adamp": lambda: dopt.adamp(1e-2, 1.0, weight_decay_convention="torch"),  # d: wd_ratio 0.1
  "sgdp": lambda: dopt.sgdp(0.1, 0.9, 1e-3, weight_decay_convention="paper", wd_ratio=1.0),
}


@pytest.mark.parametrize("name", list(EQUILIBRIUM_CASES))
def test_a_scale_invariant_random_walk_reaches_the_predicted_equilibrium(name):
  steps = 8000 if name == "adamp" else 4000  # adamp decays by wd_ratio: a longer approach
  ratio = _random_walk_ratio(dopt.with_diagnostics(EQUILIBRIUM_CASES[name]()), steps)
  assert abs(ratio - 1) < 0.1, ratio


def test_the_equilibrium_prediction_is_the_formula():
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  grads = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  b1, momentum, lr = 0.8, 0.9, 1e-2
  cases = [
    # adamw, torch: d = lr * lambda; c = (1 - b1) / (1 + b1).
    (dopt.adamw(lr, 0.5, b1=b1, weight_decay_convention="torch"), lr * 0.5 * (1 - b1) / (1 + b1)),
    # sgdp, paper: d = lambda / (1 - momentum) (the official factor); w is not projected here.
    (
      dopt.sgdp(lr, momentum, 1e-3, weight_decay_convention="paper"),
      1e-3 / (1 - momentum) * (1 - momentum) / (1 + momentum),
    ),
  ]
  for tx, d_times_c in cases:
    tx = dopt.with_diagnostics(tx)
    _, state = tx.update(grads, tx.init(params), params)
    read = dopt.read_diagnostics(state)
    np.testing.assert_allclose(
      float(read["equilibrium_angular_update/w"]), math.sqrt(2 * d_times_c), rtol=1e-5
    )
    assert "equilibrium_angular_update/b" not in read  # biases have no angle
  # A direction the library does not know (optax's Lion) has no prediction.
  tx = dopt.with_diagnostics(
    dopt.decoupled_chain(
      optax.scale_by_lion(), learning_rate=lr, weight_decay=1e-3, weight_decay_convention="paper"
    )
  )
  _, state = tx.update(grads, tx.init(params), params)
  assert not any(k.startswith("equilibrium") for k in dopt.read_diagnostics(state))


def test_cautious_decay_reports_the_fraction_decayed():
  tx = dopt.with_diagnostics(
    dopt.adamw(1e-2, 1e-3, weight_decay_convention="paper", cautious_weight_decay=True)
  )
  params = {"w": jnp.array([[1.0, -1.0], [2.0, -2.0]])}
  grads = {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]])}  # Adam's first direction: sign(g)
  _, state = tx.update(grads, tx.init(params), params)
  assert float(dopt.read_diagnostics(state)["decayed_fraction/w"]) == 0.5
