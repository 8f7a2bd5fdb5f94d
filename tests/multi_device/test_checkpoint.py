"""Checkpoints: the sharded optimizer state through orbax-checkpoint and flax.serialization.

A run resumed from a checkpoint must continue bit for bit like one that never
stopped, with params and state restored to their shardings.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from _sharded_model import SPECS, init_params, loss, make_batch
from _trees import assert_trees_close
from jax.sharding import Mesh, NamedSharding

import decoupled_optax as dopt

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")

FIRST, SECOND = 2, 2  # steps before and after the checkpoint


@functools.cache
def _setup():
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))
  # A schedule, so that a wrong step count after the restore would show.
  tx = dopt.adamp(
    1e-2,
    1e-4,
    schedule=dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2),
    weight_decay_convention="paper",
  )
  params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in init_params().items()}

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def run(params, state, start, steps):
    for i in range(start, start + steps):
      params, state = step(params, state, make_batch(i))
    return params, state

  state = jax.jit(tx.init)(params)
  checkpoint = run(params, state, 0, FIRST)
  uninterrupted = run(*checkpoint, FIRST, SECOND)
  shardings = (jax.tree.map(lambda x: x.sharding, params), dopt.state_shardings(tx, params))
  return tx, params, run, checkpoint, uninterrupted, shardings


def _assert_shardings(tree, shardings):
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)


def test_orbax_sharded_save_and_restore_resumes_bit_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  tx, params, run, checkpoint, uninterrupted, shardings = _setup()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": checkpoint[0], "opt_state": checkpoint[1]})
  checkpointer.wait_until_finished()

  # The restore target: shapes, dtypes and shardings, derived from the params alone.
  abstract_state = jax.eval_shape(tx.init, params)
  target = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    {"params": params, "opt_state": abstract_state},
    {"params": shardings[0], "opt_state": shardings[1]},
  )
  restored = checkpointer.restore(tmp_path / "ckpt", target)
  checkpointer.close()
  restored = (restored["params"], restored["opt_state"])
  assert_trees_close(restored, checkpoint)
  _assert_shardings(restored, shardings)
  assert_trees_close(run(*restored, FIRST, SECOND), uninterrupted)


def test_flax_serialization_resumes_bit_identically():
  serialization = pytest.importorskip("flax.serialization")
  tx, params, run, checkpoint, uninterrupted, shardings = _setup()
  data = serialization.to_bytes(checkpoint)
  # A fresh template of the same structure, as a program that restarts would build.
  template = (params, jax.jit(tx.init)(params))
  restored = serialization.from_bytes(template, data)
  restored = jax.device_put(restored, shardings)
  assert_trees_close(restored, checkpoint)
  _assert_shardings(restored, shardings)
  assert_trees_close(run(*restored, FIRST, SECOND), uninterrupted)
