"""The weight-decay masks on real Flax linen and NNX models, inside the optimizer update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

LR, WD = 1e-3, 1e-4  # the paper's convention: the decay is -WD * theta per step
X = jnp.ones((2, 8, 8, 1))


class LinenNet(nn.Module):
  """Conv + BatchNorm + LayerNorm + Dense: every kind of leaf the mask must tell apart."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.LayerNorm()(x)
    return nn.Dense(3)(x.mean((1, 2)))


class NnxNet(nnx.Module):
  """The NNX twin of :class:`LinenNet`."""

  def __init__(self, rngs: nnx.Rngs) -> None:
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.ln = nnx.LayerNorm(4, rngs=rngs)
    self.linear = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear(self.ln(self.bn(self.conv(x))).mean((1, 2)))


def _linen_params() -> Any:
  variables = LinenNet().init(jax.random.key(0), X)
  # Non-zero everywhere, so that a decayed bias would visibly move.
  return jax.tree.map(lambda p: p + 0.5, variables["params"])


def _nnx_model() -> NnxNet:
  model = NnxNet(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p + 0.5, state))
  return model


def _expected_decayed(path: tuple[Any, ...]) -> bool:
  names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
  return "kernel" in names


def _check_decay(before: Any, after: Any, factor: float = WD) -> None:
  """Kernels shrank by exactly ``factor * theta``; every other leaf is unchanged."""
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = jax.tree_util.tree_leaves(after)
  assert len(flat_before) == len(flat_after) == 8
  for (path, b), a in zip(flat_before, flat_after, strict=True):
    b, a = np.asarray(b), np.asarray(a)
    if _expected_decayed(path):
      np.testing.assert_allclose(a, b * (1 - factor), rtol=1e-6, err_msg=str(path))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_mask_values_on_linen_params() -> None:
  mask = dopt.weight_decay_mask(_linen_params())
  assert mask == {
    "Conv_0": {"kernel": True, "bias": False},
    "BatchNorm_0": {"scale": False, "bias": False},
    "LayerNorm_0": {"scale": False, "bias": False},
    "Dense_0": {"kernel": True, "bias": False},
  }


def test_mask_values_on_nnx_state_both_forms() -> None:
  model = _nnx_model()
  with_nodes = nnx.state(model, nnx.Param)
  pure = nnx.as_pure(with_nodes) if hasattr(nnx, "as_pure") else nnx.pure(with_nodes)
  for params in (with_nodes, pure, model):
    flat = jax.tree_util.tree_leaves_with_path(dopt.weight_decay_mask(params))
    assert len(flat) == 8
    for path, decayed in flat:
      assert decayed is _expected_decayed(path), path


@pytest.mark.parametrize("as_tree", [False, True], ids=["callable", "tree"])
@pytest.mark.parametrize(
  "factory",
  [
    lambda mask: dopt.adamw(LR, WD, mask=mask, weight_decay_convention="paper"),
    lambda mask: dopt.sgdw(LR, 0.9, WD, mask=mask, weight_decay_convention="paper"),
    lambda mask: dopt.inject_hyperparams(dopt.adamw)(
      learning_rate=LR, weight_decay=WD, mask=mask, weight_decay_convention="paper"
    ),
    lambda mask: optax.inject_hyperparams(dopt.adamw, static_args=("mask",))(
      learning_rate=LR, weight_decay=WD, mask=mask, weight_decay_convention="paper"
    ),
  ],
  ids=["adamw", "sgdw", "dopt.inject_hyperparams", "optax.inject_hyperparams"],
)
def test_linen_update_decays_only_kernels(factory: Any, as_tree: bool) -> None:
  params = _linen_params()
  mask = dopt.weight_decay_mask(params) if as_tree else dopt.weight_decay_mask
  tx = factory(mask)
  zeros = jax.tree.map(jnp.zeros_like, params)  # no loss gradient: only the decay moves

  @jax.jit
  def step(params: Any, state: Any) -> tuple[Any, Any]:
    updates, state = tx.update(zeros, state, params)
    return optax.apply_updates(params, updates), state

  new_params, _ = step(params, tx.init(params))
  _check_decay(params, new_params)


def test_linen_train_state_step() -> None:
  """Through ``flax.training.train_state.TrainState`` with real gradients."""
  from flax.training import train_state

  model = LinenNet()
  variables = model.init(jax.random.key(0), X)
  params = jax.tree.map(lambda p: p + 0.5, variables["params"])
  tx = dopt.adamw(LR, WD, mask=dopt.weight_decay_mask, weight_decay_convention="paper")
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  plain = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=dopt.adamw(LR, 0.0))

  def loss(p: Any) -> jax.Array:
    out, _ = model.apply(
      {"params": p, "batch_stats": variables["batch_stats"]}, X, mutable=["batch_stats"]
    )
    return jnp.sum(out**2)

  grads = jax.grad(loss)(params)
  decayed, undecayed = state.apply_gradients(grads=grads), plain.apply_gradients(grads=grads)
  # The difference between the two runs is the decay: -WD * theta on kernels, 0 elsewhere.
  diff = jax.tree.map(lambda a, b: a - b, decayed.params, undecayed.params)
  for path, d in jax.tree_util.tree_leaves_with_path(diff):
    p = params
    for k in path:
      p = p[k.key]
    expected = -WD * np.asarray(p) if _expected_decayed(path) else np.zeros_like(p)
    np.testing.assert_allclose(np.asarray(d), expected, rtol=1e-3, atol=2e-7, err_msg=str(path))


@pytest.mark.parametrize("as_tree", [False, True], ids=["callable", "tree"])
@pytest.mark.parametrize(
  "factory",
  [
    lambda mask: dopt.adamw(LR, WD, mask=mask, weight_decay_convention="paper"),
    lambda mask: dopt.inject_hyperparams(dopt.adamw)(
      learning_rate=LR, weight_decay=WD, mask=mask, weight_decay_convention="paper"
    ),
    lambda mask: optax.inject_hyperparams(dopt.sgdw, static_args=("mask",))(
      learning_rate=LR, momentum=0.9, weight_decay=WD, mask=mask, weight_decay_convention="paper"
    ),
  ],
  ids=["adamw", "dopt.inject_hyperparams", "optax.inject_hyperparams"],
)
def test_nnx_optimizer_decays_only_kernels(factory: Any, as_tree: bool) -> None:
  model = _nnx_model()
  mask = dopt.weight_decay_mask(nnx.state(model, nnx.Param)) if as_tree else dopt.weight_decay_mask
  optimizer = nnx.Optimizer(model, factory(mask), wrt=nnx.Param)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))

  @nnx.jit
  def step(model: NnxNet, optimizer: nnx.Optimizer, grads: Any) -> None:
    optimizer.update(model, grads)

  step(model, optimizer, zeros)
  _check_decay(before, nnx.state(model, nnx.Param))


def test_plain_tree_map_mask_is_not_needed_for_nnx() -> None:
  """The mask puts one bool per ``nnx.Param`` node, so it is a prefix of both forms."""
  state = nnx.state(_nnx_model(), nnx.Param)
  mask = dopt.weight_decay_mask(state)
  assert all(isinstance(leaf, bool) for leaf in jax.tree.leaves(mask))
  assert len(jax.tree.leaves(mask)) == len(jax.tree.leaves(state))


def test_callable_mask_with_plain_optax_inject_hyperparams_raises() -> None:
  """Without static_args optax would call the mask on the step count; the library refuses."""
  params = _linen_params()
  tx = optax.inject_hyperparams(dopt.adamw)(
    learning_rate=LR, weight_decay=WD, mask=dopt.weight_decay_mask, weight_decay_convention="paper"
  )
  with pytest.raises((ValueError, TypeError)):
    tx.init(params)


def test_custom_excluded_names() -> None:
  params = {"embed": {"embedding": jnp.ones((5, 3))}, "dense": {"kernel": jnp.ones((3, 3))}}
  mask = dopt.make_weight_decay_mask(exclude_names=("bias", "scale", "embedding"))(params)
  assert mask == {"embed": {"embedding": False}, "dense": {"kernel": True}}
  assert dopt.weight_decay_mask(params, min_ndim=3) == {
    "embed": {"embedding": False},
    "dense": {"kernel": False},
  }
