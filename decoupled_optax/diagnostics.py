r"""What the optimizer does, step by step: per-leaf norms, angular updates and AdamP's decisions.

:func:`with_diagnostics` wraps any optax transform and records, at every
update, the quantities that AdamP and the paper's decoupling are about: the
norm of each weight, of its update, the angle the update turns it by (the
effective step size of a scale-invariant weight), and, in chains that run
AdamP's projection, which view was projected and the decay multiplier. The
aliases also report the learning rate and the weight decay as applied.
:func:`read_diagnostics` finds them in any state that holds the wrapper.

The chains report what they know through :mod:`decoupled_optax._recording`;
without the wrapper nothing is recorded or computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from decoupled_optax._recording import NOT_PROJECTED, Recording, open_recording
from decoupled_optax._trees import path_name, require_params
from decoupled_optax._validation import check_transform, describe
from decoupled_optax.projection import (
  AxisName,
  check_axis_name,
  leaf_axis_names,
  projected_channel_axes,
)


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
  scalars: dict[str, jax.Array]


def _merge_per_leaf(trees: list[Any], params: Any, fill: Any, dtype: Any) -> Any:
  """One value per param leaf from the trees the chain(s) recorded (``fill`` where none did).

  Recorded trees have the params' structure, with ``None`` (or optax's
  ``MaskedNode``, under ``multi_transform``) where a chain did not see a leaf.
  A ``None`` param (``eqx.filter`` leaves them for non-array fields) may
  have any record, and stays ``None``.
  """
  flat_params, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
  flat_merged = [None if p is None else jnp.full([], fill, dtype) for p in flat_params]
  for tree in trees:
    flat = treedef.flatten_up_to(tree)
    flat_merged = [
      m
      if m is None or v is None or isinstance(v, optax.MaskedNode)
      else jnp.asarray(v).astype(dtype)
      for m, v in zip(flat_merged, flat, strict=True)
    ]
  return treedef.unflatten(flat_merged)


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


def with_diagnostics(
  inner: optax.GradientTransformation,
  *,
  axis_name: AxisName = None,
  param_specs: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` and records, at every update, what it did to each leaf.

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
  the effective step size of a
  scale-invariant weight (Heo et al. 2021). In chains that run AdamP's
  projection (:func:`decoupled_optax.adamp`, :func:`decoupled_optax.sgdp`,
  :func:`decoupled_optax.detect_scale_invariance`) it also records which view
  was projected and the decay multiplier; the aliases report the schedule
  multiplier eta_t, the learning rate as applied and the weight decay as
  applied per step (see :func:`decoupled_optax.adamw`). The wrapped
  transform's updates and state are unchanged. Read them with
  :func:`read_diagnostics`.

  The scalars are evaluated at the wrapper's count, the number of updates
  it has seen. Put the wrapper inside ``optax.MultiSteps`` and
  ``optax.apply_if_finite`` (not around them), so that each of its updates is
  one update of the chain: around ``MultiSteps`` the chain runs inside a
  ``lax.cond`` and reports nothing, and only the norms are recorded.

  Args:
    inner: any optax transform.
    axis_name: under ``shard_map`` with sharded params, the mapped axes that
      shard them, as for :func:`decoupled_optax.detect_scale_invariance`,
      so that the norms are global (psum). Not needed under ``jit``, where
      GSPMD reduces globally, nor with replicated params.
    param_specs: under ``shard_map``, the params' ``PartitionSpec`` tree, as
      for :func:`decoupled_optax.detect_scale_invariance`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`DiagnosticsState`. Its ``init`` traces ``inner.update`` once
    (``jax.eval_shape``, nothing runs) to learn what the chain reports.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.with_diagnostics(
    ...     dopt.adamp(1e-3, weight_decay=1e-4, weight_decay_convention="paper"))
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
  check_axis_name(axis_name)
  inner = optax.with_extra_args_support(inner)

  def leaf_axes(treedef: Any, flat: list[Any], params: Any) -> list[tuple[str, ...]]:
    if axis_name is None and param_specs is None:
      return [()] * len(flat)
    names = leaf_axis_names(treedef, flat, params, axis_name, param_specs)
    # Without specs, only the leaves the projection treats (ndim > 1) are
    # taken as sharded over axis_name; the rest as replicated.
    return [
      _axes(reduce) + _axes(channel) if (param_specs is not None or leaf.ndim > 1) else ()
      for leaf, (reduce, channel) in zip(flat, names, strict=True)
    ]

  def diagnose(
    grads: Any, updates: Any, params: Any, count: jax.Array, recording: Recording
  ) -> dict[str, Any]:
    flat_params, treedef = jax.tree.flatten(params)
    axes = leaf_axes(treedef, flat_params, params)
    flat_grads, flat_updates = treedef.flatten_up_to(grads), treedef.flatten_up_to(updates)
    per_leaf = [
      _leaf_diagnostics(w, u, a) for w, u, a in zip(flat_params, flat_updates, axes, strict=True)
    ]
    weight_norm, update_norm, relative = (
      treedef.unflatten([leaf[i] for leaf in per_leaf]) for i in range(3)
    )
    # The angle is the effective step of the weights AdamP may project (not biases, norms).
    weights = projected_channel_axes(params, treedef)
    angle = treedef.unflatten(
      [leaf[3] if axes is not None else None for leaf, axes in zip(per_leaf, weights, strict=True)]
    )
    gradient_norm = treedef.unflatten(
      [_gradient_norm(g, a) for g, a in zip(flat_grads, axes, strict=True)]
    )
    projection = multiplier = None
    if recording.views:
      projection = _merge_per_leaf(recording.views, params, NOT_PROJECTED, jnp.int8)
      multiplier = _merge_per_leaf(recording.multipliers, params, 1.0, jnp.float32)
    scalars: dict[str, jax.Array] = {}
    for i, step_scalars in enumerate(recording.step_scalars):
      suffix = "" if len(recording.step_scalars) == 1 else f"/{i}"
      for key, value in step_scalars(count).items():
        scalars[key + suffix] = jnp.asarray(value, jnp.float32)
    return dict(
      gradient_norm=gradient_norm,
      weight_norm=weight_norm,
      update_norm=update_norm,
      relative_update=relative,
      angular_update=angle,
      projection=projection,
      weight_decay_multiplier=multiplier,
      scalars=scalars,
    )

  def recorded_update(
    updates: Any, state: Any, params: Any, count: jax.Array, extra_args: dict[str, Any]
  ) -> tuple[Any, Any, dict[str, Any]]:
    with open_recording() as recording:
      new_updates, new_state = inner.update(updates, state, params, **extra_args)
      diagnostics = diagnose(updates, new_updates, params, count, recording)
    return new_updates, new_state, diagnostics

  def reported_structure(params: Any, inner_state: Any) -> Any:
    """What the chain reports, from an abstract update: the state's structure at init.

    The update may name mapped axes (``shard_map``); outside of them, they
    are bound here with size 1, which changes no shape.
    """
    count = jnp.zeros([], jnp.int32)
    abstract = lambda p, s: recorded_update(p, s, p, count, {})[2]  # noqa: E731
    mesh_axes = _mesh_axis_names(axis_name, param_specs)
    for name in mesh_axes:
      abstract = jax.vmap(abstract, in_axes=None, axis_size=1, axis_name=name)
    try:
      shapes = jax.eval_shape(abstract, params, inner_state)
    except NameError as error:
      raise ValueError(
        "with_diagnostics(tx).init traces tx.update once, and tx.update names a mapped axis "
        f"that the wrapper does not know ({error}); pass the same axis_name (and "
        "param_specs) to with_diagnostics as to the optimizer."
      ) from error
    return jax.tree.map(lambda s: jnp.zeros(s.shape[len(mesh_axes) :], s.dtype), shapes)

  def init_fn(params: optax.Params) -> DiagnosticsState:
    inner_state = inner.init(params)
    zeros = reported_structure(params, inner_state)
    return DiagnosticsState(inner_state=inner_state, count=jnp.zeros([], jnp.int32), **zeros)

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
    new_updates, inner_state, diagnostics = recorded_update(
      updates, state.inner_state, params, state.count, extra_args
    )
    new_state = DiagnosticsState(
      inner_state=inner_state,
      count=jnp.asarray(optax.safe_increment(state.count)),
      **diagnostics,
    )
    if jax.tree.structure(new_state._replace(inner_state=None)) != jax.tree.structure(
      state._replace(inner_state=None)
    ):
      raise ValueError(
        "with_diagnostics: the wrapped chain reported different quantities than at init "
        "(was the wrapper initialized with other params, or does the chain need extra "
        "arguments at update?)."
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
    were projected.

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
