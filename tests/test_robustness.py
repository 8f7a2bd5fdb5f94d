"""Crash paths and traps: bad trees and dtypes get named errors; degenerate leaves and low precision stay well behaved."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt


def test_paper_mode_rejects_a_learning_rate_schedule():
  with pytest.raises(ValueError, match="schedule="):
    dopt.adamw(lambda count: 1e-3, weight_decay=1e-5, weight_decay_convention="paper")
  dopt.adamw(
    lambda count: 1e-3, weight_decay=1e-2, weight_decay_convention="torch"
  )  # allowed there


def test_traced_hyperparameters_are_accepted():
  params = {"w": jnp.ones((2, 3))}

  @jax.jit
  def step(lr, wd, b1, momentum):
    a = dopt.adamp(lr, wd, b1=b1, weight_decay_convention="paper")
    s = dopt.sgdp(lr, momentum, wd, weight_decay_convention="paper")
    return a.update(params, a.init(params), params)[0], s.update(params, s.init(params), params)[0]

  step(1e-3, 1e-5, 0.9, 0.9)


ALIASES = [
  lambda: dopt.adamw(1e-3, 1e-5, weight_decay_convention="paper"),
  lambda: dopt.adamw(1e-3, 1e-2, nesterov=True, weight_decay_convention="torch"),
  lambda: dopt.sgdw(0.1, 0.9, 1e-5, nesterov=True, weight_decay_convention="paper"),
  lambda: dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper"),
  lambda: dopt.adamp(1e-3, 1e-5, nesterov=True, weight_decay_convention="paper"),
  lambda: dopt.sgdp(0.1, 0.9, 1e-5, weight_decay_convention="paper"),
  lambda: dopt.sgdp(0.1, 0.9, 1e-5, nesterov=True, weight_decay_convention="paper"),
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


# --- Crash paths: every bad tree gets an error that names the argument and the leaf.

PROJECTING = [
  ("adamp", lambda **k: dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper", **k)),
  ("sgdp", lambda **k: dopt.sgdp(0.1, 0.9, 1e-4, weight_decay_convention="paper", **k)),
  (
    "detect_scale_invariance",
    lambda **k: dopt.detect_scale_invariance(
      optax.chain(optax.scale_by_adam(), dopt.project_out_radial(), optax.scale(-1e-3)),
      dopt.RadialProjection(**k),
    ),
  ),
]
ALL_TRANSFORMS = PROJECTING + [
  ("adamw", lambda **k: dopt.adamw(1e-3, 1e-5, weight_decay_convention="paper", **k)),
  ("sgdw", lambda **k: dopt.sgdw(0.1, 0.9, 1e-5, weight_decay_convention="paper", **k)),
  ("add_decoupled_weight_decay", lambda **k: dopt.add_decoupled_weight_decay(1e-4, **k)),
]


def _kernel_options(name):
  """Both paths of the fused aliases; the others have one."""
  return [dict(cpu_kernel=True), dict(cpu_kernel=False)] if name in ("adamp", "sgdp") else [{}]


@pytest.mark.parametrize("name, make", PROJECTING, ids=[n for n, _ in PROJECTING])
def test_a_single_bare_array_is_a_valid_params_tree(name, make):
  """optax's alias tests pass a bare 1-D array: its projector tree is None, not missing."""
  for options in _kernel_options(name):
    tx = make(**options)
    for p in (jnp.array([-1.0, 10.0, 1.0]), jnp.arange(6.0).reshape(2, 3) - 2):
      g = jnp.full_like(p, 0.5)
      bare, _ = tx.update(g, tx.init(p), p)
      in_dict, _ = tx.update({"p": g}, tx.init({"p": p}), {"p": p})
      in_list, _ = tx.update([g], tx.init([p]), [p])
      np.testing.assert_array_equal(bare, in_dict["p"])
      np.testing.assert_array_equal(bare, in_list[0])


@pytest.mark.parametrize("name, make", ALL_TRANSFORMS, ids=[n for n, _ in ALL_TRANSFORMS])
def test_update_without_params_is_optax_value_error(name, make):
  params = {"w": jnp.ones((2, 3))}
  for options in _kernel_options(name):
    tx = make(**options)
    with pytest.raises(ValueError, match="you are not passing `params` when calling `update`"):
      tx.update(params, tx.init(params))


@pytest.mark.parametrize("name, make", PROJECTING, ids=[n for n, _ in PROJECTING])
@pytest.mark.parametrize("channel_axis", [2, 7, -3, -7])
def test_a_channel_axis_out_of_range_names_the_axis_the_leaf_and_its_shape(
  name, make, channel_axis
):
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  for options in _kernel_options(name):
    tx = make(channel_axis=channel_axis, **options)
    with pytest.raises(
      ValueError, match=r"channel_axis .* got -?\d, .*'dense/kernel' has shape \(2, 3\)"
    ):
      tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("name, make", ALL_TRANSFORMS, ids=[n for n, _ in ALL_TRANSFORMS])
def test_grads_unlike_the_params_name_the_argument_and_the_first_path(name, make):
  params = {"a": jnp.ones((4, 3)), "b": {"c": jnp.ones(3)}}
  argument = "updates" if name == "add_decoupled_weight_decay" else "grads"
  for options in _kernel_options(name):
    tx = make(**options)
    state = tx.init(params)
    broadcastable = {"a": jnp.ones((1, 3)), "b": {"c": jnp.ones(3)}}
    with pytest.raises(ValueError, match=rf"{argument} .*'a' .*shape \(1, 3\) and params \(4, 3\)"):
      tx.update(broadcastable, state, params)
    with pytest.raises(ValueError, match=rf"{argument} .*leaf at 'b/d'"):
      tx.update({"a": jnp.ones((4, 3)), "b": {"d": jnp.ones(3)}}, state, params)
    with pytest.raises(ValueError, match=rf"params have a leaf at 'b/c' that {argument} do not"):
      tx.update({"a": jnp.ones((4, 3)), "b": {}}, state, params)


MASKED = [(n, m) for n, m in ALL_TRANSFORMS if n != "detect_scale_invariance"]


@pytest.mark.parametrize("name, make", MASKED, ids=[n for n, _ in MASKED])
def test_a_mask_unlike_the_params_names_the_mask_and_the_first_path(name, make):
  params = {"a": jnp.ones((4, 3)), "b": {"c": jnp.ones(3)}}
  for options in _kernel_options(name):
    for mask, path in (({"a": True, "b": True, "x": False}, "'x'"), ({"a": True}, "'b/c'")):
      for as_callable in (False, True):
        tx = make(mask=(lambda p, mask=mask: mask) if as_callable else mask, **options)
        with pytest.raises(ValueError, match=rf"mask must have the tree structure .*{path}"):
          tx.update(params, tx.init(params), params)
    tx = make(mask={"a": True, "b": False}, **options)  # a prefix is valid, as in optax
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("name, make", ALL_TRANSFORMS[:5], ids=[n for n, _ in ALL_TRANSFORMS[:5]])
def test_integer_params_are_rejected_not_truncated(name, make):
  params = {"w": jnp.array([[5, -5, 3, 0]])}
  for options in _kernel_options(name):
    tx = make(**options)
    with pytest.raises(TypeError, match=r"leaf 'w' has dtype int32.*truncated"):
      tx.init(params)
    with pytest.raises(TypeError, match=r"leaf 'w' has dtype int32"):
      tx.update(params, tx.init({"w": params["w"].astype(jnp.float32)}), params)


@pytest.mark.parametrize("name, make", PROJECTING, ids=[n for n, _ in PROJECTING])
def test_complex_params_are_rejected_by_the_projection(name, make):
  """Its cosine would need Re<g, w>; sum(g * w) misses an orthogonal g = i w."""
  w = jnp.ones((2, 3), jnp.complex64)
  for options in _kernel_options(name):
    tx = make(**options)
    with pytest.raises(TypeError, match=r"real floating point params.*'w' has dtype complex64"):
      tx.update({"w": 1j * w}, tx.init({"w": w}), {"w": w})


def test_complex_params_work_with_adamw_as_in_optax():
  params = {"w": jnp.array([[1 + 2j, -0.5j], [3.0, 1 - 1j]], jnp.complex64)}
  grads = {"w": jnp.array([[0.5 - 1j, 2j], [-1.0, 0.25 + 0.5j]], jnp.complex64)}
  ours = dopt.adamw(1e-2, 1e-1, weight_decay_convention="torch")
  theirs = optax.adamw(1e-2, weight_decay=1e-1)
  ours_state, theirs_state = ours.init(params), theirs.init(params)
  p_ours = p_theirs = params
  for _ in range(3):
    u, ours_state = ours.update(grads, ours_state, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    u, theirs_state = theirs.update(grads, theirs_state, p_theirs)
    p_theirs = optax.apply_updates(p_theirs, u)
  np.testing.assert_allclose(p_ours["w"], p_theirs["w"], rtol=1e-6)
