r"""What the optimizer does, step by step: per-leaf norms, angular updates and AdamP's decisions.

:func:`with_diagnostics` wraps any optax transform and records, at every
update, the quantities that AdamP and the paper's decoupling are about: the
norm of each weight, of its update, the angle the update turns it by (the
effective step size of a scale-invariant weight), and, in chains that run
AdamP's projection, which view was projected and the decay multiplier. The
aliases also report the learning rate and the weight decay as applied.
:func:`read_diagnostics` finds them in any state that holds the wrapper.

The chains keep what they know in their own state: AdamP's decisions in
:class:`decoupled_optax.RadialProjectionState`, the scalars as applied in the
aliases' :class:`decoupled_optax.StepScalarsState`. The wrapper reads them
from the state it wraps and computes only the norms, on the steps it logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from decoupled_optax._projection_options import AxisName, check_axis_name
from decoupled_optax._step_scalars import StepScalarsState
from decoupled_optax._trees import leaf_positions, path_name, require_params
from decoupled_optax._validation import check_transform, describe
from decoupled_optax.projection import (
  NOT_PROJECTED,
  RadialProjectionState,
  leaf_axis_names,
  projected_channel_axes,
)
from decoupled_optax.sharding import varying_mesh_axes
from decoupled_optax.weight_decay import CautiousWeightDecayState


class DiagnosticsState(NamedTuple):
  """State of :func:`with_diagnostics`: the wrapped state and the last step's diagnostics.

  Attributes:
    inner_state: the wrapped transform's state, unchanged.
    count: the number of updates so far.
    gradient_norm: per leaf, ||g_t||, of the updates the last update was
      given (the raw gradients, for a wrapper outermost in the chain).
    weight_norm: per leaf, ||w_t||, of the params the last update was given.
    update_norm: per leaf, ||Delta w_t||.
    relative_update: per leaf, ||Delta w_t|| / ||w_t|| (0 where both are 0).
    angular_update: per weight (a leaf with ``ndim > 1`` that is not a bias
      or a normalization parameter, the leaves AdamP projects by default;
      None elsewhere), the angle between w_t and w_t + Delta w_t, in radians.
    projection: per leaf, AdamP's decision (0 not projected, 1 channel
      view, 2 whole-tensor view); None if the chain runs no projection.
    weight_decay_multiplier: per leaf, ``wd_ratio`` where projected, else 1;
      None if the chain runs no projection.
    decayed_fraction: per decayed leaf, the fraction of its coordinates the
      cautious decay decayed (:func:`decoupled_optax.add_decoupled_weight_decay`
      with ``cautious=True``); None if the chain has no cautious decay.
    scalars: the step's scalars the chain reports (the aliases:
      ``schedule``, ``learning_rate``, ``weight_decay``), possibly none.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.with_diagnostics(dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper"))
    >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> int(state.count), float(state.weight_norm["kernel"])
    (1, 2.0)
    >>> state.projection is None, round(float(state.scalars["learning_rate"]), 9)  # AdamW
    (True, 0.001)
  """

  inner_state: optax.OptState
  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)
  gradient_norm: Any
  weight_norm: Any
  update_norm: Any
  relative_update: Any
  angular_update: Any
  projection: Any
  weight_decay_multiplier: Any
  decayed_fraction: Any
  scalars: dict[str, jax.Array]


def _at_least_float32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _global_sums(products: tuple[jax.Array, ...], axes: tuple[str, ...]) -> tuple[jax.Array, ...]:
  """The sum of each product, over the mapped ``axes`` too (psum)."""
  sums = tuple(jnp.sum(p) for p in products)
  return jax.lax.psum(sums, axes) if axes else sums


def _gradient_norm(g: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  g = _at_least_float32(g)
  (g_sq,) = _global_sums((g * g,), axes)
  return jnp.sqrt(g_sq)


def _leaf_diagnostics(
  w: jax.Array, u: jax.Array, axes: tuple[str, ...]
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  r"""``(||w||, ||u||, ||u|| / ||w||, angle(w, w + u))`` from one fused reduction.

  The angle is ``atan2(sqrt(|w|^2 |u|^2 - (w.u)^2), |w|^2 + w.u)``: the
  numerator is ``|w x (w + u)|``, the denominator ``w.(w + u)``.
  """
  w, u = _at_least_float32(w), _at_least_float32(u)
  w_sq, w_dot_u, u_sq = _global_sums((w * w, w * u, u * u), axes)
  w_norm, u_norm = jnp.sqrt(w_sq), jnp.sqrt(u_sq)
  relative = jnp.where(w_norm > 0, u_norm / jnp.where(w_norm > 0, w_norm, 1), jnp.inf)
  relative = jnp.where(u_norm > 0, relative, 0.0)
  sine_part = jnp.sqrt(jnp.maximum(w_sq * u_sq - w_dot_u**2, 0.0))
  angle = jnp.arctan2(sine_part, w_sq + w_dot_u)
  return w_norm, u_norm, relative, angle


def _axes(names: Any) -> tuple[str, ...]:
  if names is None:
    return ()
  return (names,) if isinstance(names, str) else tuple(names)


def _mesh_axis_names(axis_name: AxisName, param_specs: Any) -> tuple[str, ...]:
  """Every mesh axis named by ``axis_name`` or by the ``PartitionSpec`` leaves of ``param_specs``."""
  names = list(_axes(axis_name))
  specs = jax.tree.leaves(param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for spec in specs:
    for entry in spec if isinstance(spec, PartitionSpec) else ():
      names += _axes(entry)
  return tuple(dict.fromkeys(names))


def _states_of_type(state: Any, kind: type) -> list[Any]:
  is_kind = lambda x: isinstance(x, kind)  # noqa: E731
  return [x for x in jax.tree.leaves(state, is_leaf=is_kind) if is_kind(x)]


def _kept_decisions(inner_state: Any, params: Any) -> tuple[Any, Any]:
  """AdamP's decisions of the last update, from the projections' states: ``(views, multipliers)``.

  ``(None, None)`` if the chain runs no projection.
  """
  found = _states_of_type(inner_state, RadialProjectionState)
  if not found:
    return None, None
  flat_params, treedef = leaf_positions(params)
  views = [None if p is None else jnp.full([], NOT_PROJECTED, jnp.int8) for p in flat_params]
  multipliers = [None if p is None else jnp.ones([], jnp.float32) for p in flat_params]
  for kept in found:
    if len(kept.decisions) != len(flat_params):
      raise ValueError(
        "with_diagnostics: a projection in the chain saw other params than the wrapper "
        f"({len(kept.decisions)} leaves against {len(flat_params)})."
      )
    for i, decision in enumerate(kept.decisions):
      if decision is not None and flat_params[i] is not None:
        views[i], multipliers[i] = decision.view, decision.weight_decay_multiplier
  return treedef.unflatten(views), treedef.unflatten(multipliers)


def _kept_fractions(inner_state: Any, params: Any) -> Any:
  """Cautious decay's fraction of each leaf decayed in the last update; None without it."""
  found = _states_of_type(inner_state, CautiousWeightDecayState)
  if not found:
    return None
  flat_params, treedef = leaf_positions(params)
  fractions: list[Any] = [None] * len(flat_params)
  for kept in found:  # the corrected rule's split keeps two, on disjoint leaves
    for i, fraction in enumerate(kept.decayed_fractions):
      if fraction is not None:
        fractions[i] = fraction
  return treedef.unflatten(fractions)


def _kept_scalars(inner_state: Any) -> dict[str, jax.Array]:
  """The scalars the chains applied in the last update, from their :class:`StepScalarsState`."""
  found = _states_of_type(inner_state, StepScalarsState)
  scalars: dict[str, jax.Array] = {}
  for i, kept in enumerate(found):
    suffix = "" if len(found) == 1 else f"/{i}"
    for key in StepScalarsState._fields[1:]:
      if getattr(kept, key) is not None:
        scalars[key + suffix] = getattr(kept, key)
  return scalars


class _Norms(NamedTuple):
  """The per-leaf quantities :func:`with_diagnostics` computes on the steps it logs."""

  gradient_norm: Any
  weight_norm: Any
  update_norm: Any
  relative_update: Any
  angular_update: Any


def _for_weights(params: Any, treedef: Any, flat_values: list[Any]) -> Any:
  """The values of the weights AdamP may project (not biases, norms), None elsewhere."""
  weights = projected_channel_axes(params, treedef)
  return treedef.unflatten(
    [value if axes is not None else None for value, axes in zip(flat_values, weights, strict=True)]
  )


def _zero_norms(params: Any) -> _Norms:
  flat_params, treedef = jax.tree.flatten(params)
  flat_zeros = [jnp.zeros([], jnp.float32) for _ in flat_params]
  zeros = treedef.unflatten(flat_zeros)
  return _Norms(zeros, zeros, zeros, zeros, _for_weights(params, treedef, flat_zeros))


def _norms(grads: Any, updates: Any, params: Any, axes: list[tuple[str, ...]]) -> _Norms:
  flat_params, treedef = jax.tree.flatten(params)
  flat_grads, flat_updates = treedef.flatten_up_to(grads), treedef.flatten_up_to(updates)
  per_leaf = [
    _leaf_diagnostics(w, u, a) for w, u, a in zip(flat_params, flat_updates, axes, strict=True)
  ]
  weight_norm, update_norm, relative = (
    treedef.unflatten([leaf[i] for leaf in per_leaf]) for i in range(3)
  )
  # The angle is the effective step of the weights AdamP may project (not biases, norms).
  angle = _for_weights(params, treedef, [leaf[3] for leaf in per_leaf])
  gradient_norm = treedef.unflatten(
    [_gradient_norm(g, a) for g, a in zip(flat_grads, axes, strict=True)]
  )
  as_float32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)  # noqa: E731
  return _Norms(*map(as_float32, (gradient_norm, weight_norm, update_norm, relative, angle)))


def with_diagnostics(
  inner: optax.GradientTransformation,
  *,
  every: int = 1,
  axis_name: AxisName = None,
  param_specs: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` and records what it did to each leaf, every ``every`` updates.

  For each leaf, from the gradient :math:`g_t` and the params :math:`w_t` the
  update is given and the update :math:`\Delta w_t` it returns,
  :math:`\|g_t\|` and:

  .. math::

    \|w_t\|, \quad \|\Delta w_t\|, \quad \frac{\|\Delta w_t\|}{\|w_t\|}, \quad
    \angle(w_t, w_t + \Delta w_t) = \operatorname{atan2}\left(
      \sqrt{\|w_t\|^2\|\Delta w_t\|^2 - (w_t\cdot\Delta w_t)^2},\;
      \|w_t\|^2 + w_t\cdot\Delta w_t\right)

  the last for the weights (leaves with ``ndim > 1`` that are not biases or
  normalization parameters, see :func:`decoupled_optax.detect_scale_invariance`):
  the effective step size of a scale-invariant weight (Heo et al. 2021).

  These norms are computed on the logging steps, those whose count ``t`` (the
  number of updates before) has ``t % every == 0``, the first included; in
  between the state keeps the last logged values. On a logging step the
  update is computed a second time, inside a ``lax.cond``, for the norms, so
  that the update the wrapper returns is the unwrapped one bit for bit. The
  other steps still cost more than the unwrapped update on the CPU (XLA copies
  the buffers the cond reads; see ``docs/performance.md``).

  What the chain knows is read, at every update, from the state it returns:
  in chains that run AdamP's projection (:func:`decoupled_optax.adamp`,
  :func:`decoupled_optax.sgdp`, :func:`decoupled_optax.project_out_radial`)
  which view was projected and the decay multiplier; in the aliases'
  chains the schedule multiplier eta_t, the learning rate and the weight decay
  as applied (see :func:`decoupled_optax.decoupled_chain`). They describe the
  chain's last update, also around ``optax.MultiSteps``, where that is the last
  update the accumulated gradients made. Read everything with :func:`read_diagnostics`.

  Args:
    inner: any optax transform.
    every: a Python int >= 1: the norms are computed on every ``every``-th update.
    axis_name: under ``shard_map`` with sharded params, the mapped axes that
      shard them, as for :func:`decoupled_optax.detect_scale_invariance`,
      so that the norms are global (psum). Not needed under ``jit``, where
      GSPMD reduces globally, nor with replicated params.
    param_specs: under ``shard_map``, the params' ``PartitionSpec`` tree, as
      for :func:`decoupled_optax.detect_scale_invariance`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`DiagnosticsState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.with_diagnostics(
    ...     dopt.adamp(1e-3, weight_decay=1e-4, weight_decay_convention="paper"), every=10)
    >>> params = {"kernel": jnp.ones((3, 4))}
    >>> # orthogonal to every output channel (column) of the kernel, as behind BatchNorm
    >>> grads = {"kernel": jnp.array([[1.0, -1, 0, 0], [0, 1, -1, 0], [-1, 0, 1, 0]])}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> d = dopt.read_diagnostics(state)
    >>> int(d["projection/kernel"]), round(float(d["learning_rate"]), 9)
    (1, 0.001)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_ (effective step
  sizes); `Loshchilov & Hutter, ICLR 2019 <https://arxiv.org/abs/1711.05101>`_ (the decay as
  applied).
  """
  check_transform("inner", inner)
  if isinstance(every, bool) or not isinstance(every, int):
    raise TypeError(f"every must be a Python int >= 1, got {describe(every)}.")
  if every < 1:
    raise ValueError(f"every must be a Python int >= 1, got {describe(every)}.")
  check_axis_name(axis_name)
  inner = optax.with_extra_args_support(inner)
  named_axes = frozenset(_mesh_axis_names(axis_name, param_specs))

  def leaf_axes(params: Any) -> list[tuple[str, ...]]:
    flat, treedef = jax.tree.flatten(params)
    for leaf in flat:
      if varying_mesh_axes(leaf) - named_axes:
        raise ValueError(
          f"with_diagnostics: a param varies over the mesh axes "
          f"{sorted(varying_mesh_axes(leaf) - named_axes)}, which the wrapper does not reduce "
          "over; pass the same axis_name (and param_specs) to with_diagnostics as to the "
          "optimizer."
        )
    if axis_name is None and param_specs is None:
      return [()] * len(flat)
    names = leaf_axis_names(treedef, flat, params, axis_name, param_specs)
    # Without specs, only the leaves the projection treats (ndim > 1) are
    # taken as sharded over axis_name; the rest as replicated.
    return [
      _axes(reduce) + _axes(channel) if (param_specs is not None or leaf.ndim > 1) else ()
      for leaf, (reduce, channel) in zip(flat, names, strict=True)
    ]

  def init_fn(params: optax.Params) -> DiagnosticsState:
    inner_state = inner.init(params)
    projection, multiplier = _kept_decisions(inner_state, params)
    return DiagnosticsState(
      inner_state=inner_state,
      count=jnp.zeros([], jnp.int32),
      **_zero_norms(params)._asdict(),
      projection=projection,
      weight_decay_multiplier=multiplier,
      decayed_fraction=_kept_fractions(inner_state, params),
      scalars=_kept_scalars(inner_state),
    )

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    if not isinstance(state, DiagnosticsState):
      raise TypeError(
        f"with_diagnostics: state must be the DiagnosticsState its init returned, got {describe(state)}."
      )
    params = require_params(params)
    axes = leaf_axes(params)
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

    def logged(_: Any) -> _Norms:
      # The update again, for the norms only: the one returned stays fusable
      # into the parameter write, and identical to the unwrapped one.
      recomputed, _ = inner.update(updates, state.inner_state, params, **extra_args)
      return _norms(updates, recomputed, params, axes)

    kept = _Norms(*(getattr(state, field) for field in _Norms._fields))
    norms = jax.lax.cond(state.count % every == 0, logged, lambda _: kept, None)
    projection, multiplier = _kept_decisions(inner_state, params)
    new_state = DiagnosticsState(
      inner_state=inner_state,
      count=jnp.asarray(optax.safe_increment(state.count)),
      **norms._asdict(),
      projection=projection,
      weight_decay_multiplier=multiplier,
      decayed_fraction=_kept_fractions(inner_state, params),
      scalars=_kept_scalars(inner_state),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _unwrap_variables(tree: Any) -> Any:
  """Flax NNX wraps the arrays of ``nnx.Optimizer.opt_state`` in variables: their values."""
  is_variable = lambda x: callable(getattr(type(x), "get_value", None))  # noqa: E731
  return jax.tree.map(lambda x: x.get_value() if is_variable(x) else x, tree, is_leaf=is_variable)


def _diagnostics_states(state: Any) -> list[DiagnosticsState]:
  is_diagnostics = lambda x: isinstance(x, DiagnosticsState)  # noqa: E731
  found = [x for x in jax.tree.leaves(state, is_leaf=is_diagnostics) if is_diagnostics(x)]
  if not found and hasattr(state, "opt_state"):  # flax TrainState, nnx.Optimizer
    return _diagnostics_states(state.opt_state)
  return found


def _flat_with_names(tree: Any) -> list[tuple[str, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(path_name(path), leaf) for path, leaf in leaves]


def _read_one(state: DiagnosticsState) -> dict[str, jax.Array]:
  state = _unwrap_variables(state._replace(inner_state=None))
  out: dict[str, jax.Array] = {"count": jnp.asarray(state.count)}
  out.update(state.scalars)
  per_leaf: Mapping[str, Any] = {
    "gradient_norm": state.gradient_norm,
    "weight_norm": state.weight_norm,
    "update_norm": state.update_norm,
    "relative_update": state.relative_update,
    "angular_update": state.angular_update,
    "projection": state.projection,
    "weight_decay_multiplier": state.weight_decay_multiplier,
    "decayed_fraction": state.decayed_fraction,
  }
  for quantity, tree in per_leaf.items():
    if tree is not None:
      for name, value in _flat_with_names(tree):
        out[f"{quantity}/{name}"] = value
  angles = dict(_flat_with_names(state.angular_update))
  if state.projection is not None:
    projected = {n: v for n, v in _flat_with_names(state.projection) if n in angles}
    weights = [jnp.asarray(projected[n] > 0, jnp.float32) for n in angles]
  else:
    weights = [jnp.ones([], jnp.float32) for _ in angles]
  if angles:
    total = sum(weights)
    mean = sum(w * a for w, a in zip(weights, angles.values(), strict=True)) / jnp.maximum(
      total, 1.0
    )
    out["summary/mean_angular_update"] = jnp.asarray(mean)
    if state.projection is not None:
      out["summary/fraction_projected"] = jnp.asarray(total / len(angles))
    out.update(_equilibrium(state, angles, weights))
  return out


def _equilibrium(
  state: DiagnosticsState, angles: dict[str, jax.Array], weights: list[jax.Array]
) -> dict[str, jax.Array]:
  r"""The angular updates predicted at rotational equilibrium, and the measured/predicted ratio.

  For a scale-invariant weight decayed by ``d`` per step, Kosson et al. (2024)
  predict ``sqrt(2 d c)``, with ``c`` from the direction
  (:func:`decoupled_optax.angular_equilibrium_factor`: ``(1 - b) / (1 + b)``
  for Adam and heavy-ball momentum, 1 for plain SGD), which the aliases keep
  in ``angular_equilibrium_factor``; ``c = 1`` on the weights AdamP/SGDP
  projected, whose norm the projection keeps from growing through momentum's
  lag. ``d`` is the step's
  ``weight_decay`` times the leaf's ``weight_decay_multiplier`` (AdamP's
  ``wd_ratio``), and ``corrected_weight_decay`` on the leaves AdamP projected
  where the corrected rule covers some leaves only.
  """
  scalars = state.scalars
  if "angular_equilibrium_factor" not in scalars or "weight_decay" not in scalars:
    return {}
  multipliers = dict(_flat_with_names(state.weight_decay_multiplier or {}))
  views = dict(_flat_with_names(state.projection or {}))
  out: dict[str, jax.Array] = {}
  ratios, ratio_weights = [], []
  for (name, angle), weight in zip(angles.items(), weights, strict=True):
    decay = scalars["weight_decay"]
    if "corrected_weight_decay" in scalars and name in views:
      decay = jnp.where(views[name] > 0, scalars["corrected_weight_decay"], decay)
    decay = decay * multipliers.get(name, 1.0)
    # The projection removes the radial part that momentum's lag adds, so a projected weight's
    # norm grows by |update|^2 alone: c = 1 there, whatever the direction.
    factor = scalars["angular_equilibrium_factor"]
    if name in views:
      factor = jnp.where(views[name] > 0, 1.0, factor)
    predicted = jnp.sqrt(2 * decay * factor)
    out[f"equilibrium_angular_update/{name}"] = predicted
    ratios.append(jnp.where(predicted > 0, angle / jnp.where(predicted > 0, predicted, 1), 0.0))
    ratio_weights.append(weight * (predicted > 0))
  total = sum(ratio_weights)
  out["summary/equilibrium_ratio"] = jnp.asarray(
    sum(w * r for w, r in zip(ratio_weights, ratios, strict=True)) / jnp.maximum(total, 1.0)
  )
  return out


def read_diagnostics(state: Any) -> dict[str, jax.Array]:
  """The diagnostics of the last update, as a flat ``dict[str, jax.Array]`` for any metrics writer.

  Keys:

  * per leaf, ``"<quantity>/<leaf path>"`` with the path ``/``-joined, e.g.
    ``"angular_update/conv1/kernel"``, for the quantities of
    :class:`DiagnosticsState`;
  * the step's scalars: ``"count"`` and what the chain reports
    (``"schedule"``, ``"learning_rate"``, ``"weight_decay"``);
  * ``"summary/mean_angular_update"``: the mean angle over the projected
    leaves, or over the weights if the chain does not project (0 if there
    are none); ``"summary/fraction_projected"``: the fraction of the weights
    (leaves with ``ndim > 1``, not biases or normalization parameters) that
    were projected;
  * with cautious decay, ``"decayed_fraction/<leaf path>"``;
  * in the aliases' chains (Adam or momentum directions),
    ``"equilibrium_angular_update/<weight path>"``: the angular update that
    rotational equilibrium predicts, ``sqrt(2 d c)`` (Kosson et al. 2024;
    ``d`` the leaf's decay per step, ``c`` the direction's
    ``angular_equilibrium_factor``, 1 on the weights AdamP projected), beside the measured
    ``angular_update``; and ``"summary/equilibrium_ratio"``, the mean of
    measured / predicted over the projected weights (over the weights if the
    chain does not project). A weight near 1 has reached equilibrium. The
    prediction assumes the weight is scale invariant and decayed (a weight the
    mask leaves undecayed has none to reach) and ignores cautious decay's
    gating; with a mask for ``corrected_decay_leaves`` it takes the corrected
    decay on the leaves AdamP projected.

  Args:
    state: any state that holds a :func:`with_diagnostics` state: nested in
      chains, ``optax.MultiSteps``, ``inject_hyperparams``; a flax
      ``TrainState`` or its ``opt_state``; an ``nnx.Optimizer`` or its
      ``opt_state``. With several wrappers, each one's keys are prefixed by
      its index, ``"0/..."``.

  Returns:
    A dict of scalar arrays (works under ``jit`` as well).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> tx = optax.MultiSteps(dopt.with_diagnostics(optax.sgd(0.1)), every_k_schedule=1)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> _, state = tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(params), params)
    >>> float(dopt.read_diagnostics(state)["weight_norm/w"])
    5.0
  """
  found = _diagnostics_states(state)
  if not found:
    raise ValueError(
      "read_diagnostics: state must hold the state of an optimizer built with "
      f"decoupled_optax.with_diagnostics(tx), got {describe(state)}."
    )
  if len(found) == 1:
    return _read_one(found[0])
  return {f"{i}/{k}": v for i, one in enumerate(found) for k, v in _read_one(one).items()}
