r"""AdamW, SGDW, AdamP and SGDP as thin chains of the library's blocks.

All four share one construction, :func:`decoupled_chain`, and three
conventions for the weight decay lambda (``weight_decay_convention``), with
alpha = ``learning_rate`` and eta_t = ``schedule(t)`` (1 without a schedule):

* ``"paper"``: ``update = -eta_t * (alpha * direction + lambda * theta)``.
  lambda is NOT multiplied by alpha (Loshchilov & Hutter 2019, Algorithms 1
  and 2; the authors' code; MosaicML Composer).
* ``"torch"``: ``update = -alpha_t * eta_t * (direction + lambda * theta)``:
  PyTorch, optax, timm, Keras, the official AdamP. ``learning_rate`` may
  also be an optax schedule.
* ``"corrected"``: ``update = -eta_t * (alpha * direction + lambda * eta_t * theta)``,
  lambda in the paper's units (Defazio 2025, AdamC/SGDC; timm's
  ``corrected_weight_decay``, a per-step decay of ``lr**2 / max_lr * wd``).
  The decay follows the schedule once more, so that the steady-state
  ``||g|| / ||w||`` of normalized layers does not drift as eta_t decays.

There is no default: the same numbers mean decays ``1 / alpha`` apart in the
paper's and PyTorch's conventions, and no heuristic tells them apart. So a
nonzero ``weight_decay`` (a number or a schedule) without
``weight_decay_convention`` raises a ``ValueError`` that shows what the
numbers mean in each convention. Without decay (``weight_decay=0`` or
omitted where the alias has a default) no convention is needed.

Conversions: ``lambda_paper = alpha * lambda_torch``; ``"corrected"`` takes
the paper's lambda, and equals ``"paper"`` while eta_t = 1 (the schedule's
peak); timm's corrected ``wd`` is ``lambda / alpha``.

PyTorch's keywords (``lr``, ``betas``, ``params``, ...) raise a ``TypeError``
that names this library's spelling.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from decoupled_optax._projection_options import (
  AxisName,
  ChannelAxis,
  ProjectionMask,
  RadialProjection,
  check_projection,
)
from decoupled_optax._public_factories import public_factory
from decoupled_optax._required_convention import (
  Convention,
  WeightDecayConvention,
  projected_decay,
  require_convention,
)
from decoupled_optax._step_scalars import keep_step_scalars
from decoupled_optax._trees import (
  check_real_params,
  check_same_structure,
  intersected_masks,
  require_params,
)
from decoupled_optax._validation import (
  check_bool,
  check_dtype,
  check_non_negative,
  check_number,
  check_transform,
  check_unit_interval,
  describe,
)
from decoupled_optax.directions import (
  AdamDirection,
  Direction,
  MomentumDirection,
  _scale_by_adam,
  angular_equilibrium_factor,
)
from decoupled_optax.fused import fused_scale_invariance
from decoupled_optax.projection import detect_scale_invariance, project_out_radial
from decoupled_optax.sharding import keep_param_sharding
from decoupled_optax.weight_decay import (
  MaskOrFn,
  add_decoupled_weight_decay,
  check_mask_argument,
)


def _checked_inputs(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner``, with its inputs checked first: params given, grads shaped like them, dtypes.

  The errors then name the argument and the leaf, instead of a broadcasting
  error (or a silent broadcast) several transforms deep. The projecting
  chains get the same checks from their detection.
  """
  inner = optax.with_extra_args_support(inner)
  transform = "decoupled_optax's AdamW/SGDW"

  def init_fn(params: optax.Params) -> optax.OptState:
    check_real_params(params, allow_complex=True, transform=transform)
    return inner.init(params)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    require_params(params)
    check_same_structure("grads", updates, params)
    check_real_params(params, allow_complex=True, transform=transform)
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _value_at(value: Any, count: jax.Array) -> Any:
  return value(count) if callable(value) else value


def _chain(
  direction: optax.GradientTransformation | Direction,
  *,
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  weight_decay_convention: WeightDecayConvention | None = None,
  weight_decay_factor: Any = 1.0,
  radial_projection: RadialProjection | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
  angular_equilibrium_factor: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """:func:`decoupled_chain`'s body; the aliases give the direction's equilibrium factor."""
  fusable = isinstance(direction, Direction)
  if not fusable:
    check_transform("direction", direction)
  convention = require_convention(
    "decoupled_chain",
    weight_decay_convention,
    weight_decay,
    learning_rate,
    decay_factor=weight_decay_factor,
  )
  if callable(learning_rate) and not convention.decay_times_learning_rate:
    raise ValueError(
      f"learning_rate must be a scalar in the {convention.name!r} convention; pass the schedule "
      "as schedule=... (the multiplier eta_t), or use weight_decay_convention='torch'."
    )
  check_non_negative("learning_rate", learning_rate, schedule=convention.decay_times_learning_rate)
  check_number("schedule", schedule, low=0.0, schedule=True, optional=True)
  check_mask_argument(mask)
  check_non_negative("weight_decay_factor", weight_decay_factor)
  if radial_projection is not None:
    radial_projection = check_projection(radial_projection, "radial_projection")

  check_bool("cautious_weight_decay", cautious_weight_decay)
  per_leaf_correction = _check_corrected_leaves(
    corrected_decay_leaves, convention, radial_projection
  )

  eta = lambda count: 1.0 if schedule is None else _value_at(schedule, count)  # noqa: E731

  def paper_decay(count: Any) -> Any:
    """The paper's lambda_t (times the factor), before the multiplier eta_t."""
    return weight_decay_factor * _value_at(weight_decay, count)

  def corrected_decay(count: Any) -> Any:
    """The convention's decay coefficient before the multiplier eta_t."""
    return convention.decay_coefficient(paper_decay(count), eta(count))

  uncorrected = paper_decay if per_leaf_correction else corrected_decay
  corrected_varies = callable(weight_decay) or (
    convention.decay_follows_schedule and callable(schedule)
  )
  decay = _decay_transforms(
    _as_schedule(
      uncorrected, callable(weight_decay) or (corrected_varies and not per_leaf_correction)
    ),
    _as_schedule(corrected_decay, corrected_varies),
    mask,
    cautious_weight_decay,
    corrected_decay_leaves if per_leaf_correction else None,
  )
  steps = convention.steps(decay, learning_rate, schedule)

  def step_scalars(count: jax.Array) -> tuple[Any, ...]:
    rate = _value_at(learning_rate, count)
    applied = lambda decay: convention.applied_decay(decay(count), eta(count), rate)  # noqa: E731
    corrected = applied(corrected_decay) if per_leaf_correction else None
    return (
      eta(count),
      rate * eta(count),
      applied(uncorrected),
      corrected,
      angular_equilibrium_factor,
    )

  steps.append(keep_step_scalars(step_scalars))

  transform = direction.transform() if fusable else direction
  if radial_projection is None:
    chain = _checked_inputs(optax.chain(transform, *steps))
  else:
    # One state structure for both paths: (direction, (projection, decay, ...)).
    tail = optax.chain(project_out_radial(), *steps)
    if fusable:
      chain = fused_scale_invariance(direction, tail, radial_projection)
    else:
      chain = detect_scale_invariance(optax.chain(transform, tail), radial_projection)

  # Under jit, the state follows the params' sharding (see decoupled_optax.sharding).
  return keep_param_sharding(chain)


def _decoupled_chain(
  direction: optax.GradientTransformation | Direction,
  *,
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  weight_decay_convention: WeightDecayConvention | None = None,
  weight_decay_factor: Any = 1.0,
  radial_projection: RadialProjection | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Direction, optional radial projection, and decoupled decay, in any of the three conventions.

  With :math:`d_t` the direction, :math:`\alpha` the learning rate,
  :math:`\eta_t` the schedule multiplier and :math:`\lambda` the decay:

  .. math::

    \text{paper:} \quad \theta_t = \theta_{t-1} - \eta_t(\alpha d_t + \lambda\theta_{t-1}), \qquad
    \text{torch:} \quad \theta_t = \theta_{t-1} - \alpha_t\eta_t(d_t + \lambda\theta_{t-1}), \qquad
    \text{corrected:} \quad \theta_t = \theta_{t-1} - \eta_t(\alpha d_t + \lambda\eta_t\theta_{t-1})

  This is the W-variant of any optax direction: ``decoupled_chain(optax.scale_by_lion(), ...)``
  is Lion with the paper's decay.

  Args:
    direction: the update direction (``optax.scale_by_adam()``, ``optax.trace(...)``,
      ...), or an :class:`decoupled_optax.AdamDirection` /
      :class:`decoupled_optax.MomentumDirection`, which with
      ``radial_projection`` may run fused on the CPU
      (:func:`decoupled_optax.fused_scale_invariance`).
    learning_rate: alpha, the base rate; an optax schedule only in the
      ``"torch"`` convention (or without decay).
    weight_decay: lambda, a scalar or a schedule, in the convention chosen by
      ``weight_decay_convention``; 0 decays nothing.
    schedule: eta_t, the paper's multiplier, evaluated at the update count
      (the first update uses ``schedule(0)``); None means 1.
    mask: which leaves are decayed, as in optax.
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``, see
      :mod:`decoupled_optax.aliases`. Required unless ``weight_decay`` is 0:
      without it a nonzero decay (or any schedule) raises a ``ValueError``
      that shows what the value means in each convention.
    weight_decay_factor: a constant that multiplies ``weight_decay`` (SGDP's
      official ``1 / (1 - momentum)``). The convention warning judges the
      ``weight_decay`` the user gave, before this factor.
    radial_projection: AdamP/SGDP's projection, a
      :class:`decoupled_optax.RadialProjection`. When given, it goes to
      :func:`decoupled_optax.fused_scale_invariance` (for an
      :class:`decoupled_optax.AdamDirection` or
      :class:`decoupled_optax.MomentumDirection`) or
      :func:`decoupled_optax.detect_scale_invariance` (any other direction),
      which wraps the chain, and :func:`decoupled_optax.project_out_radial`
      follows the direction.
    cautious_weight_decay: decay only the coordinates where the update
      (after the projection, if any) and the parameter agree in sign (Chen et
      al. 2025; see :func:`decoupled_optax.add_decoupled_weight_decay`).
    corrected_decay_leaves: with ``weight_decay_convention="corrected"``,
      which decayed leaves get the corrected ``lambda eta_t^2``; the others
      get the paper's ``lambda eta_t`` (Defazio 2025's per-layer rule:
      corrected on normalized layers). None: every decayed leaf, as timm and
      Levanter do. ``"scale_invariant"``: the leaves AdamP's test finds scale
      invariant at each step (needs ``radial_projection``). A mask (a tree of
      bools or a function of the params, as ``mask``): those leaves. Any
      other convention raises if this is not None.

  Returns:
    The chain, an :class:`optax.GradientTransformationExtraArgs`. Under
    :func:`decoupled_optax.with_diagnostics` it reports ``schedule``,
    ``learning_rate`` (alpha_t eta_t) and ``weight_decay`` as applied per step
    (lambda eta_t, alpha_t eta_t lambda or lambda eta_t^2, times
    ``weight_decay_factor``; with ``corrected_decay_leaves``, lambda eta_t and
    ``corrected_weight_decay`` lambda eta_t^2).

  Example:
    >>> import optax, decoupled_optax as dopt
    >>> lion_w = dopt.decoupled_chain(
    ...     optax.scale_by_lion(), learning_rate=1e-4, weight_decay=1e-5,
    ...     weight_decay_convention="paper")
  """
  return _chain(
    direction,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    schedule=schedule,
    mask=mask,
    weight_decay_convention=weight_decay_convention,
    weight_decay_factor=weight_decay_factor,
    radial_projection=radial_projection,
    cautious_weight_decay=cautious_weight_decay,
    corrected_decay_leaves=corrected_decay_leaves,
    angular_equilibrium_factor=(
      direction.angular_equilibrium_factor() if isinstance(direction, Direction) else None
    ),
  )


decoupled_chain = public_factory(_decoupled_chain, "decoupled_chain")


def _as_schedule(decay: Any, varies: bool) -> Any:
  """``decay`` as a schedule where it varies with the step, else its value."""
  return decay if varies else decay(jnp.zeros([], jnp.int32))


def _check_corrected_leaves(
  corrected_decay_leaves: Any, convention: Convention, radial_projection: Any
) -> bool:
  """Whether the corrected decay applies to some leaves only; raises where it cannot."""
  if corrected_decay_leaves is None:
    return False
  if not convention.decay_follows_schedule:
    raise ValueError(
      "corrected_decay_leaves must be None unless weight_decay_convention='corrected', got "
      f"{describe(corrected_decay_leaves)} in the {convention.name!r} convention."
    )
  if isinstance(corrected_decay_leaves, str) and corrected_decay_leaves == "scale_invariant":
    if radial_projection is None:
      raise ValueError(
        "corrected_decay_leaves='scale_invariant' needs AdamP's test, so it must come with a "
        "radial projection (adamp, sgdp, or decoupled_chain(radial_projection=...)); got none. "
        "Pass a mask of the normalized layers instead."
      )
    return True
  if isinstance(corrected_decay_leaves, str):
    raise ValueError(
      "corrected_decay_leaves must be None, 'scale_invariant', a tree of bools or a function "
      f"of the params, got {describe(corrected_decay_leaves)}."
    )
  check_mask_argument(corrected_decay_leaves)
  return True


def _decay_transforms(
  uncorrected: Any, corrected: Any, mask: MaskOrFn, cautious: bool, corrected_leaves: Any
) -> optax.GradientTransformation:
  """The decay: one transform, or, where the corrected rule covers some leaves only, its split."""
  if corrected_leaves is None:
    return add_decoupled_weight_decay(uncorrected, mask, cautious=cautious)
  if isinstance(corrected_leaves, str):  # "scale_invariant"
    return add_decoupled_weight_decay(
      uncorrected, mask, cautious=cautious, projected_weight_decay=corrected
    )
  return optax.chain(
    add_decoupled_weight_decay(
      corrected, intersected_masks((mask, False), (corrected_leaves, False)), cautious=cautious
    ),
    add_decoupled_weight_decay(
      uncorrected, intersected_masks((mask, False), (corrected_leaves, True)), cautious=cautious
    ),
  )


@public_factory
def adamw(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  nesterov: bool = False,
  weight_decay_convention: WeightDecayConvention | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW with the paper's decoupled weight decay (Algorithm 2).

  .. math::

    \theta_t = \theta_{t-1} - \eta_t \left(\alpha \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
               + \lambda \theta_{t-1}\right)

  With ``weight_decay_convention="torch"`` the decay is multiplied by alpha as
  in ``torch.optim.AdamW`` and ``optax.adamw``; then
  ``adamw(lr, wd, weight_decay_convention="torch") == optax.adamw(lr, weight_decay=wd)``.
  ``"corrected"`` multiplies the decay by eta_t once more (AdamC, Defazio 2025).

  Args:
    learning_rate: alpha, the base learning rate.
    weight_decay: lambda (a scalar or a schedule), in the convention chosen
      by ``weight_decay_convention``. In the paper's (and the corrected)
      convention a value of at least ``learning_rate`` warns: it looks like a
      PyTorch value.
    b1: the decay of the first moment, as in :func:`optax.scale_by_adam`.
    b2: the decay of the second moment, as in :func:`optax.scale_by_adam`.
    eps: added to the denominator, as in :func:`optax.scale_by_adam`.
    eps_root: added inside the square root, as in :func:`optax.scale_by_adam`.
    mu_dtype: the dtype of the first moment, as in :func:`optax.scale_by_adam`.
    nu_dtype: the dtype of the second moment, which optax cannot set: it is
      updated in at least float32 and stored in this dtype after every
      update; None (default) for the params' dtype, exactly as optax.
      See :class:`decoupled_optax.AdamDirection`.
    schedule: eta_t, the schedule multiplier (e.g.
      :func:`decoupled_optax.cosine_warm_restart_schedule` for AdamWR).
    mask: leaves to decay, as in optax (pytree of bools or callable).
    nesterov: optax's NAdam direction.
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``; see
      :func:`decoupled_chain` for the math. Required unless ``weight_decay``
      is 0: without it a nonzero decay raises a ``ValueError``.
    cautious_weight_decay: decay only where the update and the parameter
      agree in sign (Chen et al. 2025); see :func:`decoupled_chain`.
    corrected_decay_leaves: with the corrected convention, which leaves get
      ``lambda eta_t^2`` (Defazio 2025's per-layer rule); see :func:`decoupled_chain`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> sched = dopt.cosine_warm_restart_schedule(1.0, first_period=100, period_mult=2)
    >>> tx = dopt.adamw(1e-3, weight_decay=2.5e-4, schedule=sched,   # AdamWR
    ...                 weight_decay_convention="paper")
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> params = optax.apply_updates(params, updates)

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, "Decoupled Weight Decay
  Regularization".
  """
  require_convention("adamw", weight_decay_convention, weight_decay, learning_rate)
  # _scale_by_adam checks its arguments.
  return _chain(
    _scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov=nesterov),
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    schedule=schedule,
    mask=mask,
    weight_decay_convention=weight_decay_convention,
    cautious_weight_decay=cautious_weight_decay,
    corrected_decay_leaves=corrected_decay_leaves,
    angular_equilibrium_factor=angular_equilibrium_factor(b1, nesterov),
  )


def _equilibrium_factor(direction: Any) -> Any:
  """The direction's angular equilibrium factor; 1 for plain SGD (no momentum)."""
  return direction.angular_equilibrium_factor() if isinstance(direction, Direction) else 1.0


def _momentum_direction(
  momentum: float, nesterov: bool, accumulator_dtype: Any | None
) -> optax.GradientTransformation | MomentumDirection:
  """PyTorch SGD momentum: a buffer of raw gradients, the rate applied afterwards."""
  if isinstance(momentum, (int, float)) and momentum == 0 and not nesterov:
    return optax.identity()
  return MomentumDirection(momentum, nesterov, accumulator_dtype)


@public_factory
def sgdw(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  *,
  nesterov: bool = False,
  accumulator_dtype: Any | None = None,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  weight_decay_convention: WeightDecayConvention | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and decoupled weight decay (SGDW, Algorithm 1).

  .. math::

    b_t = \mu b_{t-1} + g_t, \quad d_t = b_t \text{ (or } g_t + \mu b_t
    \text{ with Nesterov)}, \quad
    \theta_t = \theta_{t-1} - \eta_t (\alpha d_t + \lambda \theta_{t-1})

  The momentum buffer holds raw gradients and the learning rate is applied
  afterwards, as in ``torch.optim.SGD``, optax and the authors' ``sgd.lua``.
  The box of Algorithm 1 instead folds ``eta_t * alpha`` into the buffer
  (``m_t = mu m_{t-1} + eta_t alpha g_t``); the two agree while eta_t is
  constant and differ when the schedule changes.

  Args:
    learning_rate: alpha.
    momentum: mu in [0, 1).
    weight_decay: lambda, in the convention chosen by ``weight_decay_convention``.
    nesterov: PyTorch's Nesterov, ``d = g + mu * buf``.
    accumulator_dtype: dtype of the momentum buffer.
    schedule: eta_t, the schedule multiplier (SGDWR with warm restarts).
    mask: leaves to decay, as in optax.
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``; see
      :func:`decoupled_chain` for the math. Required unless ``weight_decay``
      is 0: without it a nonzero decay raises a ``ValueError``.
    cautious_weight_decay: decay only where the update and the parameter
      agree in sign (Chen et al. 2025); see :func:`decoupled_chain`.
    corrected_decay_leaves: with the corrected convention, which leaves get
      ``lambda eta_t^2`` (Defazio 2025's per-layer rule); see :func:`decoupled_chain`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.sgdw(0.1, momentum=0.9, weight_decay=5e-5, weight_decay_convention="paper")
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> [round(float(x), 8) for x in updates["w"]]   # -lambda * theta, not -alpha*lambda*theta
    [-5e-05, -5e-05]

  Reference: `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_, "Decoupled Weight Decay
  Regularization".
  """
  require_convention("sgdw", weight_decay_convention, weight_decay, learning_rate)
  check_unit_interval("momentum", momentum)
  check_bool("nesterov", nesterov)
  check_dtype("accumulator_dtype", accumulator_dtype)
  direction = _momentum_direction(momentum, nesterov, accumulator_dtype)
  return _chain(
    direction,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    schedule=schedule,
    mask=mask,
    weight_decay_convention=weight_decay_convention,
    cautious_weight_decay=cautious_weight_decay,
    corrected_decay_leaves=corrected_decay_leaves,
    angular_equilibrium_factor=_equilibrium_factor(direction),
  )


@public_factory
def adamp(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  nesterov: bool = False,
  channel_axis: ChannelAxis = None,
  projection_mask: ProjectionMask = None,
  axis_name: AxisName = None,
  param_specs: Any = None,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  weight_decay_convention: WeightDecayConvention | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
  cpu_kernel: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamP: Adam without the radial update component on scale-invariant weights.

  For every weight with ``ndim > 1`` whose raw gradient is (nearly)
  orthogonal to it, per output channel or as a whole (see
  :func:`decoupled_optax.detect_scale_invariance`), the radial part of Adam's
  direction is removed and the weight decay is multiplied by ``wd_ratio``:

  .. math::

    d_t = \Pi_{\theta}\left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}\right), \quad
    \theta_t = \theta_{t-1} - \eta_t (\alpha d_t + r \lambda \theta_{t-1})

  With ``weight_decay_convention="torch"`` this is the official ``adamp.AdamP``
  (whose decay is ``p *= 1 - lr * wd * r``). ``nesterov=True`` uses the
  official formula, see :func:`decoupled_optax.scale_by_adamp_nesterov`.

  Args:
    learning_rate: alpha.
    weight_decay: lambda, in the convention chosen by ``weight_decay_convention``.
    b1: the decay of Adam's first moment.
    b2: the decay of Adam's second moment.
    eps: Adam's; it also guards the projection's norms, as in the official code.
    mu_dtype: the dtype of Adam's first moment, as in :func:`adamw`.
    nu_dtype: the dtype of Adam's second moment, as in :func:`adamw`. On
      the fused CPU path, leaves whose moments are not float32 run the
      generic chain, with the same result.
    delta: threshold of the scale-invariance test (official default 0.1).
    wd_ratio: decay multiplier r on projected weights (official default 0.1;
      timm's factory uses 0.01).
    nesterov: the official AdamP Nesterov step.
    channel_axis: the output-channel axes; None (default) reads them from
      the model: axis 0 for Equinox's layers (PyTorch's layout), the last
      for Flax's kernels, the last where the tree does not say (a bare dict
      of arrays: pass 0 for PyTorch-layout arrays). An int, a tuple, a tree
      of them per leaf or a function of the params overrides; see
      :func:`decoupled_optax.detect_scale_invariance`.
    projection_mask: which leaves may be projected; None (default): every
      weight, never a bias or a normalization parameter of any rank (as the
      official code, whose biases are 1-D). ``True``: every leaf with
      ``ndim > 1``. A tree of bools or a function of the params, as optax's masks.
    axis_name: for params sharded inside ``shard_map``/``pmap``, the mapped
      axis name(s) that shard them, so that the projection's cosines and
      norms are global; see :func:`decoupled_optax.detect_scale_invariance`.
      Inside ``shard_map`` params sharded over axes it does not name raise a
      ValueError; ``axis_name=()`` computes the statistics per shard, on
      purpose. Not needed under ``jit``, nor with replicated params.
    param_specs: which of those axes shard which dims: a tree of
      ``PartitionSpec``, e.g. shard_map's ``in_specs`` of the params.
    schedule: eta_t, the schedule multiplier.
    mask: leaves to decay, as in optax.
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``; see
      :func:`decoupled_chain` for the math. Required unless ``weight_decay``
      is 0: without it a nonzero decay raises a ``ValueError``.
    cautious_weight_decay: decay only where the update and the parameter
      agree in sign (Chen et al. 2025); see :func:`decoupled_chain`.
    corrected_decay_leaves: with the corrected convention, which leaves get
      ``lambda eta_t^2`` (Defazio 2025's per-layer rule); see :func:`decoupled_chain`.
    cpu_kernel: on the CPU, run Adam's moments and the projection's
      statistics in one fused pass where the kernel was built; None (default)
      when the process has a single CPU device, True always, False never. See
      :func:`decoupled_optax.fused_scale_invariance`. Same result either way.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.adamp(1e-3, weight_decay=1e-5, weight_decay_convention="paper")
    >>> params = {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros(8)}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, "AdamP: Slowing Down
  the Slowdown for Momentum Optimizers on Scale-invariant Weights".
  """
  require_convention(
    "adamp",
    weight_decay_convention,
    weight_decay,
    learning_rate,
    decay_note=f"adamp multiplies the decay {projected_decay(wd_ratio)}.",
  )
  direction = AdamDirection(b1, b2, eps, nesterov, mu_dtype, nu_dtype)
  return _chain(
    direction,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    schedule=schedule,
    mask=mask,
    weight_decay_convention=weight_decay_convention,
    radial_projection=RadialProjection(
      delta=delta,
      wd_ratio=wd_ratio,
      eps=eps,
      channel_axis=channel_axis,
      projection_mask=projection_mask,
      axis_name=axis_name,
      param_specs=param_specs,
      cpu_kernel=cpu_kernel,
    ),
    cautious_weight_decay=cautious_weight_decay,
    corrected_decay_leaves=corrected_decay_leaves,
    angular_equilibrium_factor=_equilibrium_factor(direction),
  )


@public_factory
def sgdp(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  *,
  nesterov: bool = False,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  eps: float = 1e-8,
  channel_axis: ChannelAxis = None,
  projection_mask: ProjectionMask = None,
  axis_name: AxisName = None,
  param_specs: Any = None,
  accumulator_dtype: Any | None = None,
  schedule: optax.ScalarOrSchedule | None = None,
  mask: MaskOrFn = None,
  weight_decay_convention: WeightDecayConvention | None = None,
  cautious_weight_decay: bool = False,
  corrected_decay_leaves: Any = None,
  cpu_kernel: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGDP: momentum SGD without the radial update component on scale-invariant weights.

  .. math::

    b_t = \mu b_{t-1} + g_t, \quad d_t = \Pi_\theta(b_t \text{ or } g_t + \mu b_t), \quad
    \theta_t = \theta_{t-1} - \eta_t \left(\alpha d_t + \frac{r \lambda}{1 - \mu} \theta_{t-1}\right)

  The decay keeps the official ``1 / (1 - momentum)`` factor. Unlike the
  official ``adamp.SGDP`` without Nesterov, the momentum buffer keeps the
  unprojected momentum (clovaai's code projects it in place; timm fixed
  this). Upstream defaults momentum to 0, so does this alias; timm's factory
  uses ``nesterov=True``.

  Args:
    learning_rate: alpha.
    momentum: mu in [0, 1).
    weight_decay: lambda, in the convention chosen by ``weight_decay_convention``.
    nesterov: PyTorch's Nesterov, ``d = g + mu * buf``.
    delta: threshold of the scale-invariance test, as in :func:`adamp`.
    wd_ratio: decay multiplier on projected weights, as in :func:`adamp`.
    eps: guards the projection's norms, as in :func:`adamp`.
    channel_axis: the output-channel axes (None: read from the model), as in :func:`adamp`.
    projection_mask: which leaves may be projected (None: weights, not
      biases or normalization parameters), as in :func:`adamp`.
    axis_name: mapped axes sharding the params, as in :func:`adamp`; ``()`` computes the
      statistics per shard, on purpose.
    param_specs: the params' ``PartitionSpec`` tree, as in :func:`adamp`.
    accumulator_dtype: dtype of the momentum buffer.
    schedule: eta_t, the schedule multiplier.
    mask: leaves to decay, as in optax.
    weight_decay_convention: ``"paper"``, ``"torch"`` or ``"corrected"``; see
      :func:`decoupled_chain` for the math. Required unless ``weight_decay``
      is 0: without it a nonzero decay raises a ``ValueError``.
    cautious_weight_decay: decay only where the update and the parameter
      agree in sign (Chen et al. 2025); see :func:`decoupled_chain`.
    corrected_decay_leaves: with the corrected convention, which leaves get
      ``lambda eta_t^2`` (Defazio 2025's per-layer rule); see :func:`decoupled_chain`.
    cpu_kernel: as in :func:`adamp`, for the momentum buffer. Without
      momentum (``momentum=0``, no Nesterov) there is no buffer to fuse and
      the generic chain runs whatever it says.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.sgdp(0.1, momentum=0.9, weight_decay=1e-6, nesterov=True,
    ...                weight_decay_convention="paper")
    >>> params = {"kernel": jnp.ones((4, 8))}
    >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_; the official
  `adamp <https://github.com/clovaai/AdamP>`_ package 0.3.0, ``SGDP``.
  """
  check_unit_interval("momentum", momentum)
  require_convention(
    "sgdp",
    weight_decay_convention,
    weight_decay,
    learning_rate,
    decay_factor=1.0 / (1.0 - momentum),
    decay_note="sgdp multiplies the decay by the official 1 / (1 - momentum) (included "
    f"above), and {projected_decay(wd_ratio)}.",
  )
  check_bool("nesterov", nesterov)
  check_bool("cpu_kernel", cpu_kernel, optional=True)
  direction = _momentum_direction(momentum, nesterov, accumulator_dtype)
  if not isinstance(direction, MomentumDirection):
    cpu_kernel = None  # no buffer, so nothing for the kernel to fuse
  return _chain(
    direction,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    weight_decay_factor=1.0 / (1.0 - momentum),
    schedule=schedule,
    mask=mask,
    weight_decay_convention=weight_decay_convention,
    radial_projection=RadialProjection(
      delta=delta,
      wd_ratio=wd_ratio,
      eps=eps,
      channel_axis=channel_axis,
      projection_mask=projection_mask,
      axis_name=axis_name,
      param_specs=param_specs,
      cpu_kernel=cpu_kernel,
    ),
    cautious_weight_decay=cautious_weight_decay,
    corrected_decay_leaves=corrected_decay_leaves,
    angular_equilibrium_factor=_equilibrium_factor(direction),
  )
