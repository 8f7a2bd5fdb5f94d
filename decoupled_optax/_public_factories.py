"""The public optimizer factories' common front: PyTorch's keywords and the convention warnings.

:func:`public_factory` wraps each factory: a PyTorch keyword it does not take
raises a TypeError that names this library's spelling, and once the factory
has built, the convention warnings judge the arguments given. The unwrapped
bodies stay reachable by the public factory (:data:`UNJUDGED_FACTORIES`), for
:func:`decoupled_optax.inject_hyperparams`, which judges once at construction.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from decoupled_optax.conventions import (
  warn_if_schedule_looks_like_learning_rate,
  warn_if_torch_convention,
)

# PyTorch's optimizer keywords that this library spells differently or does not have.
_TORCH_KEYWORDS: dict[str, str] = {
  "lr": "takes learning_rate, not PyTorch's lr: pass learning_rate=... (or it first, by position).",
  "params": (
    "takes no params: the parameters are given to the optimizer's init and update, not to its "
    "construction: tx = {name}(...); state = tx.init(params); "
    "updates, state = tx.update(grads, state, params)."
  ),
  "amsgrad": (
    "has no amsgrad: drop amsgrad=False; for AMSGrad use "
    "decoupled_chain(optax.scale_by_amsgrad(), ...)."
  ),
  "scale_weight_decay_by_lr": (
    'no longer takes scale_weight_decay_by_lr: pass weight_decay_convention="torch" for True, '
    'weight_decay_convention="paper" for False.'
  ),
  "maximize": "has no maximize: negate the loss (or the gradients) instead.",
  "foreach": "has no foreach, a PyTorch implementation switch: drop it (XLA compiles the update).",
  "fused": (
    "has no fused, a PyTorch implementation switch: drop it (XLA compiles the update; AdamP and "
    "SGDP take cpu_kernel for their fused CPU kernel)."
  ),
  "capturable": "has no capturable, a PyTorch CUDA-graph switch: drop it (jit the update instead).",
  "differentiable": (
    "has no differentiable, a PyTorch autograd switch: drop it (JAX differentiates through "
    "any update)."
  ),
}

# Messages that depend on the factory: (a parameter, the message where the factory
# takes it, the message where it does not).
_FACTORY_DEPENDENT: dict[str, tuple[str, str, str]] = {
  "betas": (
    "b1",
    "takes b1 and b2, not PyTorch's betas: betas=(0.9, 0.999) is b1=0.9, b2=0.999.",
    "has no betas: they are Adam's moment decays, b1 and b2 of adamw and adamp, or of "
    "optax.scale_by_adam(b1=..., b2=...) as decoupled_chain's direction.",
  ),
  "dampening": (
    "momentum",
    "has no dampening: its momentum buffer is PyTorch's with dampening=0 (PyTorch's default); "
    "drop the keyword.",
    "has no dampening, a keyword of PyTorch's SGD: drop it.",
  ),
  "momentum": (
    "b1",
    "has no momentum: Adam's momentum is the first-moment decay b1 (PyTorch's betas[0]).",
    "has no momentum: give it to the direction, e.g. optax.trace(decay=0.9) or "
    "decoupled_optax.MomentumDirection(0.9).",
  ),
}

_P = ParamSpec("_P")
_R = TypeVar("_R")


def judge_conventions(bound: Mapping[str, Any]) -> None:
  """The aliases' convention warnings, on the arguments the user passed (defaults applied)."""
  if "learning_rate" not in bound:
    return
  if "schedule" in bound:
    warn_if_schedule_looks_like_learning_rate(bound["schedule"], bound["learning_rate"])
  if "weight_decay" in bound and bound.get("weight_decay_convention") in ("paper", "corrected"):
    warn_if_torch_convention(bound["weight_decay"], bound["learning_rate"])


# The public factories' bodies, which do not judge their arguments, by public factory:
# decoupled_optax.inject_hyperparams builds with these after judging once, at construction.
UNJUDGED_FACTORIES: dict[Callable[..., Any], Callable[..., Any]] = {}


def public_factory(factory: Callable[_P, _R], name: str | None = None) -> Callable[_P, _R]:
  """``factory`` as users call it: it judges the conventions, and rejects PyTorch's keywords.

  A PyTorch keyword it does not take raises a TypeError naming ours; other
  unknown keywords keep Python's own TypeError. Once ``factory`` has built
  the optimizer, the convention warnings judge the arguments given
  (:mod:`decoupled_optax.conventions`). ``functools.wraps`` keeps the
  signature visible to ``inspect.signature`` (and so to :func:`inject_hyperparams`).
  """
  name = name or factory.__name__
  signature = inspect.signature(factory)
  parameters = signature.parameters
  messages = dict(_TORCH_KEYWORDS)
  for keyword, (parameter, taken, not_taken) in _FACTORY_DEPENDENT.items():
    messages[keyword] = taken if parameter in parameters else not_taken
  foreign = {
    keyword: f"{name}() {message.format(name=name)}"
    for keyword, message in messages.items()
    if keyword not in parameters
  }

  @functools.wraps(factory)
  def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
    for keyword in kwargs:
      if keyword in foreign:
        raise TypeError(foreign[keyword])
    built = factory(*args, **kwargs)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    judge_conventions(bound.arguments)
    return built

  wrapper.__name__ = wrapper.__qualname__ = name
  UNJUDGED_FACTORIES[wrapper] = factory
  return wrapper
