"""Construction-time checks of arguments that stay silent on traced values.

Every public constructor checks the type and the range of every argument, and
a bad one raises a ``TypeError`` or ``ValueError`` that names the argument,
what it must be and what was given.

``optax.inject_hyperparams`` rebuilds the optimizer inside every update with
the hyperparameters as traced arrays, so a check may only look at values that
are concrete: tracers pass unchecked. Schedules (callables), where an argument
accepts them, are checked where they are evaluated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

_NUMBER = "a real number (a Python or NumPy scalar or a 0-d array)"


def describe(value: Any) -> str:
  text = repr(value)
  if len(text) > 80:
    text = text[:77] + "..."
  return f"{type(value).__name__} {text}"


def _is_tracer(value: Any) -> bool:
  return isinstance(value, Tracer)


def _real_dtype(dtype: Any) -> bool:
  return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it is traced, a schedule or not a number."""
  if value is None or callable(value) or _is_tracer(value) or isinstance(value, (str, bytes)):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return None
  if array.ndim != 0 or not _real_dtype(array.dtype):
    return None
  return float(array)


def _interval(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool):
  left = "-inf" if low is None else f"{low:g}"
  right = "inf" if high is None else f"{high:g}"
  return (
    ("[" if low_inclusive and low is not None else "(")
    + f"{left}, {right}"
    + ("]" if high_inclusive and high is not None else ")")
  )


def check_number(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_inclusive: bool = True,
  high_inclusive: bool = False,
  integer: bool = False,
  schedule: bool = False,
  optional: bool = False,
) -> None:
  """Raises if ``value`` is not a finite real number in the given interval.

  Args:
    name: the argument's name, for the message.
    value: what was given.
    low, high, low_inclusive, high_inclusive: the allowed interval; NaN and
      infinities are always rejected.
    integer: the value must be integral (an int, or a float such as ``10.0``).
    schedule: a callable (an optax schedule) is accepted unchecked.
    optional: None is accepted.

  Raises:
    TypeError: for a value that is not a real number (a string, None, a
      list, a complex or boolean value, a non-scalar array, a callable where
      no schedule is accepted).
    ValueError: for a number outside the interval, or not integral.
  """
  if value is None and optional:
    return
  if callable(value) and schedule:
    return
  if isinstance(value, Tracer):
    if value.ndim != 0:
      raise TypeError(f"{name} must be a scalar, got a traced array of shape {value.shape}.")
    return
  kind = ("an integer" if integer else _NUMBER) + (" or a schedule" if schedule else "")
  array = None
  if not isinstance(value, (bool, np.bool_, str, bytes, complex)) and not callable(value):
    try:
      array = np.asarray(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
      array = None
  if array is None or array.ndim != 0 or not _real_dtype(array.dtype):
    raise TypeError(f"{name} must be {kind}, got {describe(value)}.")
  number = float(array)
  interval = _interval(low, high, low_inclusive, high_inclusive)
  if integer and math.isfinite(number) and not number.is_integer():
    raise ValueError(f"{name} must be an integer in {interval}, got {value!r}.")
  too_low = low is not None and (number < low or (number == low and not low_inclusive))
  too_high = high is not None and (number > high or (number == high and not high_inclusive))
  if not math.isfinite(number) or too_low or too_high:
    what = "an integer" if integer else "a finite number"
    raise ValueError(f"{name} must be {what} in {interval}, got {value!r}.")


def check_non_negative(name: str, value: Any, *, schedule: bool = False) -> None:
  """A finite number >= 0 (learning rates, decays, eps)."""
  check_number(name, value, low=0.0, schedule=schedule)


def check_positive(name: str, value: Any) -> None:
  check_number(name, value, low=0.0, low_inclusive=False)


def check_unit_interval(name: str, value: Any) -> None:
  """Decay rates such as b1, b2 and momentum: [0, 1)."""
  check_number(name, value, low=0.0, high=1.0)


def check_bool(name: str, value: Any, *, optional: bool = False) -> None:
  if value is None and optional:
    return
  if not isinstance(value, (bool, np.bool_)):
    allowed = "True, False or None" if optional else "True or False"
    raise TypeError(f"{name} must be {allowed}, got {describe(value)}.")


def check_transform(name: str, value: Any) -> None:
  """An optax ``GradientTransformation`` (anything with callable ``init`` and ``update``)."""
  if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
    raise TypeError(
      f"{name} must be an optax GradientTransformation (with init and update), "
      f"got {describe(value)}."
    )


def check_dtype(name: str, value: Any) -> None:
  """None or something ``jnp.dtype`` understands."""
  if value is None:
    return
  try:
    jnp.dtype(value)
  except TypeError:
    raise TypeError(f"{name} must be a dtype or None, got {describe(value)}.") from None
