"""A small model whose gradients exercise every branch of AdamP's test, for the multi-device tests.

* ``conv`` (HWIO) is normalized per output channel, as by a following
  BatchNorm: its gradient is orthogonal to every output channel, so the
  channel view of AdamP's test holds.
* ``dense2`` is normalized as a whole: only the whole-tensor view holds.
* ``dense`` and ``emb`` are plain weights: no view holds.
* ``bias`` and ``scale`` are 1-D: never projected.

The loss averages over a batch of per-example targets, so that data
parallelism (pmap with pmean'd gradients) has something to split.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import decoupled_optax as dopt

SHAPES = {
  "conv": (3, 3, 4, 8),
  "dense": (16, 8),
  "dense2": (8, 16),
  "emb": (6, 4),
  "bias": (8,),
  "scale": (8,),
}

# Under jit and shard_map: conv over its output channels, dense over its
# input dim, dense2 over both, bias over its only dim, emb and scale replicated.
SPECS = {
  "conv": P(None, None, None, "x"),
  "dense": P("x", None),
  "dense2": P("y", "x"),
  "emb": P(),
  "bias": P("x"),
  "scale": P(),
}


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def make_batch(step: int, batch_size: int = 8) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1000 + step)
  return {k: rng.standard_normal((batch_size, *s)).astype(np.float32) for k, s in SHAPES.items()}


def _normalize(w: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
  return w / jnp.sqrt(jnp.sum(w * w, axis=axes, keepdims=True))


def loss(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
  conv = _normalize(params["conv"], (0, 1, 2))
  dense2 = _normalize(params["dense2"], None)
  per_example = (
    jnp.sum(jnp.sin(3.0 * conv * batch["conv"]), axis=(1, 2, 3, 4))
    + jnp.sum(jnp.sin(4.0 * dense2 * batch["dense2"]), axis=(1, 2))
    + 0.5 * jnp.sum((params["dense"] - batch["dense"]) ** 2, axis=(1, 2))
    + jnp.sum(jnp.tanh(params["emb"] * batch["emb"]), axis=(1, 2))
    + jnp.sum(jnp.cos(params["bias"] + batch["bias"]), axis=1)
    + jnp.sum((params["scale"] * batch["scale"]) ** 2, axis=1)
  )
  return jnp.mean(per_example)


jitted_grad = jax.jit(jax.grad(loss))


@functools.cache
def auto_mesh() -> Mesh:
  # The classic GSPMD setting: axes of type Auto.
  return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))


def put_sharded(tree: dict[str, Any], specs: dict[str, P] = SPECS) -> dict[str, jax.Array]:
  return {k: jax.device_put(v, NamedSharding(auto_mesh(), specs[k])) for k, v in tree.items()}


def train_steps(tx: optax.GradientTransformation, params: Any, steps: int) -> tuple[Any, Any]:
  """``steps`` jitted updates on make_batch's batches, wherever ``params`` are placed."""
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for i in range(steps):
    updates, state = update(jitted_grad(params, make_batch(i)), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def shard_map_train(
  tx: optax.GradientTransformation,
  param_specs: dict[str, P],
  steps: int,
  check_vma: bool = True,
) -> tuple[Any, Any]:
  """As ``train_steps``, with params, grads and state sharded inside shard_map by ``param_specs``."""
  params = put_sharded(init_params(), param_specs)
  state_specs = dopt.state_partition_specs(tx, params, param_specs)
  state = jax.jit(tx.init)(params)

  @jax.jit
  @functools.partial(
    jax.shard_map,
    mesh=auto_mesh(),
    in_specs=(param_specs, state_specs, param_specs),
    out_specs=(param_specs, state_specs),
    check_vma=check_vma,
  )
  def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = update(params, state, jitted_grad(params, make_batch(i)))
  return params, state
