"""Decoupled weight decay as an optax transform, and the paper's normalized decay.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
https://arxiv.org/abs/1711.05101.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from decoupled_optax._trees import (
  check_mask_leaves,
  check_not_nnx_graph,
  check_same_structure,
  checked_mask,
  require_params,
)
from decoupled_optax._validation import check_non_negative, check_number

# Name of the extra argument through which a wrapper such as
# :func:`decoupled_optax.detect_scale_invariance` scales the decay per leaf.
WEIGHT_DECAY_MULTIPLIERS = "weight_decay_multipliers"

MaskOrFn = Any | Callable[[optax.Params], Any] | None

# What to do when optax.inject_hyperparams has evaluated a callable mask on the
# step count as if it were a schedule (which silently disables weight decay).
MASK_AS_SCHEDULE_HINT = (
  "This happens when optax.inject_hyperparams treats a callable mask as a schedule and "
  "evaluates it on the step count, which silently disables weight decay. Pass "
  "static_args=('mask',) to optax.inject_hyperparams, or use "
  "decoupled_optax.inject_hyperparams, which does it for you."
)


class AddDecoupledWeightDecayState(NamedTuple):
  """State of :func:`add_decoupled_weight_decay` with a scheduled decay: the schedule's step.

  A constant decay keeps ``optax.EmptyState()``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> params = {"w": jnp.ones(2), "b": jnp.zeros(2)}
    >>> dopt.add_decoupled_weight_decay(optax.linear_schedule(1e-4, 0.0, 10)).init(params)
    AddDecoupledWeightDecayState(count=Array(0, dtype=int32))
    >>> dopt.add_decoupled_weight_decay(1e-4).init(params)
    EmptyState()
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)


def add_decoupled_weight_decay(
  weight_decay: optax.ScalarOrSchedule,
  mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``weight_decay * params`` to the updates.

  .. math:: u \leftarrow u + \lambda_t \, r \, \theta

  where ``r`` is a per-leaf multiplier that a wrapper may pass through the
  ``weight_decay_multipliers`` extra argument (AdamP's ``wd_ratio`` on
  scale-invariant weights, see :func:`decoupled_optax.detect_scale_invariance`),
  and 1 otherwise.

  Where this sits in a chain decides which convention it implements:

  * before the learning-rate scaling it is PyTorch / optax AdamW,
    ``theta -= lr * (direction + lambda * theta)``;
  * after scaling by the base rate alpha and before the schedule multiplier
    eta_t it is the paper's Algorithm 2,
    ``theta -= eta_t * (alpha * direction + lambda * theta)``.

  Args:
    weight_decay: lambda >= 0, a scalar or an optax schedule of the step.
    mask: as in optax, a pytree of bools with the structure of (or a prefix
      of) the params, or a callable that returns one from the params. Leaves
      marked False are not decayed.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> tx = optax.chain(optax.scale_by_adam(), dopt.add_decoupled_weight_decay(1e-2),
    ...                  optax.scale_by_learning_rate(1e-3))  # == optax.adamw(1e-3, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)  # -lr * wd * w
    -1e-05

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, Algorithms 1 and 2.
  """
  check_non_negative("weight_decay", weight_decay, schedule=True)
  check_mask_argument(mask)

  # Only a schedule needs a step count; a constant decay keeps no state, so
  # the compiled step is exactly optax.adamw's (no counter kernel).
  scheduled = callable(weight_decay)

  def init_fn(params: optax.Params) -> optax.OptState:
    check_not_nnx_graph(params)
    if scheduled:
      return AddDecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    params = require_params(params)
    check_same_structure("updates", updates, params)
    decay: Any = weight_decay
    if isinstance(state, AddDecoupledWeightDecayState) and callable(weight_decay):
      decay = weight_decay(state.count)
      state = AddDecoupledWeightDecayState(count=jnp.asarray(optax.safe_increment(state.count)))
    multipliers = extra_args.get(WEIGHT_DECAY_MULTIPLIERS)

    def decay_leaf(update: jax.Array, param: jax.Array, multiplier: Any = None) -> jax.Array:
      if update is None:
        return update
      coefficient = decay if multiplier is None else decay * multiplier
      return (update + coefficient * param).astype(update.dtype)

    if multipliers is None:
      updates = jax.tree.map(decay_leaf, updates, params, is_leaf=lambda x: x is None)
    else:
      updates = jax.tree.map(decay_leaf, updates, params, multipliers, is_leaf=lambda x: x is None)
    return updates, state

  transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  if mask is None:
    return transform
  return optax.masked(transform, checked_mask(mask), mask_compatible_extra_args=True)


def check_mask_argument(mask: Any) -> None:
  """A mask is None, a callable of the params, or a pytree of bools; never a single bool."""
  scalar = isinstance(mask, (bool, np.bool_)) or (
    isinstance(mask, (jax.Array, np.ndarray)) and mask.ndim == 0
  )
  if scalar:
    raise ValueError(
      "mask must be a pytree of bools (one per leaf or subtree of the params) or a callable "
      f"that returns one from the params, got the scalar {mask!r}. To decay every leaf omit "
      "mask (mask=None); to decay kernels but not biases and normalization scales pass "
      "mask=decoupled_optax.weight_decay_mask; to decay nothing pass weight_decay=0. (A "
      "callable mask passed through optax.inject_hyperparams is evaluated on the step count "
      "as if it were a schedule: pass static_args=('mask',) there, or use "
      "decoupled_optax.inject_hyperparams.)"
    )
  if isinstance(mask, (str, bytes, int, float, complex)):
    raise TypeError(
      "mask must be None, a pytree of bools or a callable of the params, "
      f"got {type(mask).__name__} {mask!r}."
    )
  if not callable(mask):
    check_mask_leaves(mask)


def normalized_weight_decay(
  lambda_norm: float,
  batch_size: int,
  num_train_points: int,
  num_epochs: float,
) -> float:
  r"""The paper's normalized weight decay, Appendix B.1.

  .. math:: \lambda = \lambda_{norm} \sqrt{\frac{b}{B \, T}}

  with ``b`` the batch size, ``B`` the number of training points and ``T``
  the number of epochs (with warm restarts, the length of the current
  period: see :func:`normalized_weight_decay_schedule`). The authors found
  ``lambda_norm`` of 0.025 to 0.05 good for both SGDW and AdamW. The result is
  the paper's lambda: pass it with ``weight_decay_convention="paper"``.

  Args:
    lambda_norm: the normalized decay, >= 0.
    batch_size: b, >= 1.
    num_train_points: B, >= 1.
    num_epochs: T, the length of the run (or of the current period) in epochs, > 0.

  Returns:
    The paper's lambda, a float.

  Example:
    >>> import decoupled_optax as dopt
    >>> round(dopt.normalized_weight_decay(0.05, batch_size=128, num_train_points=50_000, num_epochs=100), 7)
    0.000253

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, Appendix B.1.
  """
  check_non_negative("lambda_norm", lambda_norm)
  check_number("batch_size", batch_size, low=1, integer=True)
  check_number("num_train_points", num_train_points, low=1, integer=True)
  check_number("num_epochs", num_epochs, low=0, low_inclusive=False)
  return lambda_norm * math.sqrt(batch_size / (num_train_points * num_epochs))
