"""with_diagnostics on 8 devices: GSPMD-sharded, pmap and shard_map give one device's diagnostics."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from _sharded_model import (
  SPECS,
  init_params,
  loss,
  make_batch,
  put_sharded,
  shard_map_train,
  train_steps,
)

import decoupled_optax as dopt

STEPS = 3


def _one_device(make_tx):
  _, state = train_steps(make_tx(), jax.device_put(init_params(), jax.devices()[0]), STEPS)
  return jax.tree.map(np.asarray, dopt.read_diagnostics(state))


def _assert_same(actual, expected):
  assert set(actual) == set(expected)
  # Every decision of AdamP's test is exercised, so equal codes are not vacuous.
  assert {int(v) for k, v in expected.items() if k.startswith("projection/")} == {0, 1, 2}
  for key, value in expected.items():
    np.testing.assert_allclose(np.asarray(actual[key]), value, rtol=2e-5, err_msg=key)


def _adamp(**kwargs):
  return dopt.with_diagnostics(
    dopt.adamp(1e-2, 1e-4, weight_decay_convention="paper", **kwargs),
    **{k: v for k, v in kwargs.items() if k in ("axis_name", "param_specs")},
  )


def test_gspmd_sharded_params_give_one_devices_diagnostics():
  _, state = train_steps(_adamp(), put_sharded(init_params()), STEPS)
  diagnostics = jax.jit(dopt.read_diagnostics)(state)
  _assert_same(diagnostics, _one_device(_adamp))


def test_pmap_gives_one_devices_diagnostics():
  tx, n = _adamp(), 8
  params = jax.device_put(init_params(), jax.devices()[0])
  replicate = lambda tree: jax.tree.map(lambda x: np.stack([x] * n), tree)  # noqa: E731

  @functools.partial(jax.pmap, axis_name="batch")
  def step(params, state, batch):
    grads = jax.lax.pmean(jax.grad(loss)(params, batch), "batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  p_params, p_state = replicate(params), replicate(tx.init(params))
  for i in range(STEPS):
    batch = jax.tree.map(lambda x: x.reshape(n, 1, *x.shape[1:]), make_batch(i))
    p_params, p_state = step(p_params, p_state, batch)
  per_device = jax.tree.map(np.asarray, dopt.read_diagnostics(p_state))
  for key, value in per_device.items():
    np.testing.assert_array_equal(value, np.stack([value[0]] * n), err_msg=key)
  # The mean over the batch split in 8 rounds differently from the one-device mean.
  _assert_same({k: v[0] for k, v in per_device.items()}, _one_device(_adamp))


@pytest.mark.parametrize("with_specs", [True, False], ids=["axis_name_and_specs", "per_shard"])
def test_shard_map_with_axis_names_gives_one_devices_diagnostics(with_specs):
  kwargs = dict(axis_name=("x", "y"), param_specs=SPECS) if with_specs else {}
  _, state = shard_map_train(_adamp(**kwargs), SPECS, STEPS, check_vma=False)
  diagnostics = jax.tree.map(np.asarray, dopt.read_diagnostics(state))
  expected = _one_device(_adamp)
  if with_specs:
    _assert_same(diagnostics, expected)
  else:  # per-shard norms of the sharded conv kernel: not the global one
    assert not np.isclose(diagnostics["weight_norm/conv"], expected["weight_norm/conv"])
