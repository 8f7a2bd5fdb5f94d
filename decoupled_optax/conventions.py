r"""Warnings for values that look written for the other convention.

With alpha the base learning rate, eta_t the schedule multiplier and lambda
the decay, the paper's convention updates
``theta -= eta_t * (alpha * d + lambda * theta)`` and PyTorch's
``theta -= alpha * eta_t * (d + lambda * theta)``. Two mix-ups are common and
silent:

* a PyTorch decay used as the paper's lambda, ``1 / alpha`` times too strong
  (:class:`WeightDecayConventionWarning`);
* a learning-rate schedule (peaking at alpha) passed as ``schedule``, the
  multiplier eta_t that peaks at 1, so the rate becomes alpha^2
  (:class:`ScheduleConventionWarning`).

Both are judged once, when the optimizer is built, and Python's warning
filters decide how often they are shown. Under
:func:`decoupled_optax.inject_hyperparams` they are judged on the values the
user passed, before optax turns schedules into their values at one step. A
decay schedule that states its convention (:class:`PaperConventionSchedule`)
is never judged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from decoupled_optax._validation import concrete_float

# Paper-mode values at or above this many times the base learning rate would
# be a PyTorch-convention decay of >= 1, which no common recipe uses.
_SUSPICIOUS_DECAY_TO_LR_RATIO = 1.0
# A multiplier whose peak stays below this looks like a learning rate.
_SUSPICIOUS_MULTIPLIER_PEAK = 0.1
# The steps at which a multiplier's peak is looked for: every step of the first
# 1024, then 64 up to 2^20, so a linear warmup of up to 10M steps reaches 0.1.
_PROBE_STEPS = np.unique(
  np.concatenate([np.arange(1024), np.geomspace(1024, 2**20, 64).astype(np.int64)])
).astype(np.int32)
# Frames of these packages are skipped, so a warning points at the user's line
# even when optax.inject_hyperparams, jax or flax called the constructor.
_LIBRARY_PACKAGES = ("decoupled_optax", "optax", "jax", "jaxlib", "flax", "contextlib")


class WeightDecayConventionWarning(UserWarning):
  """A weight decay value looks like it was written for the other convention.

  Example:
    >>> import warnings
    >>> import decoupled_optax as dopt
    >>> with warnings.catch_warnings(record=True) as caught:
    ...   warnings.simplefilter("always")
    ...   tx = dopt.adamw(1e-3, 1e-2, weight_decay_convention="paper")  # a PyTorch value
    >>> caught[0].category is dopt.WeightDecayConventionWarning
    True
  """


class ScheduleConventionWarning(UserWarning):
  """A ``schedule`` (the multiplier eta_t, peaking at 1) looks like a learning rate.

  Example:
    >>> import warnings
    >>> import decoupled_optax as dopt
    >>> lr_schedule = dopt.cosine_warm_restart_schedule(3e-4, first_period=10)  # peaks at lr
    >>> with warnings.catch_warnings(record=True) as caught:
    ...   warnings.simplefilter("always")
    ...   tx = dopt.adamw(3e-4, 1e-6, schedule=lr_schedule, weight_decay_convention="paper")
    >>> caught[0].category is dopt.ScheduleConventionWarning
    True
  """


def user_stacklevel() -> int:
  """The ``stacklevel`` that points a warning at the first caller outside the library.

  For the function that calls ``warnings.warn``.
  """
  frame, level = sys._getframe(2), 2
  while (
    frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARY_PACKAGES
  ):
    frame, level = frame.f_back, level + 1
  return level


@dataclasses.dataclass(frozen=True)
class PaperConventionSchedule:
  """A weight-decay schedule whose values are the paper's lambda_t, stated as such.

  The :class:`WeightDecayConventionWarning` guesses from magnitudes: a decay of
  at least the learning rate looks like a PyTorch value used unconverted. A
  schedule derived in the paper's convention (short SGDR periods make
  :func:`normalized_weight_decay_schedule` large) states it by this type, is
  never judged, and raises with ``weight_decay_convention="torch"``, where its
  values would be read as PyTorch's.

  Attributes:
    schedule: the step count -> lambda_t (the paper's convention).

  Example:
    >>> import optax
    >>> import decoupled_optax as dopt
    >>> decay = dopt.PaperConventionSchedule(optax.cosine_decay_schedule(2e-3, 1000))
    >>> tx = dopt.adamw(1e-3, decay, weight_decay_convention="paper")  # no warning
    >>> round(float(decay(0)), 6)
    0.002
  """

  schedule: Callable[[Any], Any]

  def __post_init__(self) -> None:
    if not callable(self.schedule):
      raise TypeError(
        "PaperConventionSchedule: schedule must be a callable of the step count, "
        f"got {type(self.schedule).__name__}."
      )

  def __call__(self, count: Any) -> Any:
    return self.schedule(count)


def _evaluate(schedule: Any, steps: np.ndarray) -> np.ndarray | None:
  """``schedule`` at ``steps``, vectorized if it can be; None if it cannot be evaluated here."""
  try:
    with jax.ensure_compile_time_eval():
      try:
        values = np.asarray(schedule(jnp.asarray(steps)), np.float64)
        if values.shape == steps.shape:
          return values
      except Exception:  # noqa: BLE001 - e.g. Python control flow on the count
        pass
      return np.array([float(schedule(jnp.int32(s))) for s in steps[:: max(1, len(steps) // 128)]])
  except Exception:  # noqa: BLE001 - a schedule we cannot evaluate is not judged
    return None


def _value_at_step_zero(value: Any) -> float | None:
  if callable(value):
    values = _evaluate(value, np.zeros(1, np.int32))
    return None if values is None else float(values[0])
  return concrete_float(value)


def _is_injected_value(value: Any) -> bool:
  """A jax.Array hyperparameter: optax.inject_hyperparams's value of a schedule at one step."""
  return isinstance(value, jax.Array)


def warn_if_torch_convention(weight_decay: Any, learning_rate: Any) -> None:
  """Warns if a paper-convention lambda looks like a PyTorch-convention value.

  The paper's lambda is the PyTorch one times the base learning rate alpha:
  ``lambda_paper = alpha * lambda_torch``. A paper lambda at least alpha
  therefore means a PyTorch decay of at least 1, which is almost surely a
  PyTorch value used unconverted, decaying ``1 / alpha`` times too hard. A
  decay schedule is judged by its value at step 0, except a
  :class:`PaperConventionSchedule`.
  """
  if isinstance(weight_decay, PaperConventionSchedule):
    return
  decay, rate = _value_at_step_zero(weight_decay), concrete_float(learning_rate)
  if decay is None or rate is None or decay == 0 or rate <= 0:
    return
  if decay < _SUSPICIOUS_DECAY_TO_LR_RATIO * rate:
    return
  what = "weight_decay(0)" if callable(weight_decay) else "weight_decay"
  warnings.warn(
    f"{what}={decay:g} is used in the paper's convention, where it is NOT "
    f"multiplied by learning_rate={rate:g}: every step shrinks the weights by "
    f"{decay:g} * schedule(t). If this value comes from PyTorch, optax or timm, "
    f"either pass weight_decay_convention='torch', or convert it: "
    f"weight_decay={decay * rate:g} (= {decay:g} * {rate:g}) gives the same "
    f"trajectory in the paper's convention.",
    WeightDecayConventionWarning,
    stacklevel=user_stacklevel(),
  )


def warn_if_schedule_looks_like_learning_rate(schedule: Any, learning_rate: Any) -> None:
  """Warns if the multiplier ``schedule`` looks like a learning rate.

  ``schedule`` is eta_t, which multiplies ``learning_rate``: it should peak at
  1. It looks like a learning rate when its peak over the first steps (up to
  2^20, enough to cover a warmup) is below 0.1, or equals ``learning_rate``
  (for a rate other than 1). A multiplier that warms up from 0 to 1 does not
  warn.
  """
  if schedule is None or _is_injected_value(schedule):
    return
  if callable(schedule):
    values = _evaluate(schedule, _PROBE_STEPS)
    if values is None or not np.all(np.isfinite(values)):
      return
    peak = float(np.max(values))
  else:
    peak = concrete_float(schedule)
    if peak is None:
      return
  rate = concrete_float(learning_rate)
  equals_rate = rate is not None and rate != 1 and math.isclose(peak, rate, rel_tol=1e-6)
  if peak >= _SUSPICIOUS_MULTIPLIER_PEAK and not equals_rate:
    return
  reason = f"equals learning_rate={rate:g}" if equals_rate else "is below 0.1"
  warnings.warn(
    f"schedule peaks at {peak:g}, which {reason}: it looks like a learning rate. schedule "
    "is the multiplier eta_t of learning_rate and should peak at 1; the applied rate is "
    f"learning_rate * schedule(t), here at most {(rate or 1) * peak:g}. Build the "
    "schedule with a peak of 1, e.g. cosine_warm_restart_schedule(1.0, ...) instead of "
    "cosine_warm_restart_schedule(learning_rate, ...).",
    ScheduleConventionWarning,
    stacklevel=user_stacklevel(),
  )
