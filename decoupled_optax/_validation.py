"""Construction-time checks of hyperparameters that stay silent on traced values.

``optax.inject_hyperparams`` rebuilds the optimizer inside every update with
the hyperparameters as traced arrays, so a check may only look at values that
are concrete. Schedules (callables) are checked where they are evaluated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it is traced or a schedule."""
  if value is None or callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None
  if array.ndim != 0 or array.dtype == object:
    return None
  return float(array)


def check_range(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_inclusive: bool = True,
  high_inclusive: bool = False,
) -> None:
  """Raises ValueError naming ``name`` and its allowed range if ``value`` is outside.

  NaN is always rejected. Traced values and schedules are accepted unchecked.
  """
  number = concrete_float(value)
  if number is None:
    return
  too_low = low is not None and (number < low or (number == low and not low_inclusive))
  too_high = high is not None and (number > high or (number == high and not high_inclusive))
  if math.isnan(number) or too_low or too_high:
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    interval = (
      ("[" if low_inclusive and low is not None else "(")
      + f"{left}, {right}"
      + ("]" if high_inclusive and high is not None else ")")
    )
    raise ValueError(f"{name} must be in {interval}, got {value!r}.")


def check_non_negative(name: str, value: Any) -> None:
  check_range(name, value, low=0.0)


def check_unit_interval(name: str, value: Any) -> None:
  """Decay rates such as b1, b2 and momentum: [0, 1)."""
  check_range(name, value, low=0.0, high=1.0)
