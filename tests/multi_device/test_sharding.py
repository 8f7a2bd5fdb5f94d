"""Multi-device: jit over NamedSharding (GSPMD), pmap, shard_map, and state shardings.

Runs on 8 fake CPU devices (tests/multi_device/conftest.py sets the XLA flag). The
reference is always the same computation on one device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _sharded_model import (
  SPECS,
  auto_mesh,
  init_params,
  jitted_grad,
  loss,
  make_batch,
  put_sharded,
  shard_map_train,
  train_steps,
)
from _trees import assert_trees_close
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import decoupled_optax as dopt

pytestmark = pytest.mark.skipif(
  jax.device_count() < 8,
  reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8",
)

STEPS = 3
RTOL = 1e-6


def _single(tree):
  return jax.device_put(tree, jax.devices()[0])


OPTIMIZERS = {
  "adamwr": lambda: dopt.adamw(
    1e-2,
    1e-4,
    schedule=dopt.cosine_warm_restart_schedule(1.0, first_period=1, period_mult=2),
    weight_decay_convention="paper",
  ),
  "adamw_torch_schedule": lambda: dopt.adamw(
    optax.cosine_decay_schedule(1e-2, 10), 1e-2, weight_decay_convention="torch"
  ),
  "sgdw": lambda: dopt.sgdw(
    0.1,
    0.9,
    1e-4,
    nesterov=True,
    schedule=dopt.cosine_warm_restart_schedule(1.0, 2),
    weight_decay_convention="paper",
  ),
  "adamp": lambda: dopt.adamp(1e-2, 1e-4, weight_decay_convention="paper"),
  "adamp_nesterov_torch": lambda: dopt.adamp(
    1e-2, 1e-2, nesterov=True, weight_decay_convention="torch", wd_ratio=0.01
  ),
  "sgdp": lambda: dopt.sgdp(0.1, 0.9, 1e-4, weight_decay_convention="paper"),
  # The blocks, around another direction, with a mask and normalized decay.
  "blocks": lambda: dopt.detect_scale_invariance(
    optax.chain(
      optax.trace(0.9),
      dopt.project_out_radial(),
      dopt.add_decoupled_weight_decay(
        dopt.normalized_weight_decay_schedule(0.05, 8, 800, first_period=2),
        mask=lambda p: {k: k != "scale" for k in p},
      ),
      optax.scale(-1e-2),
    )
  ),
}


def _train_all(params, optimizers=OPTIMIZERS):
  """Init and STEPS steps of every optimizer, in one jitted program (one compilation)."""
  batches = jax.tree.map(lambda *x: np.stack(x), *[make_batch(i) for i in range(STEPS)])

  def train(tx, params):
    def step(carry, batch):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, tx.init(params)), batches)[0]

  return jax.jit(lambda p: {name: train(make(), p) for name, make in optimizers.items()})(params)


@functools.cache
def _jit_runs():
  return _train_all(_single(init_params())), _train_all(put_sharded(init_params()))


def _assert_same_sharding(array, sharding):
  assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_jit_over_named_sharding_matches_one_device(name):
  (reference, reference_state), (params_out, state_out) = (run[name] for run in _jit_runs())
  assert_trees_close(params_out, reference, rtol=RTOL, leaf_scale=True, check_dtypes=False)
  assert_trees_close(state_out, reference_state, rtol=RTOL, leaf_scale=True, check_dtypes=False)
  # The params keep their sharding, and the state follows them.
  params = put_sharded(init_params())
  for k in params:
    _assert_same_sharding(params_out[k], params[k].sharding)
  state_shardings = dopt.state_shardings(OPTIMIZERS[name](), params)
  for leaf, sharding in zip(
    jax.tree.leaves(state_out), jax.tree.leaves(state_shardings), strict=True
  ):
    _assert_same_sharding(leaf, sharding)


def test_scale_invariance_test_is_global_under_jit():
  """AdamP's per-channel and per-tensor cosines and norms: every view, as on one device."""
  grads = jax.jit(jax.grad(loss))(_single(init_params()), make_batch(0))
  reference = jax.jit(dopt.scale_invariance)(grads, _single(init_params()))
  sharded = jax.jit(dopt.scale_invariance)(put_sharded(grads), put_sharded(init_params()))
  projectors, multipliers = reference
  assert float(multipliers["conv"]) == pytest.approx(0.1)  # the channel view holds
  assert float(jnp.max(projectors["conv"].channel_weight)) > 0
  assert float(multipliers["dense2"]) == pytest.approx(0.1)  # only the whole view holds
  assert float(projectors["dense2"].whole_weight) > 0
  assert float(multipliers["dense"]) == 1.0 and float(multipliers["emb"]) == 1.0
  assert_trees_close(sharded, reference, rtol=RTOL, leaf_scale=True, check_dtypes=False)


def test_explicit_mesh_axes():
  """jax.make_mesh's default axes are Explicit: the same numbers and shardings there."""
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  reference = _jit_runs()[0]["adamp"]
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in init_params().items()}
    params_out, state_out = _train_all(params, {"adamp": OPTIMIZERS["adamp"]})["adamp"]
  assert_trees_close(
    (params_out, state_out), reference, rtol=RTOL, leaf_scale=True, check_dtypes=False
  )
  for k in params:
    _assert_same_sharding(params_out[k], params[k].sharding)
    _assert_same_sharding(state_out[0].mu[k], params[k].sharding)


# --- The state follows the params ----------------------------------------------------------


class _Pair:
  """A state leaf and the index of its param; not a pytree node."""

  def __init__(self, leaf, index):
    self.leaf, self.index = leaf, index


def _param_shaped_leaves(params, state):
  mapped = dopt.sharding.map_param_state(state, params, _Pair, lambda _: None)
  return [(p.leaf, p.index) for p in jax.tree.leaves(mapped)]


@pytest.mark.parametrize("jitted", [False, True], ids=["eager_init", "jitted_init"])
def test_state_is_sharded_like_the_params(jitted):
  tx = dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper")
  params = put_sharded(init_params())
  state = (jax.jit(tx.init) if jitted else tx.init)(params)
  param_leaves = jax.tree.leaves(params)
  pairs = _param_shaped_leaves(params, state)
  assert len(pairs) == 2 * len(param_leaves)  # Adam's mu and nu
  for leaf, i in pairs:
    param = param_leaves[i]
    _assert_same_sharding(leaf, param.sharding)
    # Each device holds 1/N of the state of a param sharded N ways.
    shard = leaf.addressable_shards[0].data
    assert shard.size == param.addressable_shards[0].data.size
  counts = [x for x in jax.tree.leaves(state) if x.ndim == 0]
  assert counts and all(c.sharding.is_fully_replicated for c in counts)
  np.testing.assert_array_equal(state[0].mu["conv"], np.zeros((3, 3, 4, 8)))


def test_optax_loses_the_sharding_under_jit_and_keep_param_sharding_fixes_it():
  params = put_sharded(init_params())
  plain = jax.jit(optax.adam(1e-3).init)(params)
  assert len(plain[0].mu["dense"].sharding.device_set) == 1  # optax: all on one device
  kept = jax.jit(dopt.keep_param_sharding(optax.adam(1e-3)).init)(params)
  for k in params:
    _assert_same_sharding(kept[0].mu[k], params[k].sharding)
    np.testing.assert_array_equal(kept[0].mu[k], np.zeros_like(params[k]))


def test_state_shardings_and_init_sharded_work_for_any_optax_transform():
  params = put_sharded(init_params())
  tx = optax.chain(optax.masked(optax.adam(1e-3), {k: k != "emb" for k in params}), optax.sgd(1))
  shardings = dopt.state_shardings(tx, params)
  state = dopt.init_sharded(tx, params)
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
  for k in params:
    inner = state[0].inner_state[0]
    if k == "emb":
      assert isinstance(inner.mu[k], optax.MaskedNode)
    else:
      _assert_same_sharding(inner.mu[k], params[k].sharding)
      assert shardings[0].inner_state[0].nu[k] == params[k].sharding
  # From abstract params and explicit shardings, as when restoring a checkpoint.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  explicit = dopt.state_shardings(tx, abstract, jax.tree.map(lambda x: x.sharding, params))
  assert jax.tree.leaves(explicit) == jax.tree.leaves(shardings)


def test_state_partition_specs():
  params = init_params()
  specs = dopt.state_partition_specs(
    dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper"), params, SPECS
  )
  assert specs[0].mu == SPECS and specs[0].nu == SPECS
  assert specs[0].count == P()


def test_flax_logical_partitioning_recipe():
  """lm1b's setup_initial_state: eval_shape, get_partition_spec, logical_to_mesh_sharding."""
  nn = pytest.importorskip("flax.linen")

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(
        16,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
      )(x)
      x = nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("mlp",)))(x)
      return nn.Dense(
        8,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
      )(x)

  rules = (("embed", "y"), ("mlp", "x"))
  model, tx = Model(), dopt.adamp(1e-3, 1e-5, weight_decay_convention="paper")
  x = jnp.ones((2, 8))

  def init_fn(rng):
    params = model.init(rng, x)["params"]
    return params, tx.init(params)

  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  logical_specs = nn.get_partition_spec(abstract)
  shardings = nn.logical_to_mesh_sharding(logical_specs, auto_mesh(), rules)
  params, state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0))
  kernel = params["Dense_0"]["kernel"]
  assert kernel.value.sharding.spec == P("y", "x")
  for moment in (state[0].mu, state[0].nu):
    leaf = moment["Dense_0"]["kernel"]
    assert isinstance(leaf, nn.Partitioned) and leaf.names == ("embed", "mlp")
    _assert_same_sharding(leaf.value, kernel.value.sharding)
  # Every state leaf has its param's shape or is a scalar: nothing breaks the recipe.
  shapes = {x.shape for x in jax.tree.leaves(nn.unbox(abstract[1]))}
  assert shapes <= {x.shape for x in jax.tree.leaves(nn.unbox(abstract[0]))} | {()}


# --- pmap ----------------------------------------------------------------------------------


def test_pmap_data_parallel_matches_one_device():
  tx = dopt.adamp(1e-2, 1e-4, weight_decay_convention="paper")
  n = 8
  params = _single(init_params())

  @functools.partial(jax.pmap, axis_name="batch")
  def grads_fn(params, batch):
    return jax.lax.pmean(jax.grad(loss)(params, batch), "batch")

  def update(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  update_pmap, update_one = jax.pmap(update, axis_name="batch"), jax.jit(update)
  replicate = lambda tree: jax.tree.map(lambda x: np.stack([x] * n), tree)  # noqa: E731
  first = lambda tree: jax.tree.map(lambda x: _single(x[0]), tree)  # noqa: E731
  p_params, p_state = replicate(params), replicate(jax.jit(tx.init)(params))
  one_params, one_state = params, jax.jit(tx.init)(params)
  for i in range(STEPS):
    batch = make_batch(i)
    p_grads = grads_fn(p_params, jax.tree.map(lambda x: x.reshape(n, 1, *x.shape[1:]), batch))
    # The update of pmean'd gradients is exactly the one-device update of those gradients.
    expected = update_one(first(p_grads), first(p_state), first(p_params))
    p_params, p_state = update_pmap(p_grads, p_state, p_params)
    for a, e in zip(jax.tree.leaves((p_params, p_state)), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.stack([np.asarray(e)] * n))
    one_params, one_state = update_one(jitted_grad(one_params, batch), one_state, one_params)
  # And the whole data-parallel run is the one-device run up to the rounding of the mean.
  assert_trees_close(first(p_params), one_params, rtol=RTOL, leaf_scale=True, check_dtypes=False)


# --- shard_map -----------------------------------------------------------------------------

SHARD_MAP_OPTIMIZERS = {
  "adamp": functools.partial(dopt.adamp, weight_decay_convention="paper"),
  "sgdp": functools.partial(
    dopt.sgdp, momentum=0.9, nesterov=True, weight_decay_convention="paper"
  ),
}


@functools.cache
def _one_device_run(name):
  return train_steps(
    SHARD_MAP_OPTIMIZERS[name](1e-2, weight_decay=1e-4), _single(init_params()), STEPS
  )


@pytest.mark.parametrize("name", list(SHARD_MAP_OPTIMIZERS))
def test_shard_map_with_param_specs_matches_one_device(name):
  factory = SHARD_MAP_OPTIMIZERS[name]
  tx = factory(1e-2, weight_decay=1e-4, axis_name=("x", "y"), param_specs=SPECS)
  assert_trees_close(
    shard_map_train(tx, SPECS, STEPS),
    _one_device_run(name),
    rtol=RTOL,
    leaf_scale=True,
    check_dtypes=False,
  )


@pytest.mark.parametrize("name", list(SHARD_MAP_OPTIMIZERS))
def test_shard_map_with_sharded_params_and_no_axis_names_raises(name):
  """Per-shard cosines and norms (dense2 0.27 relative off) would otherwise pass silently."""
  tx = SHARD_MAP_OPTIMIZERS[name](1e-2, weight_decay=1e-4, weight_decay_convention="paper")
  with pytest.raises(
    ValueError,
    match=r"param 'conv' is sharded over the mesh axes \['x'\].*axis_name=None.*"
    r"Pass axis_name=\('x', 'y'\).*param_specs=.*axis_name=\(\) to compute the statistics per shard",
  ):
    shard_map_train(tx, SPECS, 1)


def test_shard_map_axis_name_that_misses_a_sharding_axis_raises():
  """dense2 is sharded over y too, which axis_name="x" alone does not reduce over."""
  tx = dopt.adamp(1e-2, 1e-4, axis_name="x", weight_decay_convention="paper")
  with pytest.raises(ValueError, match=r"param 'dense2' is sharded over the mesh axes \['y'\]"):
    shard_map_train(tx, SPECS, 1)


def test_shard_map_with_replicated_params_needs_no_axis_names():
  """Data parallelism: params with P() in_specs vary over no mesh axis, and the step is global."""
  replicated = {k: P() for k in SPECS}
  tx = dopt.adamp(1e-2, weight_decay=1e-4, weight_decay_convention="paper")
  params, _ = shard_map_train(tx, replicated, STEPS)
  assert_trees_close(
    params, _one_device_run("adamp")[0], rtol=RTOL, leaf_scale=True, check_dtypes=False
  )


def test_shard_map_per_shard_statistics_on_purpose():
  """``axis_name=()``: the cosines and norms are those of each shard, as asked."""
  tx = dopt.adamp(1e-2, 1e-4, axis_name=(), weight_decay_convention="paper")
  params, _ = shard_map_train(tx, SPECS, STEPS)
  reference, _ = _one_device_run("adamp")
  # dense2 is scale invariant only as a whole: no shard of it is.
  assert not np.allclose(params["dense2"], reference["dense2"], rtol=1e-4)
  # Leaves sharded over their channels only are per-channel complete: they agree.
  assert_trees_close(
    params["conv"], reference["conv"], rtol=RTOL, leaf_scale=True, check_dtypes=False
  )


def test_shard_map_axis_name_alone_for_non_channel_sharding():
  """``axis_name`` without specs: >1-D leaves sharded over it along non-channel dims (FSDP)."""
  specs = {
    "conv": P(None, None, "x", None),
    "dense": P("x", None),
    "dense2": P("x", None),
    "emb": P(),  # replicated: outside the contract of axis_name alone, not checked
    "bias": P(),
    "scale": P(),
  }
  result, _ = shard_map_train(
    dopt.adamp(1e-2, 1e-4, axis_name="x", weight_decay_convention="paper"), specs, STEPS
  )
  reference, _ = _one_device_run("adamp")
  for k in ("conv", "dense", "dense2", "bias", "scale"):
    assert_trees_close(result[k], reference[k], rtol=RTOL, leaf_scale=True, check_dtypes=False)


def test_param_specs_validation():
  grads = params = {"w": jnp.ones((4, 8))}
  with pytest.raises(ValueError, match="not in axis_name"):
    dopt.scale_invariance(
      grads, params, dopt.RadialProjection(axis_name="x", param_specs={"w": P("y", None)})
    )
  with pytest.raises(ValueError, match="more entries"):
    dopt.scale_invariance(
      grads, params, dopt.RadialProjection(param_specs={"w": P("x", None, None)})
    )
