"""Mistakes that used to end in someone else's error: each now names the argument and the fix.

* a boolean array as a mask leaf (jax's "truth value of an array ... is ambiguous");
* ``mask=True`` (the message blamed ``inject_hyperparams``);
* an ``nnx.Module``, or ``nnx.state(model)`` with its batch statistics, given as params
  (a mask mismatch at ``bias/value``, or batch statistics silently optimized).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoupled_optax as dopt

MASKED: list[tuple[str, Callable[..., optax.GradientTransformation]]] = [
  ("adamw", lambda **k: dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper", **k)),
  ("sgdw", lambda **k: dopt.sgdw(0.1, 0.9, 1e-4, weight_decay_convention="paper", **k)),
  ("adamp", lambda **k: dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper", **k)),
  ("sgdp", lambda **k: dopt.sgdp(0.1, 0.9, 1e-4, weight_decay_convention="paper", **k)),
  ("add_decoupled_weight_decay", lambda **k: dopt.add_decoupled_weight_decay(1e-4, **k)),
  (
    "decoupled_chain",
    lambda **k: dopt.decoupled_chain(
      optax.scale_by_lion(),
      learning_rate=1e-4,
      weight_decay=1e-5,
      weight_decay_convention="paper",
      **k,
    ),
  ),
  (
    "inject_hyperparams",
    lambda **k: dopt.inject_hyperparams(dopt.adamw)(
      1e-3, 1e-4, weight_decay_convention="paper", **k
    ),
  ),
]
IDS = [name for name, _ in MASKED]
PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}


# --- 1. A boolean array as a mask leaf: a mask decides per leaf, as optax.masked does.

ARRAY_LEAF = (
  r"mask must hold one bool per leaf .*shape \(3,\) at 'b'.*split it into separate leaves"
)


@pytest.mark.parametrize("name, make", MASKED, ids=IDS)
def test_an_elementwise_mask_array_names_mask_at_construction(name, make):
  with pytest.raises(ValueError, match=ARRAY_LEAF):
    make(mask={"w": True, "b": jnp.array([True, False, True])})


@pytest.mark.parametrize("name, make", MASKED, ids=IDS)
def test_an_elementwise_mask_array_from_a_callable_names_mask_at_init(name, make):
  tx = make(mask=lambda p: {"w": True, "b": np.array([True, False, True])})
  with pytest.raises(ValueError, match=ARRAY_LEAF):
    tx.init(PARAMS)


def test_a_0d_bool_array_is_a_valid_mask_leaf():
  tx = dopt.adamw(
    1.0, 0.5, mask={"w": jnp.array(True), "b": np.bool_(False)}, weight_decay_convention="paper"
  )
  updates: Any = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), PARAMS)[0]
  np.testing.assert_allclose(updates["w"], -0.5)
  np.testing.assert_allclose(updates["b"], 0.0)


# --- 3. mask=True: what a mask is, and what to pass instead.


@pytest.mark.parametrize("name, make", MASKED, ids=IDS)
@pytest.mark.parametrize("mask", [True, False, np.bool_(True), jnp.array(False)], ids=str)
def test_a_single_bool_mask_says_what_a_mask_is_and_what_to_pass(name, make, mask):
  with pytest.raises(ValueError) as error:
    make(mask=mask)
  message = str(error.value)
  assert message.startswith(
    "mask must be a pytree of bools (one per leaf or subtree of the params)"
  )
  assert "omit mask (mask=None)" in message
  assert "mask=decoupled_optax.weight_decay_mask" in message
  assert "weight_decay=0" in message


# --- 2. An NNX module (or all of its state) given as params.

NNX_FIX = (
  r"nnx\.Optimizer\(model, tx, wrt=nnx\.Param\).*tx\.init\(nnx\.state\(model, nnx\.Param\)\)"
)

NNX_TRANSFORMS = [
  *MASKED,
  (
    "adamw-weight_decay_mask",
    lambda **k: dopt.adamw(
      1e-3, 1e-4, mask=dopt.weight_decay_mask, weight_decay_convention="paper", **k
    ),
  ),
  (
    "add_decoupled_weight_decay-weight_decay_mask",
    lambda **k: dopt.add_decoupled_weight_decay(1e-4, mask=dopt.weight_decay_mask, **k),
  ),
  (
    "with_diagnostics-adamp",
    lambda **k: dopt.with_diagnostics(dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper", **k)),
  ),
  (
    "detect_scale_invariance",
    lambda **k: dopt.detect_scale_invariance(
      optax.chain(optax.scale_by_adam(), dopt.project_out_radial()), dopt.RadialProjection(**k)
    ),
  ),
]


def _nnx_model() -> Any:
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs: Any) -> None:
      self.linear = nnx.Linear(3, 4, rngs=rngs)
      self.norm = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.norm(self.linear(x))

  return Net(nnx.Rngs(0))


@pytest.mark.parametrize("name, make", NNX_TRANSFORMS, ids=[n for n, _ in NNX_TRANSFORMS])
def test_an_nnx_module_as_params_names_nnx_optimizer_and_nnx_state(name, make):
  model = _nnx_model()
  tx = make()
  with pytest.raises(
    TypeError, match=r"params must be the model's parameters, got the nnx\.Module Net.*" + NNX_FIX
  ):
    tx.init(model)


@pytest.mark.parametrize("name, make", NNX_TRANSFORMS, ids=[n for n, _ in NNX_TRANSFORMS])
def test_all_of_an_nnx_models_state_as_params_names_the_batch_statistics(name, make):
  from flax import nnx

  tx = make()
  with pytest.raises(TypeError, match=r"nnx\.BatchStat variable at 'norm/mean'.*" + NNX_FIX):
    tx.init(nnx.state(_nnx_model()))


def test_the_fixes_the_message_names_work():
  from flax import nnx

  model = _nnx_model()
  tx = dopt.adamp(1e-3, 1e-4, mask=dopt.weight_decay_mask, weight_decay_convention="paper")
  tx.init(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
  optimizer.update(model, grads)
