"""Which weight-decay convention an optimizer is built in: stated, never guessed.

The same numbers mean decays ``1 / learning_rate`` apart in the paper's and
PyTorch's conventions, so a nonzero decay without a convention raises an error
that shows what the value means in each (see :mod:`decoupled_optax.aliases`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import optax

from decoupled_optax._validation import check_non_negative, concrete_float, describe
from decoupled_optax.conventions import PaperConventionSchedule, _value_at_step_zero

WeightDecayConvention = Literal["paper", "torch", "corrected"]
CONVENTIONS = ("paper", "torch", "corrected")


def _format(value: float) -> str:
  return f"{value:g}"


def _decay_meanings(
  caller: str,
  weight_decay: Any,
  learning_rate: Any,
  decay_factor: Any,
  decay_note: str,
) -> str:
  """What ``weight_decay`` removes per step (at eta_t = 1) in each convention, for the error."""
  decay, rate = _value_at_step_zero(weight_decay), _value_at_step_zero(learning_rate)
  factor = concrete_float(decay_factor)
  symbol = "lambda"
  if callable(weight_decay):
    given = "weight_decay is a schedule" + (
      "" if decay is None else f" (weight_decay(0) = {_format(decay)})"
    )
    symbol = "lambda_t"
  elif decay is None:
    given = "weight_decay is traced (inside jit or optax.inject_hyperparams): it may be nonzero"
  else:
    given = f"weight_decay={_format(decay)}"
  rate_text = "learning_rate" + ("(t)" if callable(learning_rate) else "")
  if rate is not None:
    given += f" with learning_rate{'(0)' if callable(learning_rate) else ''}={_format(rate)}"
  if factor is not None and factor != 1:
    symbol = f"{_format(factor)} * {symbol}"
  paper = symbol
  torch = f"{rate_text} * {symbol}"
  if decay is not None and factor is not None:
    paper += f" = {_format(factor * decay)}"
    if rate is not None:
      torch += f" = {_format(rate * factor * decay)}"
  lines = [
    f"{caller}(): {given}, and no weight_decay_convention. The same numbers mean decays "
    "1 / learning_rate apart in the paper's and PyTorch's conventions, so the convention "
    "must be stated. The fraction of each decayed weight removed per step, at schedule "
    "eta_t = 1:",
    f'  weight_decay_convention="paper":     {paper}  '
    "(Loshchilov & Hutter's AdamW/SGDW, MosaicML Composer)",
    f'  weight_decay_convention="torch":     {torch}  '
    "(torch.optim.AdamW/SGD, optax.adamw, timm, Keras, the official adamp package)",
    f'  weight_decay_convention="corrected": {paper} at eta_t = 1, times eta_t^2 as the '
    "schedule decays  (AdamC/SGDC, Defazio 2025)",
  ]
  if decay_note:
    lines.append(decay_note)
  lines.append(
    f"Pass the one the value was written for, e.g. {caller}(..., "
    'weight_decay_convention="torch") for a value taken from PyTorch, optax or timm.'
  )
  return "\n".join(lines)


def has_no_decay(weight_decay: Any) -> bool:
  """Whether ``weight_decay`` is a concrete 0: a number, not a schedule nor a traced value."""
  return not callable(weight_decay) and concrete_float(weight_decay) == 0


def _scale_by_multiplier(
  schedule: optax.ScalarOrSchedule | None, sign: float
) -> optax.GradientTransformation:
  """Scales by ``sign * schedule(t)``: the paper's eta_t, with the descent sign if asked."""
  if schedule is None:
    return optax.identity() if sign == 1 else optax.scale(sign)
  if callable(schedule):
    return optax.scale_by_schedule(lambda count: sign * schedule(count))
  return optax.scale(sign * schedule)


@dataclasses.dataclass(frozen=True)
class Convention:
  r"""What a weight-decay convention means: its chain's steps and the scalars it applies.

  With :math:`d_t` the direction, :math:`\alpha` the learning rate,
  :math:`\eta_t` the schedule multiplier and :math:`\lambda` the decay,
  paper: :math:`-\eta_t(\alpha d_t + \lambda\theta)`; torch:
  :math:`-\alpha_t\eta_t(d_t + \lambda\theta)`; corrected:
  :math:`-\eta_t(\alpha d_t + \lambda\eta_t\theta)`.

  Attributes:
    name: ``"paper"``, ``"torch"`` or ``"corrected"``.
    decay_times_learning_rate: the decay is applied after the learning rate
      scales it (torch), so ``learning_rate`` may be a schedule.
    decay_follows_schedule: the decay takes eta_t once more (corrected).
  """

  name: WeightDecayConvention
  decay_times_learning_rate: bool
  decay_follows_schedule: bool

  def decay_coefficient(self, decay: Any, eta: Any) -> Any:
    """The decay's coefficient before the chain's multiplier eta_t."""
    return decay * eta if self.decay_follows_schedule else decay

  def steps(
    self,
    decay: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    schedule: optax.ScalarOrSchedule | None,
  ) -> list[optax.GradientTransformation]:
    """The steps after the direction: the decay, the learning rate and eta_t, in order."""
    if self.decay_times_learning_rate:  # -alpha_t eta_t (d + lambda theta)
      return [
        decay,
        optax.scale_by_learning_rate(learning_rate),
        _scale_by_multiplier(schedule, 1.0),
      ]
    # -eta_t (alpha d + lambda [eta_t] theta)
    return [
      optax.scale_by_learning_rate(learning_rate, flip_sign=False),
      decay,
      _scale_by_multiplier(schedule, -1.0),
    ]

  def applied_decay(self, decay_coefficient: Any, eta: Any, learning_rate: Any) -> Any:
    """The fraction of a decayed weight removed per step, as the chain applies it."""
    applied = decay_coefficient * eta
    return applied * learning_rate if self.decay_times_learning_rate else applied


PAPER = Convention("paper", decay_times_learning_rate=False, decay_follows_schedule=False)
TORCH = Convention("torch", decay_times_learning_rate=True, decay_follows_schedule=False)
CORRECTED = Convention("corrected", decay_times_learning_rate=False, decay_follows_schedule=True)
_BY_NAME = {c.name: c for c in (PAPER, TORCH, CORRECTED)}


def require_convention(
  caller: str,
  weight_decay_convention: str | None,
  weight_decay: Any,
  learning_rate: Any,
  *,
  decay_factor: Any = 1.0,
  decay_note: str = "",
) -> Convention:
  """The convention to build with; raises if a nonzero decay comes without one.

  Without decay every convention gives the same update: ``"torch"`` is used
  when ``learning_rate`` is a schedule (the one convention that takes one),
  ``"paper"`` otherwise.
  """
  if weight_decay_convention is not None and weight_decay_convention not in CONVENTIONS:
    raise ValueError(
      f"weight_decay_convention must be one of {CONVENTIONS}, got {describe(weight_decay_convention)}."
    )
  check_non_negative("weight_decay", weight_decay, schedule=True)
  if isinstance(weight_decay, PaperConventionSchedule) and weight_decay_convention == "torch":
    raise ValueError(
      f"{caller}: weight_decay is a PaperConventionSchedule (the paper's lambda_t, not "
      "multiplied by the learning rate), but weight_decay_convention='torch' would multiply it "
      "by the learning rate; pass weight_decay_convention='paper' (or 'corrected')."
    )
  if weight_decay_convention is not None:
    return _BY_NAME[weight_decay_convention]
  if has_no_decay(weight_decay):
    return TORCH if callable(learning_rate) else PAPER
  raise ValueError(_decay_meanings(caller, weight_decay, learning_rate, decay_factor, decay_note))


def projected_decay(wd_ratio: Any) -> str:
  """For the missing-convention error: AdamP's and SGDP's factor on projected weights."""
  ratio = concrete_float(wd_ratio)
  return (
    f"by {'wd_ratio' if ratio is None else f'wd_ratio={_format(ratio)}'} on the weights it projects"
  )
