"""SGDR: cosine annealing with warm restarts, exact at every restart.

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
ICLR 2017, https://arxiv.org/abs/1608.03983.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.core import Tracer

from decoupled_optax._validation import check_non_negative, check_number, concrete_float
from decoupled_optax.conventions import PaperConventionSchedule

_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
# Float period multipliers close to 1 need one table entry per restart.
_MAX_TABLE_ENTRIES = 1_000_000
# Period lengths beyond this are stored as it; float32 makes them inf anyway.
_FLOAT_BIG = 1e308


class RestartPosition(NamedTuple):
  """Where a step falls in the restart cycle.

  Attributes:
    cycle: index i of the current period, 0 for the first: int32 when
      ``period_mult != 1``; with ``period_mult == 1`` it is ``count //
      first_period`` and has the integer dtype of ``t_cur``.
    t_cur: steps since the last restart, T_cur in the paper. For an integer
      count it has the count's dtype, widened to int32 for 8- and 16-bit
      types (so int32, uint32, or int64/uint64 with ``jax_enable_x64``); for
      a float count it is fractional, float32 (float64 for a float64 count).
    period: length T_i of the current period in steps (float32, since the
      last period that starts below the count dtype's maximum may be longer
      than that dtype allows; a scalar when ``period_mult == 1``).

  Example:
    >>> import decoupled_optax as dopt
    >>> position = dopt.restart_position(5, first_period=4, period_mult=2)  # periods 4, 8, ...
    >>> int(position.cycle), int(position.t_cur), float(position.period)
    (1, 1, 8.0)
  """

  cycle: jnp.ndarray
  t_cur: jnp.ndarray
  period: jnp.ndarray


def _exact_mult(period_mult: float) -> int | float:
  """An integral ``period_mult`` as a Python int, so period lengths are exact; else a float64."""
  return int(period_mult) if float(period_mult).is_integer() else float(period_mult)


@functools.lru_cache(maxsize=64)
def _period_starts(
  first_period: int, period_mult: int | float, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
  """Start step and length of every period that starts at or below ``dtype``'s max.

  Lengths are T_i = round(first_period * period_mult**i), computed with Python
  integers when ``period_mult`` is an int, so they are exact. Cached per
  (first_period, period_mult, dtype): a schedule traced for many counts, or
  rebuilt inside every update by ``optax.inject_hyperparams``, builds its
  table once.
  """
  limit = int(np.iinfo(dtype).max)
  starts: list[Any] = [0]
  lengths: list[float] = []
  start: Any = 0
  i = 0
  while True:
    if isinstance(period_mult, int):
      length = first_period * period_mult**i
    else:
      try:
        length = max(1, round(first_period * period_mult**i))
      except OverflowError:
        # Longer than float64 holds: no count gets past its start, T_cur / T_i = 0.
        length = math.inf
    lengths.append(float(min(length, _FLOAT_BIG)))
    start += length
    if start > limit:
      break
    starts.append(start)
    i += 1
    if len(starts) > _MAX_TABLE_ENTRIES:
      raise ValueError(
        f"period_mult={period_mult!r} is so close to 1 that more than "
        f"{_MAX_TABLE_ENTRIES} restarts fit below {limit + 1} steps (the largest "
        f"{np.dtype(dtype).name} count); use period_mult=1 or a larger value."
      )
  starts_array = np.asarray(starts, dtype)
  lengths_array = np.asarray(lengths, np.float64)
  # Shared by every caller through the cache.
  starts_array.flags.writeable = False
  lengths_array.flags.writeable = False
  return starts_array, lengths_array


def _x64_enabled() -> bool:
  # canonicalize_dtype follows jax.enable_x64 contexts as well as the global flag.
  return jax.dtypes.canonicalize_dtype(np.int64) == np.int64


def _host_integer_count(values: np.ndarray | int, count: Any) -> jnp.ndarray:
  """Host integers (Python ints, 64-bit NumPy ints without x64) in the narrowest exact dtype.

  Negative values are clipped to 0 first, so only the largest value decides
  between int32 (the dtype used before), uint32 and, with x64, int64 and uint64.
  """
  if isinstance(values, int):
    largest = values = max(values, 0)
  else:
    values = np.maximum(values, 0)
    largest = int(values.max()) if values.size else 0
  x64 = _x64_enabled()
  for dtype, top, enabled in [
    (np.int32, _INT32_MAX, True),
    (np.uint32, _UINT32_MAX, True),
    (np.int64, 2**63 - 1, x64),
    (np.uint64, _UINT64_MAX, x64),
  ]:
    if enabled and largest <= top:
      return jnp.asarray(np.asarray(values).astype(dtype))
  if x64:
    reason = f"larger than 2**64 - 1 = {_UINT64_MAX}, the largest count JAX can hold"
  else:
    reason = (
      f"larger than 2**32 - 1 = {_UINT32_MAX}, the largest count JAX holds without 64-bit "
      "types; enable them with jax.config.update('jax_enable_x64', True)"
    )
  raise OverflowError(f"count={count!r} is {reason}.")


def _integer_count(count: Any) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """``floor(max(count, 0))`` in an integer dtype that holds it, and the fraction of a float count.

  Returns ``(n, fraction)`` with ``fraction`` None for an integer count.
  """
  if isinstance(count, (bool, np.bool_)):
    raise TypeError(f"count must be an integer or a float step, got bool {count!r}.")
  if isinstance(count, int):
    return _host_integer_count(count, count), None
  if not isinstance(count, (jax.Array, Tracer)):
    try:
      host = np.asarray(count)
    except (TypeError, ValueError):
      raise TypeError(f"count must be an integer or a float step, got {count!r}.") from None
    if host.dtype == object:
      # A list may hold Python ints too large for int64; anything else here is not a count.
      if not all(isinstance(v, int) and not isinstance(v, bool) for v in host.flat):
        raise TypeError(f"count must be an integer or a float step, got {count!r}.")
      return _host_integer_count(host, count), None
    if jnp.issubdtype(host.dtype, jnp.integer) and host.dtype.itemsize == 8 and not _x64_enabled():
      # jnp.asarray would wrap these to int32 silently.
      return _host_integer_count(host, count), None
    count = host
  dtype = np.dtype(count.dtype)
  if dtype == np.bool_:
    raise TypeError(f"count must be an integer or a float step, got a bool array {count!r}.")
  if jnp.issubdtype(dtype, jnp.integer):
    # Narrow types widen so that subtracting a period start cannot wrap.
    n = jnp.asarray(count, jnp.int32 if dtype.itemsize < 4 else dtype)
    if jnp.issubdtype(n.dtype, jnp.signedinteger):
      n = jnp.maximum(n, 0)
    return n, None
  if jnp.issubdtype(dtype, jnp.floating):
    # float64 only where JAX has it; bfloat16 and float16 widen to keep the fraction.
    wide = dtype.itemsize == 8 and _x64_enabled()
    x = jnp.asarray(count, jnp.float64 if wide else jnp.float32)
    int_dtype = jnp.uint64 if x.dtype == jnp.float64 else jnp.uint32
    # The largest float below 2**32 (or 2**64): bigger floats saturate rather than wrap.
    top = np.nextafter(np.asarray(float(np.iinfo(int_dtype).max) + 1, x.dtype), 0)
    x = jnp.clip(x, 0, top)
    whole = jnp.floor(x)
    # A NaN count stays NaN through the fraction.
    return whole.astype(int_dtype), x - whole
  raise TypeError(f"count must be an integer or a float step, got {dtype.name} {count!r}.")


def _position(
  n: jnp.ndarray, fraction: jnp.ndarray | None, first_period: int, period_mult: int | float
) -> RestartPosition:
  """The restart position of a non-negative integer step ``n`` (plus a fraction)."""
  dtype = np.dtype(n.dtype)
  if period_mult == 1:
    # A scalar, as before: XLA divides by a broadcast scalar differently (by one ulp).
    period = jnp.full((), first_period, jnp.float32)
    if first_period > np.iinfo(dtype).max:
      cycle, t_cur = jnp.zeros_like(n), n
    else:
      cycle, t_cur = jnp.divmod(n, jnp.asarray(first_period, dtype))
  else:
    starts, lengths = _period_starts(first_period, period_mult, dtype)
    starts = jnp.asarray(starts)
    cycle = jnp.searchsorted(starts, n, side="right").astype(jnp.int32) - 1
    t_cur = n - starts[cycle]
    period = jnp.asarray(lengths, jnp.float32)[cycle]
  if fraction is not None:
    t_cur = t_cur.astype(fraction.dtype) + fraction
  return RestartPosition(cycle, t_cur, period)


def _restart_position_after_warmup(
  count: Any, warmup_steps: int, first_period: int, period_mult: float
) -> tuple[RestartPosition, jnp.ndarray, jnp.ndarray]:
  """The count handling shared by every SGDR schedule.

  Returns ``(position, in_warmup, warmup_fraction)``: the restart position of
  ``max(count, 0) - warmup_steps`` (of step 0 during warmup), whether the
  count is in warmup, and ``max(count, 0) / warmup_steps`` in float32 (1
  without warmup), the warmup ramp's position where ``in_warmup``. See
  :func:`restart_position` for the count types.
  """
  warmup_steps, first_period = int(warmup_steps), int(first_period)
  n, fraction = _integer_count(count)
  shape = jnp.shape(n)
  if warmup_steps == 0:
    in_warmup, done, after = jnp.zeros(shape, bool), jnp.ones(shape, jnp.float32), n
  else:
    steps = n.astype(jnp.float32) if fraction is None else (n.astype(fraction.dtype) + fraction)
    # A float divisor: warmup_steps may be too large for the count's integer dtype.
    done = (steps / float(warmup_steps)).astype(jnp.float32)
    if warmup_steps > np.iinfo(np.dtype(n.dtype)).max:
      # No count of this dtype gets past the warmup (nor can it hold warmup_steps).
      in_warmup, after = jnp.ones(shape, bool), jnp.zeros_like(n)
    else:
      in_warmup = n < warmup_steps
      # where, not max(n - warmup_steps, 0): an unsigned count would wrap.
      after = jnp.where(in_warmup, jnp.zeros_like(n), n - jnp.asarray(warmup_steps, n.dtype))
  position = _position(after, fraction, first_period, _exact_mult(period_mult))
  return position, in_warmup, done


def restart_position(
  count: jnp.ndarray | int | float,
  first_period: int,
  period_mult: float = 1,
) -> RestartPosition:
  r"""Cycle index, steps into the cycle, and cycle length, in integer arithmetic.

  The periods have lengths :math:`T_i = T_0 \cdot T_{mult}^i` and start at
  :math:`S_i = \sum_{j<i} T_j`; step ``t`` lies in the period ``i`` with
  :math:`S_i \le t < S_{i+1}`, and :math:`T_{cur} = t - S_i`. For
  ``period_mult == 1`` this is ``divmod(count, first_period)``. Otherwise the
  period starts up to the count dtype's maximum are tabulated once (cached
  per dtype) and looked up with a binary search, so no floating-point
  logarithm can misplace a restart.

  Counts are exact integers in their own dtype's range:

  * int32 (what optax's ``safe_increment`` produces), uint32, and, with
    ``jax_enable_x64``, int64 and uint64 are used as they are; int8, int16,
    uint8 and uint16 are widened to int32. Traced counts (under ``jit`` and
    ``vmap``) follow their dtype.
  * A Python int takes the narrowest of int32, uint32, int64 and uint64 that
    holds it (the last two only with ``jax_enable_x64``); one too large for
    all of them raises ``OverflowError`` rather than wrapping. A 64-bit NumPy
    integer without ``jax_enable_x64`` is treated the same way.
  * A float count is a fractional step: the cycle is that of
    ``floor(count)`` and ``t_cur`` keeps the fraction, as the paper's
    fractional :math:`T_{cur}`. Floats are clipped to ``[0, 2**32 - 256]``
    (float32 and narrower) or ``[0, 2**64 - 2048]`` (float64), the largest
    floats below 2^32 and 2^64; a NaN count gives a NaN ``t_cur``.
  * Negative counts are clipped to 0. Bools and complex numbers raise
    ``TypeError``.

  Args:
    count: the step: a Python or NumPy int or float, or an integer or float
      array of any shape (may be traced).
    first_period: T_0, the length of the first period in steps, an integer >= 1.
    period_mult: T_mult, the factor by which each period is longer, finite and >= 1.

  Returns:
    A :class:`RestartPosition`.

  Example:
    >>> import decoupled_optax as dopt
    >>> position = dopt.restart_position(121, first_period=1, period_mult=3)
    >>> int(position.cycle), int(position.t_cur), float(position.period)
    (5, 0, 243.0)
    >>> float(dopt.restart_position(2.5, first_period=3, period_mult=2).t_cur)
    2.5
  """
  _check_restart_args(first_period, period_mult, 0)
  return _restart_position_after_warmup(count, 0, first_period, period_mult)[0]


def _check_restart_args(first_period: int, period_mult: float, warmup_steps: int) -> None:
  check_number("first_period", first_period, low=1, integer=True)
  check_number("period_mult", period_mult, low=1)
  check_number("warmup_steps", warmup_steps, low=0, integer=True)
  if period_mult != 1:
    # Builds (and caches) the table for int32 counts now, so a period_mult too
    # close to 1 raises here rather than at the first step.
    _period_starts(int(first_period), _exact_mult(period_mult), np.dtype(np.int32))


def cosine_warm_restart_schedule(
  init_value: float,
  first_period: int,
  period_mult: float = 1,
  min_value: float = 0.0,
  restart_decay: float = 1.0,
  warmup_steps: int = 0,
  warmup_init_value: float = 0.0,
  cycle_limit: int | None = None,
) -> optax.Schedule:
  r"""SGDR: cosine annealing with warm restarts (Loshchilov & Hutter, 2017).

  .. math::

    \eta = \eta_{min} + \tfrac12 (\eta^{(i)}_{max} - \eta_{min})
           (1 + \cos(\pi T_{cur} / T_i)),
    \quad T_i = T_0 \cdot T_{mult}^i,
    \quad \eta^{(i)}_{max} = \eta_{init} \cdot d^i

  where ``i`` is the index of the current period and ``T_cur`` the steps
  since its start. The cycle index is found with integer arithmetic in the
  count's own integer dtype (see :func:`restart_position`), so every restart
  lands on its exact step, for any number of restarts and any count the
  dtype holds: up to 2^31 - 1 for int32, 2^32 - 1 for uint32, 2^64 - 1 for
  uint64 with ``jax_enable_x64``. timm, Keras and torch's ``step(epoch)`` use
  a floating-point log and misplace some.

  With an integer ``period_mult`` and no warmup this equals
  ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=first_period,
  T_mult=period_mult, eta_min=min_value)`` stepped once per update. A float
  ``period_mult`` is accepted too; period lengths are then rounded to the
  nearest integer, ``T_i = max(1, round(first_period * period_mult**i))``.

  Warmup happens once, as in timm: for :math:`t < W` (``W = warmup_steps``)

  .. math:: \eta = \eta_{warmup} + (\eta_{init} - \eta_{warmup}) \, t / W

  and the restart cycles start at step ``W``, with :math:`T_{cur}` counted
  from there. (optax's ``sgdr_schedule`` warms up in every cycle instead.)

  With ``cycle_limit = k`` the schedule stops restarting: from the end of
  the k-th period on it stays at ``min_value`` (timm's ``cycle_limit``). The
  period index is the same exact integer as the restarts'.

  Counts follow :func:`restart_position`: negative counts are clipped to 0,
  so they give ``warmup_init_value`` with warmup and ``init_value``
  without; a float count is a fractional step (a fractional :math:`T_{cur}`
  and ``t`` in the warmup ramp); bools raise ``TypeError``.

  Args:
    init_value: peak value of the first period, eta_max, finite and >= 0.
    first_period: T_0, length of the first period in steps, an integer >= 1.
    period_mult: T_mult, growth factor of the period length, finite and >= 1.
    min_value: eta_min, the value the cosine anneals towards, in [0, init_value].
    restart_decay: d in (0, 1], multiplies the peak at every restart (Keras's
      ``m_mul``, timm's ``cycle_decay``). The paper keeps 1.
    warmup_steps: number of linear warmup steps before the first period, an
      integer >= 0.
    warmup_init_value: value at step 0 when ``warmup_steps > 0``, finite and >= 0.
    cycle_limit: None (default, the paper's): restart forever. An integer >=
      1: the number of periods, after which the value stays at ``min_value``.

  Returns:
    An optax schedule, ``count -> value`` in float32, jittable and vmappable
    on any integer or float count.

  Raises:
    TypeError: an argument is not a real number (a string, None, a list, a
      complex or bool value).
    ValueError: an argument is out of its range, NaN, infinite, or not an
      integer where one is required.

  Example:
    >>> import decoupled_optax as dopt
    >>> sched = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2, min_value=0.1)
    >>> [round(float(sched(t)), 6) for t in range(4)]
    [1.0, 0.775, 0.325, 1.0]
    >>> round(float(sched(1.5)), 6)  # a fractional step: T_cur = 1.5 of T_0 = 3
    0.55
    >>> once = dopt.cosine_warm_restart_schedule(1.0, first_period=3, min_value=0.1, cycle_limit=1)
    >>> [round(float(once(t)), 6) for t in range(5)]  # one period, then the floor
    [1.0, 0.775, 0.325, 0.1, 0.1]
  """
  _check_restart_args(first_period, period_mult, warmup_steps)
  check_non_negative("init_value", init_value)
  check_non_negative("min_value", min_value)
  init, floor = concrete_float(init_value), concrete_float(min_value)
  if init is not None and floor is not None and floor > init:
    raise ValueError(
      f"min_value must be a finite number in [0, init_value] = [0, {init:g}], got {min_value!r}."
    )
  check_number(
    "restart_decay", restart_decay, low=0.0, high=1.0, low_inclusive=False, high_inclusive=True
  )
  check_non_negative("warmup_init_value", warmup_init_value)
  check_number("cycle_limit", cycle_limit, low=1, integer=True, optional=True)
  first_period = int(first_period)
  warmup_steps = int(warmup_steps)

  def schedule(count: Any) -> jax.Array:
    position, in_warmup, fraction = _restart_position_after_warmup(
      count, warmup_steps, first_period, period_mult
    )
    peak = init_value * jnp.power(jnp.float32(restart_decay), position.cycle)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * position.t_cur.astype(jnp.float32) / position.period))
    value = min_value + (peak - min_value) * cosine
    if cycle_limit is not None:
      value = jnp.where(position.cycle < cycle_limit, value, jnp.float32(min_value))
    if warmup_steps == 0:
      return value
    warmup = warmup_init_value + (init_value - warmup_init_value) * fraction
    return jnp.where(in_warmup, warmup, value)

  return schedule


def normalized_weight_decay_schedule(
  lambda_norm: float,
  batch_size: int,
  num_train_points: int,
  first_period: int,
  period_mult: float = 1,
  steps_per_epoch: float | None = None,
  warmup_steps: int = 0,
) -> optax.Schedule:
  r"""Normalized weight decay that follows warm restarts, as the authors' code does.

  .. math:: \lambda_t = \lambda_{norm} \sqrt{\frac{b}{B \, T_i}}

  where ``T_i`` is the length in epochs of the restart period that step ``t``
  falls in, so lambda shrinks by ``sqrt(period_mult)`` at every restart.
  Periods are counted in steps exactly as in
  :func:`decoupled_optax.cosine_warm_restart_schedule`; pass the same
  ``first_period``, ``period_mult`` and ``warmup_steps`` to both. During
  warmup the first period's value is used.

  Args:
    lambda_norm: the normalized decay (0.025 to 0.05 in the paper).
    batch_size: b.
    num_train_points: B.
    first_period: T_0 in steps.
    period_mult: T_mult.
    steps_per_epoch: steps in one epoch, used to convert T_i to epochs;
      defaults to ``num_train_points / batch_size``.
    warmup_steps: steps before the first period starts.

  Returns:
    The paper's lambda_t as a :class:`PaperConventionSchedule` (an optax schedule that states
    its convention: the convention warning never judges it, and ``"torch"`` rejects it).

  Example:
    >>> import decoupled_optax as dopt
    >>> wd = dopt.normalized_weight_decay_schedule(0.05, 100, 1000, first_period=10, period_mult=2)
    >>> round(float(wd(0)) / float(wd(10)), 4)  # sqrt(2) at the first restart
    1.4142

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, Appendix B.1.
  """
  check_non_negative("lambda_norm", lambda_norm)
  check_number("batch_size", batch_size, low=1, integer=True)
  check_number("num_train_points", num_train_points, low=1, integer=True)
  _check_restart_args(first_period, period_mult, warmup_steps)
  check_number("steps_per_epoch", steps_per_epoch, low=0, low_inclusive=False, optional=True)
  if steps_per_epoch is None:
    steps_per_epoch = num_train_points / batch_size
  first_period = int(first_period)
  scale = lambda_norm * math.sqrt(batch_size * steps_per_epoch / num_train_points)

  def schedule(count: Any) -> jax.Array:
    # The same count handling as cosine_warm_restart_schedule, so both restart on
    # the same step; during warmup the position is that of the first period.
    position, _, _ = _restart_position_after_warmup(count, warmup_steps, first_period, period_mult)
    return scale * jax.lax.rsqrt(position.period)

  return PaperConventionSchedule(schedule)
