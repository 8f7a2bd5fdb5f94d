"""The step's scalars as a chain applies them, kept in the chain's state.

:func:`decoupled_optax.decoupled_chain` ends with :func:`keep_step_scalars`,
whose state holds, after every update, the schedule multiplier eta_t, the
learning rate and the weight decay as that update applied them.
:func:`decoupled_optax.with_diagnostics` reads them from there, wherever the
chain sits in the state it wraps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class StepScalarsState(NamedTuple):
  """The last update's scalars as applied (float32), and the number of updates so far.

  Attributes:
    count: the number of updates so far.
    schedule: eta_t, the schedule multiplier of the last update.
    learning_rate: the learning rate it applied, alpha_t * eta_t.
    weight_decay: the fraction of each decayed weight it removed (before
      AdamP's ``wd_ratio``).
    corrected_weight_decay: with the corrected decay on some leaves only
      (``corrected_decay_leaves``), the fraction removed from those; the
      others lose ``weight_decay``. None otherwise.
    angular_equilibrium_factor: ``c`` in the predicted angular update at
      rotational equilibrium, ``sqrt(2 d c)`` for a per-step decay ``d``
      (Kosson et al. 2024), from the chain's direction; None where the
      direction has no prediction.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper")
    >>> params = {"w": jnp.ones(2)}
    >>> _, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> kept = state[-1]  # the chain's last transform
    >>> int(kept.count), round(float(kept.weight_decay), 9)
    (1, 0.0001)
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  schedule: jax.Array
  learning_rate: jax.Array
  weight_decay: jax.Array
  corrected_weight_decay: jax.Array | None = None
  angular_equilibrium_factor: jax.Array | None = None


StepScalars = Callable[[jax.Array], tuple[Any, ...]]


def keep_step_scalars(step_scalars: StepScalars) -> optax.GradientTransformation:
  """Passes the updates through and keeps ``step_scalars(count)`` in its state.

  Args:
    step_scalars: from the number of updates before this one, the values of
      :class:`StepScalarsState`'s fields after ``count``, in order; None for
      a field the chain does not have (the same at every step).

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`StepScalarsState`.
  """

  def init_fn(params: optax.Params) -> StepScalarsState:
    del params
    count = jnp.zeros([], jnp.int32)
    zeros = [None if x is None else jnp.zeros([], jnp.float32) for x in step_scalars(count)]
    return StepScalarsState(count, *zeros)  # pyright: ignore[reportArgumentType]

  def update_fn(
    updates: optax.Updates, state: StepScalarsState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, StepScalarsState]:
    del params
    values = [None if x is None else jnp.asarray(x, jnp.float32) for x in step_scalars(state.count)]
    count = jnp.asarray(optax.safe_increment(state.count))
    return updates, StepScalarsState(count, *values)  # pyright: ignore[reportArgumentType]

  return optax.GradientTransformation(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
