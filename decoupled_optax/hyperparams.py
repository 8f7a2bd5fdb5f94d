"""``inject_hyperparams`` for the library's factories: static options stay static, dtypes exact."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from decoupled_optax._public_factories import UNJUDGED_FACTORIES
from decoupled_optax._required_convention import has_no_decay
from decoupled_optax._validation import check_dtype, describe

# Arguments that must stay Python values: optax would trace an int channel axis,
# and evaluate a callable mask, or a dtype such as jnp.bfloat16 (a class, so
# callable), as if it were a schedule.
_STATIC_ARGUMENTS = (
  "mask",
  "channel_axis",
  "projection_mask",
  "mu_dtype",
  "nu_dtype",
  "accumulator_dtype",
  "axis_name",
  "cpu_kernel",
  "weight_decay_convention",
  "cautious_weight_decay",
  "corrected_decay_leaves",
)


def _cast_like(new: Any, old: Any) -> Any:
  """``new`` with the dtypes of ``old``, leaf for leaf (same structure)."""
  return jax.tree.map(
    lambda n, o: n.astype(o.dtype) if hasattr(n, "astype") and hasattr(o, "dtype") else n,
    new,
    old,
    is_leaf=lambda x: x is None,
  )


def inject_hyperparams(
  inner_factory: Callable[..., optax.GradientTransformation],
  static_args: str | tuple[str, ...] = (),
  hyperparam_dtype: Any | None = None,
) -> Any:
  """``optax.inject_hyperparams`` that keeps ``mask`` and ``channel_axis`` static, and dtypes exact.

  optax treats every callable argument as a schedule unless it is listed in
  ``static_args``: a callable mask would be evaluated on the step count and
  weight decay silently turned off. It also turns integer arguments into
  traced arrays, which the projection's ``channel_axis`` cannot be. This adds
  ``mask``, ``channel_axis``, ``projection_mask``, ``axis_name``, ``cpu_kernel``,
  the moments' dtypes (``mu_dtype``, ``nu_dtype``, ``accumulator_dtype``) and
  ``weight_decay_convention`` to ``static_args`` when the factory takes them;
  learning rate, weight decay, schedule and the other numeric hyperparameters
  are injected as usual.

  The weight decay's convention is required as in the aliases: a nonzero
  ``weight_decay`` (a number or a schedule) without
  ``weight_decay_convention`` raises the alias's ``ValueError`` here, at
  construction. Inside, the injected ``weight_decay`` is an array whose value
  may change (``state.hyperparams["weight_decay"]``), so the factory is
  called with the convention: the one given, or ``"paper"`` when none was
  given and ``weight_decay`` was 0 (or omitted). A decay set later through
  ``state.hyperparams`` is then applied in the paper's convention: to change
  it later, pass ``weight_decay_convention`` at construction. (Under
  ``optax.inject_hyperparams`` itself the aliases only see arrays: without a
  convention they raise on a nonzero decay, and under ``jit``, where the value
  is traced, on any decay, even an omitted one.)

  Two differences from optax, for low-precision params:

  * By default the hyperparameters are stored in the params' widest float
    dtype but at least float32: optax stores them in the params' dtype, so
    with bfloat16 params the default ``b2 = 0.999`` becomes exactly 1.
  * The state and the updates keep their dtypes across steps. float32
    hyperparameters would otherwise promote bfloat16 moments to float32 after
    the first step, which breaks ``lax.scan`` over steps and checkpoint
    restores.

  The convention warnings (:mod:`decoupled_optax.conventions`) judge the
  values passed here, with schedules as schedules.

  Args:
    inner_factory: an optimizer factory, e.g. :func:`decoupled_optax.adamw`.
    static_args: names of further arguments that stay Python values.
    hyperparam_dtype: the dtype of the injected float hyperparameters; None
      for the params' widest float dtype, at least float32.

  Returns:
    A factory with ``inner_factory``'s arguments that returns an
    :class:`optax.GradientTransformationExtraArgs` whose state is
    ``optax.InjectStatefulHyperparamsState``.

  Example:
    >>> import decoupled_optax as dopt
    >>> tx = dopt.inject_hyperparams(dopt.adamp)(
    ...     learning_rate=1e-3, weight_decay=1e-4, mask=lambda p: {"w": True},
    ...     weight_decay_convention="paper")
  """
  if not callable(inner_factory):
    raise TypeError(f"inner_factory must be an optimizer factory, got {describe(inner_factory)}.")
  if isinstance(static_args, str):
    static_args = (static_args,)
  if not isinstance(static_args, (tuple, list)) or not all(isinstance(n, str) for n in static_args):
    raise TypeError(f"static_args must be a name or a tuple of names, got {describe(static_args)}.")
  check_dtype("hyperparam_dtype", hyperparam_dtype)
  signature = inspect.signature(inner_factory)
  parameters = signature.parameters
  names = set(static_args) | {name for name in _STATIC_ARGUMENTS if name in parameters}
  # Judged once, at construction: the injected values (arrays) are not judged again.
  build = UNJUDGED_FACTORIES.get(inner_factory, inner_factory)

  def injected(dtype: Any) -> Any:
    return optax.inject_hyperparams(build, static_args=tuple(sorted(names)), hyperparam_dtype=dtype)

  def dtype_for(params: Any) -> Any:
    if hyperparam_dtype is not None:
      return hyperparam_dtype
    return jnp.promote_types(optax.tree.dtype(params, "highest"), jnp.float32)

  @functools.wraps(inner_factory)
  def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    # Built once here, so that bad arguments raise at construction, not at init, and the
    # conventions are judged once, on the values given (schedules as schedules).
    inner_factory(*args, **kwargs)
    convention_left_out = bound.arguments.get("weight_decay_convention", "") is None
    if convention_left_out and has_no_decay(bound.arguments.get("weight_decay")):
      # Injected, the decay is a (mutable) array, which needs a convention: the paper's.
      kwargs = {**kwargs, "weight_decay_convention": "paper"}

    def init_fn(params: optax.Params) -> Any:
      return injected(dtype_for(params))(*args, **kwargs).init(params)

    def update_fn(
      updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, Any]:
      tx = injected(dtype_for(params if params is not None else updates))(*args, **kwargs)
      new_updates, new_state = tx.update(updates, state, params, **extra_args)
      return _cast_like(new_updates, updates), _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  return factory
