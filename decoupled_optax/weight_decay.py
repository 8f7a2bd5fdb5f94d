"""Decoupled weight decay as an optax transform, and the paper's normalized decay.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
https://arxiv.org/abs/1711.05101.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from decoupled_optax._trees import (
  check_mask_leaves,
  check_not_nnx_graph,
  check_same_structure,
  checked_mask,
  is_leaf_placeholder,
  leaf_positions,
  require_params,
)
from decoupled_optax._validation import check_bool, check_non_negative, check_number
from decoupled_optax.sharding import reduced_over_varying_axes

# Name of the extra argument through which a wrapper such as
# :func:`decoupled_optax.detect_scale_invariance` scales the decay per leaf.
WEIGHT_DECAY_MULTIPLIERS = "weight_decay_multipliers"
# Name of the extra argument through which detect_scale_invariance passes its projectors.
RADIAL_PROJECTORS = "radial_projectors"

MaskOrFn = Any | Callable[[optax.Params], Any] | None

# What to do when optax.inject_hyperparams has evaluated a callable mask on the
# step count as if it were a schedule (which silently disables weight decay).
MASK_AS_SCHEDULE_HINT = (
  "This happens when optax.inject_hyperparams treats a callable mask as a schedule and "
  "evaluates it on the step count, which silently disables weight decay. Pass "
  "static_args=('mask',) to optax.inject_hyperparams, or use "
  "decoupled_optax.inject_hyperparams, which does it for you."
)


class AddDecoupledWeightDecayState(NamedTuple):
  """State of :func:`add_decoupled_weight_decay` with a scheduled decay: the schedule's step.

  A constant decay keeps ``optax.EmptyState()``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> params = {"w": jnp.ones(2), "b": jnp.zeros(2)}
    >>> dopt.add_decoupled_weight_decay(optax.linear_schedule(1e-4, 0.0, 10)).init(params)
    AddDecoupledWeightDecayState(count=Array(0, dtype=int32))
    >>> dopt.add_decoupled_weight_decay(1e-4).init(params)
    EmptyState()
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)


class CautiousWeightDecayState(NamedTuple):
  """State of :func:`add_decoupled_weight_decay` with ``cautious=True``.

  Attributes:
    count: the number of updates so far (the schedule's step).
    decayed_fractions: per param leaf position (as
      :class:`decoupled_optax.RadialProjectionState` counts them), the
      fraction of the leaf's coordinates the last update decayed (float32),
      or None where the param is None or masked out; 0 before the first update.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.add_decoupled_weight_decay(0.1, cautious=True)
    >>> params = {"w": jnp.array([1.0, -1.0, 2.0, -2.0])}
    >>> updates = {"w": jnp.array([1.0, 1.0, -1.0, -1.0])}  # same sign as w on 1 and 4
    >>> decayed, state = tx.update(updates, tx.init(params), params)
    >>> decayed["w"].tolist(), float(state.decayed_fractions[0])
    ([1.100000023841858, 1.0, -1.0, -1.2000000476837158], 0.5)
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  decayed_fractions: Any


def _decay_leaf(
  update: Any, param: Any, coefficient: Any, cautious: bool
) -> tuple[Any, jax.Array | None]:
  """``(update + coefficient * param, fraction decayed)``; only where ``u * param >= 0`` if cautious."""
  if update is None or param is None:
    return update, None
  decayed = coefficient * param
  fraction = None
  if cautious:
    # Chen et al. 2025: decay where the update and the parameter agree in sign (zero counts).
    agrees = update * param >= 0
    decayed = jnp.where(agrees, decayed, jnp.zeros_like(decayed))
    fraction = jnp.sum(agrees, dtype=jnp.float32) / max(agrees.size, 1)
    fraction = reduced_over_varying_axes(fraction, jax.lax.pmean)
  return (update + decayed).astype(update.dtype), fraction


def _value_at(value: Any, count: jax.Array) -> Any:
  return value(count) if callable(value) else value


def _leaf_coefficients(
  decay: Any, projected_decay: Any, treedef: Any, extra_args: dict[str, Any]
) -> list[Any]:
  """Per leaf position, the decay times the multiplier a wrapper passed (AdamP's ``wd_ratio``)."""
  multipliers = extra_args.get(WEIGHT_DECAY_MULTIPLIERS)
  flat_multipliers = (
    [None] * treedef.num_leaves if multipliers is None else treedef.flatten_up_to(multipliers)
  )
  flat_decays: list[Any] = [decay] * treedef.num_leaves
  if projected_decay is not None:
    if RADIAL_PROJECTORS not in extra_args:
      raise ValueError(
        "add_decoupled_weight_decay: projected_weight_decay needs AdamP's decisions, which "
        "reach it only inside decoupled_optax.detect_scale_invariance (or adamp/sgdp); "
        "pass projected_weight_decay=None elsewhere."
      )
    projectors = treedef.flatten_up_to(extra_args[RADIAL_PROJECTORS])
    flat_decays = [
      decay if getattr(p, "view", None) is None else jnp.where(p.view > 0, projected_decay, decay)
      for p in projectors
    ]
  return [
    d if is_leaf_placeholder(r) else d * r
    for d, r in zip(flat_decays, flat_multipliers, strict=True)
  ]


def add_decoupled_weight_decay(
  weight_decay: optax.ScalarOrSchedule,
  mask: MaskOrFn = None,
  *,
  cautious: bool = False,
  projected_weight_decay: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``weight_decay * params`` to the updates, optionally only where they agree in sign.

  .. math:: u \leftarrow u + \lambda_t \, r \, \theta
            \qquad \text{or, cautious:} \qquad
            u \leftarrow u + \lambda_t \, r \, \mathbb{1}[u \odot \theta \ge 0] \odot \theta

  where ``r`` is a per-leaf multiplier that a wrapper may pass through the
  ``weight_decay_multipliers`` extra argument (AdamP's ``wd_ratio`` on
  scale-invariant weights, see :func:`decoupled_optax.detect_scale_invariance`),
  and 1 otherwise.

  Cautious weight decay (Chen et al. 2025) decays a coordinate only where the
  optimizer's update ``u`` (the direction this transform receives, before the
  descent sign) and the parameter have the same sign, zero included: there the
  step and the decay both shrink ``|theta|``, elsewhere the decay would fight
  the step. The gate reads the update as it arrives here, so in AdamP's and
  SGDP's chains it reads the direction after the radial projection, the step
  actually taken. The update must arrive with the gradient's sign, as it does
  before ``optax.scale_by_learning_rate`` (every chain of this library).

  Where this sits in a chain decides which convention it implements:

  * before the learning-rate scaling it is PyTorch / optax AdamW,
    ``theta -= lr * (direction + lambda * theta)``;
  * after scaling by the base rate alpha and before the schedule multiplier
    eta_t it is the paper's Algorithm 2,
    ``theta -= eta_t * (alpha * direction + lambda * theta)``.

  Args:
    weight_decay: lambda >= 0, a scalar or an optax schedule of the step.
    mask: as in optax, a pytree of bools with the structure of (or a prefix
      of) the params, or a callable that returns one from the params. Leaves
      marked False are not decayed.
    cautious: decay only the coordinates where the update and the parameter
      agree in sign (Chen et al. 2025). The state, a
      :class:`CautiousWeightDecayState`, then keeps the fraction of each
      leaf's coordinates decayed, which :func:`decoupled_optax.with_diagnostics`
      reports.
    projected_weight_decay: where AdamP's test found a leaf scale invariant
      (the ``radial_projectors`` extra argument of
      :func:`decoupled_optax.detect_scale_invariance` says so), this decay
      instead of ``weight_decay``: a scalar or a schedule. None: the same
      decay everywhere. ``decoupled_chain`` uses it for the corrected decay's
      per-layer rule (Defazio 2025): ``lambda * eta_t`` on the normalized
      layers, ``lambda`` on the others. Without the projection's extra
      arguments it raises a ``ValueError`` at the update.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> tx = optax.chain(optax.scale_by_adam(), dopt.add_decoupled_weight_decay(1e-2),
    ...                  optax.scale_by_learning_rate(1e-3))  # == optax.adamw(1e-3, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> round(float(updates["w"][0]), 9)  # -lr * wd * w
    -1e-05

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, Algorithms 1 and 2;
  cautious: `Chen et al., 2025 <https://arxiv.org/abs/2510.12402>`_, Algorithm 1.
  """
  check_non_negative("weight_decay", weight_decay, schedule=True)
  check_mask_argument(mask)
  check_bool("cautious", cautious)
  if projected_weight_decay is not None:
    check_non_negative("projected_weight_decay", projected_weight_decay, schedule=True)

  # Only a schedule needs a step count; a constant decay keeps no state, so
  # the compiled step is exactly optax.adamw's (no counter kernel).
  scheduled = callable(weight_decay) or callable(projected_weight_decay)

  def init_fn(params: optax.Params) -> optax.OptState:
    check_not_nnx_graph(params)
    count = jnp.zeros([], jnp.int32)
    if cautious:
      flat_params, _ = leaf_positions(params)
      zeros = tuple(None if p is None else jnp.zeros([], jnp.float32) for p in flat_params)
      return CautiousWeightDecayState(count, zeros)
    if scheduled:
      return AddDecoupledWeightDecayState(count=count)
    return optax.EmptyState()

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    params = require_params(params)
    check_same_structure("updates", updates, params)
    count = getattr(state, "count", jnp.zeros([], jnp.int32))
    if isinstance(state, (AddDecoupledWeightDecayState, CautiousWeightDecayState)):
      state = state._replace(count=jnp.asarray(optax.safe_increment(state.count)))
    flat_params, treedef = leaf_positions(params)
    flat_updates = treedef.flatten_up_to(updates)
    flat_coefficients = _leaf_coefficients(
      _value_at(weight_decay, count),
      None if projected_weight_decay is None else _value_at(projected_weight_decay, count),
      treedef,
      extra_args,
    )
    decayed = [
      _decay_leaf(u, p, c, cautious)
      for u, p, c in zip(flat_updates, flat_params, flat_coefficients, strict=True)
    ]
    updates = treedef.unflatten([u for u, _ in decayed])
    if isinstance(state, CautiousWeightDecayState):
      state = state._replace(decayed_fractions=tuple(f for _, f in decayed))
    return updates, state

  transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  if mask is None:
    return transform
  return optax.masked(transform, checked_mask(mask), mask_compatible_extra_args=True)


def check_mask_argument(mask: Any) -> None:
  """A mask is None, a callable of the params, or a pytree of bools; never a single bool."""
  scalar = isinstance(mask, (bool, np.bool_)) or (
    isinstance(mask, (jax.Array, np.ndarray)) and mask.ndim == 0
  )
  if scalar:
    raise ValueError(
      "mask must be a pytree of bools (one per leaf or subtree of the params) or a callable "
      f"that returns one from the params, got the scalar {mask!r}. To decay every leaf omit "
      "mask (mask=None); to decay kernels but not biases and normalization scales pass "
      "mask=decoupled_optax.weight_decay_mask; to decay nothing pass weight_decay=0. (A "
      "callable mask passed through optax.inject_hyperparams is evaluated on the step count "
      "as if it were a schedule: pass static_args=('mask',) there, or use "
      "decoupled_optax.inject_hyperparams.)"
    )
  if isinstance(mask, (str, bytes, int, float, complex)):
    raise TypeError(
      "mask must be None, a pytree of bools or a callable of the params, "
      f"got {type(mask).__name__} {mask!r}."
    )
  if not callable(mask):
    check_mask_leaves(mask)


def normalized_weight_decay(
  lambda_norm: float,
  batch_size: int,
  num_train_points: int,
  num_epochs: float,
) -> float:
  r"""The paper's normalized weight decay, Appendix B.1.

  .. math:: \lambda = \lambda_{norm} \sqrt{\frac{b}{B \, T}}

  with ``b`` the batch size, ``B`` the number of training points and ``T``
  the number of epochs (with warm restarts, the length of the current
  period: see :func:`normalized_weight_decay_schedule`). The authors found
  ``lambda_norm`` of 0.025 to 0.05 good for both SGDW and AdamW. The result is
  the paper's lambda: pass it with ``weight_decay_convention="paper"``.

  Args:
    lambda_norm: the normalized decay, >= 0.
    batch_size: b, >= 1.
    num_train_points: B, >= 1.
    num_epochs: T, the length of the run (or of the current period) in epochs, > 0.

  Returns:
    The paper's lambda, a float.

  Example:
    >>> import decoupled_optax as dopt
    >>> round(dopt.normalized_weight_decay(0.05, batch_size=128, num_train_points=50_000, num_epochs=100), 7)
    0.000253

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, Appendix B.1.
  """
  check_non_negative("lambda_norm", lambda_norm)
  check_number("batch_size", batch_size, low=1, integer=True)
  check_number("num_train_points", num_train_points, low=1, integer=True)
  check_number("num_epochs", num_epochs, low=0, low_inclusive=False)
  return lambda_norm * math.sqrt(batch_size / (num_train_points * num_epochs))


def weight_decay_for_timescale(
  *,
  weight_decay_convention: str,
  tau_iterations: float | None = None,
  tau_epochs: float | None = None,
  batch_size: int | None = None,
  num_train_points: int | None = None,
  learning_rate: float | None = None,
) -> float:
  r"""The decay whose EMA timescale is ``tau`` (Wang & Aitchison, ICML 2025), in a stated convention.

  Decoupled decay makes the weights an exponential moving average of the
  updates with timescale :math:`\tau_{iter} = 1 / d` steps, ``d`` the fraction
  of each weight removed per step; :math:`\tau_{epoch} = \tau_{iter} B / N`
  for batch size ``B`` and ``N`` training points. The paper finds the best
  :math:`\tau_{epoch}` roughly constant as model and dataset sizes change, so
  it is the quantity to transfer. At the schedule's peak (eta_t = 1):

  .. math:: \lambda_{paper} = \lambda_{corrected} = \frac{1}{\tau_{iter}}, \qquad
            \lambda_{torch} = \frac{1}{\alpha \, \tau_{iter}}

  The paper's normalized weight decay (:func:`normalized_weight_decay`,
  :math:`\lambda = \lambda_{norm}\sqrt{b / (B T)}`) is the timescale
  :math:`\tau_{iter} = \sqrt{B T / b} / \lambda_{norm}` steps: it grows with
  the square root of the run's length, where a fixed :math:`\tau_{epoch}`
  keeps it a fixed number of epochs.

  Args:
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``: the
      convention of the returned lambda (required: the values differ by 1 / alpha).
    tau_iterations: the timescale in steps, > 0. Give this or ``tau_epochs``.
    tau_epochs: the timescale in epochs, > 0; needs ``batch_size`` and ``num_train_points``.
    batch_size: B, an integer >= 1 (with ``tau_epochs``).
    num_train_points: N, an integer >= 1 (with ``tau_epochs``).
    learning_rate: alpha > 0, in the ``"torch"`` convention only, whose decay
      it multiplies; the paper's lambda does not depend on it.

  Returns:
    lambda, a float, to pass with the same ``weight_decay_convention``.

  Example:
    >>> import decoupled_optax as dopt
    >>> lam = dopt.weight_decay_for_timescale(
    ...     weight_decay_convention="torch", tau_epochs=2.0, batch_size=256,
    ...     num_train_points=50_000, learning_rate=1e-3)
    >>> round(lam, 4)  # 1 / (alpha * tau_epochs * N / B)
    2.56
    >>> tx = dopt.adamw(1e-3, lam, weight_decay_convention="torch")

  Reference: `Wang & Aitchison, ICML 2025 <https://arxiv.org/abs/2405.13698>`_, Section 3.
  """
  if weight_decay_convention not in ("paper", "torch", "corrected"):
    raise ValueError(
      "weight_decay_convention must be 'paper', 'torch' or 'corrected' (the lambda returned "
      f"is in it), got {weight_decay_convention!r}."
    )
  check_number("batch_size", batch_size, low=1, integer=True, optional=True)
  check_number("num_train_points", num_train_points, low=1, integer=True, optional=True)
  if (tau_iterations is None) == (tau_epochs is None):
    raise ValueError(
      "weight_decay_for_timescale: must get exactly one of tau_iterations (steps) and tau_epochs "
      f"(epochs, with batch_size and num_train_points), got tau_iterations={tau_iterations!r} "
      f"and tau_epochs={tau_epochs!r}."
    )
  if tau_epochs is not None:
    check_number("tau_epochs", tau_epochs, low=0.0, low_inclusive=False)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("num_train_points", num_train_points, low=1, integer=True)
    steps = float(tau_epochs) * float(num_train_points) / float(batch_size)  # pyright: ignore[reportArgumentType]
  else:
    check_number("tau_iterations", tau_iterations, low=0.0, low_inclusive=False)
    steps = float(tau_iterations)  # pyright: ignore[reportArgumentType]
  if weight_decay_convention != "torch":
    if learning_rate is not None:
      raise ValueError(
        f"learning_rate must be None in the {weight_decay_convention!r} convention, whose lambda "
        f"does not multiply it, got {learning_rate!r}; pass weight_decay_convention='torch' "
        "for a lambda that does."
      )
    return 1.0 / steps
  check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
  return 1.0 / (float(learning_rate) * steps)  # pyright: ignore[reportArgumentType]
