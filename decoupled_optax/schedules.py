"""SGDR: cosine annealing with warm restarts, exact at every restart.

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
ICLR 2017, https://arxiv.org/abs/1608.03983.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from decoupled_optax._validation import check_non_negative, check_range

_INT32_MAX = 2**31 - 1
# Float period multipliers close to 1 need one table entry per restart.
_MAX_TABLE_ENTRIES = 1_000_000


class RestartPosition(NamedTuple):
  """Where a step falls in the restart cycle.

  Attributes:
    cycle: index i of the current period, 0 for the first.
    t_cur: steps since the last restart (int32), T_cur in the paper.
    period: length T_i of the current period in steps (float32, since the
      last period that starts below 2^31 may be longer than int32 allows).
  """

  cycle: jnp.ndarray
  t_cur: jnp.ndarray
  period: jnp.ndarray


def _period_starts(first_period: int, period_mult: float) -> tuple[np.ndarray, np.ndarray]:
  """Start step and length of every period that starts at or below int32 max.

  Lengths are T_i = round(first_period * period_mult**i), computed with Python
  integers when ``period_mult`` is an integer, so they are exact.
  """
  exact = float(period_mult).is_integer()
  starts, lengths = [0], []
  start, i = 0, 0
  while True:
    if exact:
      length = first_period * int(period_mult) ** i
    else:
      length = max(1, round(first_period * period_mult**i))
    lengths.append(length)
    start += length
    if start > _INT32_MAX:
      break
    starts.append(start)
    i += 1
    if len(starts) > _MAX_TABLE_ENTRIES:
      raise ValueError(
        f"period_mult={period_mult!r} is so close to 1 that more than "
        f"{_MAX_TABLE_ENTRIES} restarts fit below 2^31 steps; use period_mult=1 "
        "or a larger value."
      )
  return np.asarray(starts, np.int32), np.asarray(lengths, np.float64)


def restart_position(
  count: jnp.ndarray | int,
  first_period: int,
  period_mult: float = 1,
) -> RestartPosition:
  """Cycle index, steps into the cycle, and cycle length, in integer arithmetic.

  For ``period_mult == 1`` this is ``divmod(count, first_period)``. Otherwise
  the period start steps are tabulated once at trace time and looked up with
  a binary search, so no floating-point logarithm can misplace a restart.

  Args:
    count: the step (int32, may be traced). Negative counts are clipped to 0.
    first_period: T_0, the length of the first period in steps (>= 1).
    period_mult: T_mult, the factor by which each period is longer (>= 1).

  Returns:
    A :class:`RestartPosition`.
  """
  count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)
  if period_mult == 1:
    cycle, t_cur = jnp.divmod(count, jnp.int32(first_period))
    return RestartPosition(cycle, t_cur, jnp.full((), first_period, jnp.float32))
  starts, lengths = _period_starts(first_period, period_mult)
  cycle = jnp.searchsorted(jnp.asarray(starts), count, side="right").astype(jnp.int32) - 1
  t_cur = count - jnp.asarray(starts)[cycle]
  period = jnp.asarray(lengths, jnp.float32)[cycle]
  return RestartPosition(cycle, t_cur, period)


def _check_restart_args(first_period: int, period_mult: float, warmup_steps: int) -> None:
  if not float(first_period).is_integer():
    raise ValueError(f"first_period must be an integer >= 1, got {first_period!r}.")
  check_range("first_period", first_period, low=1)
  check_range("period_mult", period_mult, low=1)
  if math.isinf(period_mult):
    raise ValueError(f"period_mult must be finite, got {period_mult!r}.")
  if not float(warmup_steps).is_integer():
    raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
  check_non_negative("warmup_steps", warmup_steps)


def cosine_warm_restart_schedule(
  init_value: float,
  first_period: int,
  period_mult: float = 1,
  min_value: float = 0.0,
  restart_decay: float = 1.0,
  warmup_steps: int = 0,
  warmup_init_value: float = 0.0,
) -> optax.Schedule:
  r"""SGDR: cosine annealing with warm restarts (Loshchilov & Hutter, 2017).

  .. math::

    \eta = \eta_{min} + \tfrac12 (\eta^{(i)}_{max} - \eta_{min})
           (1 + \cos(\pi T_{cur} / T_i)),
    \quad T_i = T_0 \cdot T_{mult}^i,
    \quad \eta^{(i)}_{max} = \eta_{init} \cdot d^i

  where ``i`` is the index of the current period and ``T_cur`` the steps
  since its start. The cycle index is found with integer arithmetic (see
  :func:`restart_position`), so every restart lands on its exact step, for
  any number of restarts and any count up to 2^31 - 1. timm, Keras and
  torch's ``step(epoch)`` use a floating-point log and misplace some.

  With an integer ``period_mult`` and no warmup this equals
  ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=first_period,
  T_mult=period_mult, eta_min=min_value)`` stepped once per update. A float
  ``period_mult`` is accepted too; period lengths are then rounded to the
  nearest integer, ``T_i = max(1, round(first_period * period_mult**i))``.

  Warmup happens once, as in timm: the value ramps linearly from
  ``warmup_init_value`` to ``init_value`` over ``warmup_steps`` steps and the
  restart cycles start after it. (optax's ``sgdr_schedule`` warms up in
  every cycle instead.)

  Args:
    init_value: peak value of the first period, eta_max.
    first_period: T_0, length of the first period in steps, an integer >= 1.
    period_mult: T_mult >= 1, growth factor of the period length.
    min_value: eta_min, the value the cosine anneals towards.
    restart_decay: d in (0, 1], multiplies the peak at every restart (Keras's
      ``m_mul``, timm's ``cycle_decay``). The paper keeps 1.
    warmup_steps: number of linear warmup steps before the first period.
    warmup_init_value: value at step 0 when ``warmup_steps > 0``.

  Returns:
    An optax schedule, ``count -> value``, jittable on an int32 count.

  Example:
    >>> import decoupled_optax as dopt
    >>> sched = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2, min_value=0.1)
    >>> [round(float(sched(t)), 6) for t in range(4)]
    [1.0, 0.775, 0.325, 1.0]
  """
  _check_restart_args(first_period, period_mult, warmup_steps)
  check_range(
    "restart_decay", restart_decay, low=0.0, high=1.0, low_inclusive=False, high_inclusive=True
  )
  first_period = int(first_period)
  warmup_steps = int(warmup_steps)

  def schedule(count: jnp.ndarray | int) -> jnp.ndarray:
    count = jnp.asarray(count, jnp.int32)
    position = restart_position(count - warmup_steps, first_period, period_mult)
    peak = init_value * jnp.power(jnp.float32(restart_decay), position.cycle)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * position.t_cur.astype(jnp.float32) / position.period))
    value = min_value + (peak - min_value) * cosine
    if warmup_steps == 0:
      return value
    fraction = count.astype(jnp.float32) / warmup_steps
    warmup = warmup_init_value + (init_value - warmup_init_value) * fraction
    return jnp.where(count < warmup_steps, warmup, value)

  return schedule
