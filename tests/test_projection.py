"""detect_scale_invariance / project_out_radial against the official adamp projection, and its invariants."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt

DELTA, WD_RATIO, EPS = 0.1, 0.1, 1e-8


def _official_projection(live, param, grad, perturb):
  """The official AdamP._projection on torch tensors (channel axis 0)."""
  optimizer = live.AdamP([live.torch.zeros(1, requires_grad=True)])
  p, g, u = (live.torch.tensor(np.asarray(x)) for x in (param, grad, perturb))
  projected, wd = optimizer._projection(p, g, u.clone(), DELTA, WD_RATIO, EPS)
  return projected.numpy(), wd


def _orthogonal_per_channel(rng, w):
  """A gradient orthogonal to every output channel (axis 0) of w: what a following BN gives."""
  g = rng.standard_normal(w.shape).astype(np.float32)
  rows_w, rows_g = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
  rows_g -= rows_w * (
    np.sum(rows_w * rows_g, 1, keepdims=True) / np.sum(rows_w**2, 1, keepdims=True)
  )
  return rows_g.reshape(w.shape)


def _orthogonal_as_whole(rng, w):
  """Orthogonal to w as a whole, but clearly not per channel."""
  g = rng.standard_normal(w.shape).astype(np.float32)
  g[0] += 3 * w[0]  # a radial part on the first channel...
  g -= w * np.sum(w * g) / np.sum(w * w)  # ...cancelled globally
  return g


CASES = ["channel", "whole", "none"]
SHAPES = [(8, 3, 3, 3), (6, 10), (5, 4, 2)]


def _case(kind, shape, seed):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(shape).astype(np.float32)
  g = {
    "channel": _orthogonal_per_channel,
    "whole": _orthogonal_as_whole,
    "none": lambda r, x: r.standard_normal(x.shape).astype(np.float32) + x,
  }[kind](rng, w)
  perturb = rng.standard_normal(shape).astype(np.float32)
  return w, g, perturb


def _ours(w, g, perturb, channel_axis):
  params, grads, updates = ({"k": jnp.asarray(x)} for x in (w, g, perturb))
  projectors, multipliers = dopt.scale_invariance(
    grads, params, dopt.RadialProjection(channel_axis=channel_axis)
  )
  tx = dopt.project_out_radial()
  out, _ = tx.update(updates, tx.init(params), params, radial_projectors=projectors)
  return np.asarray(out["k"]), float(multipliers["k"])


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_official_projection_in_pytorch_layout(kind, shape, peer):
  w, g, perturb = _case(
    kind, shape, seed=zlib.crc32(repr((kind, shape)).encode())
  )  # stable across processes
  expected, expected_wd = peer(lambda live: _official_projection(live, w, g, perturb))
  got, got_wd = _ours(w, g, perturb, channel_axis=0)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert got_wd == pytest.approx(float(expected_wd))
  assert (float(expected_wd) == WD_RATIO) == (kind != "none")  # the case exercises what it says


@pytest.mark.parametrize("kind", CASES)
def test_flax_layout_is_pytorch_layout_with_channel_last(kind):
  w, g, perturb = _case(kind, (8, 3, 3, 4), seed=3)  # OIHW
  to_hwio = lambda x: np.transpose(x, (2, 3, 1, 0))
  torch_layout, torch_wd = _ours(w, g, perturb, channel_axis=0)
  flax_layout, flax_wd = _ours(to_hwio(w), to_hwio(g), to_hwio(perturb), channel_axis=-1)
  # Same sums in another order: equal up to float32 rounding of 72-term reductions.
  np.testing.assert_allclose(flax_layout, to_hwio(torch_layout), rtol=1e-5, atol=1e-6)
  assert flax_wd == torch_wd


def test_channel_view_removes_radial_component_of_every_channel():
  w, g, perturb = _case("channel", (8, 3, 3, 3), seed=0)
  got, _ = _ours(w, g, perturb, channel_axis=0)
  radial = np.sum(got.reshape(8, -1) * w.reshape(8, -1), axis=1)
  np.testing.assert_allclose(radial, 0.0, atol=1e-5)
  # Only the radial part is removed: the tangential part is untouched.
  tangential = perturb - got
  rows = tangential.reshape(8, -1)
  w_rows = w.reshape(8, -1)
  cosines = np.abs(np.sum(rows * w_rows, 1)) / (
    np.linalg.norm(rows, axis=1) * np.linalg.norm(w_rows, axis=1)
  )
  np.testing.assert_allclose(cosines, 1.0, rtol=1e-5)


def test_never_projects_vectors_scalars_or_empty_leaves():
  params = {"b": jnp.ones(4), "s": jnp.ones(()), "e": jnp.ones((0, 3)), "f": jnp.ones((3, 0))}
  grads = jax.tree.map(jnp.zeros_like, params)
  projectors, multipliers = dopt.scale_invariance(grads, params)
  assert all(
    p is None for p in (projectors["b"], projectors["s"], projectors["e"], projectors["f"])
  )
  assert all(float(m) == 1.0 for m in jax.tree.leaves(multipliers))


def test_projection_composes_with_any_direction():
  """Lion's sign direction, projected: no radial component left, decay scaled by wd_ratio."""
  w, g, _ = _case("channel", (4, 6), seed=1)
  params, grads = {"k": jnp.asarray(w.T)}, {"k": jnp.asarray(g.T)}  # Flax (in, out) layout
  tx = dopt.detect_scale_invariance(
    optax.chain(
      optax.scale_by_lion(), dopt.project_out_radial(), dopt.add_decoupled_weight_decay(1e-2)
    ),
    dopt.RadialProjection(wd_ratio=0.25),
  )
  out, _ = tx.update(grads, tx.init(params), params)
  direction, _ = optax.scale_by_lion().update(grads, optax.scale_by_lion().init(params))
  radial_left = jnp.sum((out["k"] - 0.25 * 1e-2 * params["k"]) * params["k"], axis=0)
  np.testing.assert_allclose(radial_left, 0.0, atol=1e-5)
  assert not np.allclose(jnp.sum(direction["k"] * params["k"], axis=0), 0.0, atol=1e-2)


def test_norm_grows_only_at_second_order_with_projection():
  """Heo et al.: with the projection, ||w_{t+1}||^2 = ||w_t||^2 + eta^2 ||Pi(p_t)||^2 for scale-invariant w."""
  eta = 0.1
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.standard_normal((5, 3)).astype(np.float32))

  def loss(params):  # scale invariant per output channel: depends on w / ||w_c|| only
    w = params["k"]
    return jnp.sum((w / jnp.linalg.norm(w, axis=0, keepdims=True) - target) ** 2)

  tx = dopt.sgdp(eta, momentum=0.9)
  params = {"k": jnp.asarray(rng.standard_normal((5, 3)).astype(np.float32))}
  state = tx.init(params)
  for _ in range(30):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    new = optax.apply_updates(params, updates)
    before, after = jnp.sum(params["k"] ** 2, 0), jnp.sum(new["k"] ** 2, 0)
    np.testing.assert_allclose(after, before + jnp.sum(updates["k"] ** 2, 0), rtol=1e-5)
    params = new


def test_project_out_radial_needs_its_detection():
  tx = optax.chain(optax.scale_by_adam(), dopt.project_out_radial())
  params = {"k": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="detect_scale_invariance"):
    tx.update(params, tx.init(params), params)
