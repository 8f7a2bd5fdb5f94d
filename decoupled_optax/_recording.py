"""The channel through which transforms report to :func:`decoupled_optax.with_diagnostics`.

The transforms that know something (the scale-invariance test, the aliases'
scalars) record it, at trace time, into the recording that the wrapper's
update opened. A recording accepts only values of the trace it was opened in:
a transform that runs in a nested trace (a ``lax.cond`` branch, a
``custom_jvp``, ``platform_dependent``) returns what it recorded to its
caller, which records it again (:func:`recorded_in_nested_trace`). Without the
wrapper nothing is open, and nothing is computed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend.core import get_opaque_trace_state

# AdamP's decision per leaf, as :func:`read_diagnostics` reports it.
NOT_PROJECTED, CHANNEL_VIEW, WHOLE_VIEW = 0, 1, 2

StepScalars = Callable[[jax.Array], dict[str, jax.Array]]


class Recording:
  """What the transforms inside one update of the wrapper reported."""

  def __init__(self) -> None:
    self.trace = get_opaque_trace_state(convention="decoupled_optax")
    self.views: list[Any] = []
    self.multipliers: list[Any] = []
    self.step_scalars: list[StepScalars] = []


_local = threading.local()


def _open_recordings() -> list[Recording]:
  if not hasattr(_local, "recordings"):
    _local.recordings = []
  return _local.recordings


@contextlib.contextmanager
def open_recording() -> Iterator[Recording]:
  recording = Recording()
  recordings = _open_recordings()
  recordings.append(recording)
  try:
    yield recording
  finally:
    recordings.remove(recording)


def _current_recording() -> Recording | None:
  recordings = _open_recordings()
  if not recordings:
    return None
  recording = recordings[-1]
  if recording.trace != get_opaque_trace_state(convention="decoupled_optax"):
    return None
  return recording


def is_recording() -> bool:
  """Whether a :func:`with_diagnostics` update is recording in the current trace."""
  return _current_recording() is not None


def record_scale_invariance(views: Any, multipliers: Any) -> None:
  """Reports AdamP's decisions: per leaf the view projected (0, 1, 2) and the decay multiplier."""
  recording = _current_recording()
  if recording is not None:
    recording.views.append(views)
    recording.multipliers.append(multipliers)


def record_step_scalars(step_scalars: StepScalars) -> None:
  """Reports the step's scalars, as a function of the number of updates before this one."""
  recording = _current_recording()
  if recording is not None:
    recording.step_scalars.append(step_scalars)


def recorded_in_nested_trace(
  fn: Callable[..., Any], *args: Any
) -> tuple[Any, tuple[list[Any], list[Any]]]:
  """Runs ``fn(*args)`` in a recording of its own: ``(fn's result, its decisions)``.

  For a function traced in a nested trace (a branch of
  ``platform_dependent``, a ``custom_jvp``): it returns the decisions as
  outputs, and the caller passes them to :func:`record_scale_invariance`.
  """
  with open_recording() as recording:
    result = fn(*args)
  return result, (recording.views, recording.multipliers)
