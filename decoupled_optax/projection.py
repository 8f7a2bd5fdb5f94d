"""AdamP/SGDP's projection: remove the radial part of updates to scale-invariant weights.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
Scale-invariant Weights", ICLR 2021, https://arxiv.org/abs/2006.08217.

Design. The test for scale invariance needs the *raw* gradient, but a
projection placed after ``optax.scale_by_adam`` in a chain only sees Adam's
direction, and the weight-decay step further down must learn which leaves
were projected. So the work is split in two:

* :func:`detect_scale_invariance` wraps a chain. It runs the cosine test on
  the raw gradients and the params, and passes its findings to every
  transform of the chain through optax's extra arguments:
  ``radial_projectors`` (how to project each leaf) and
  ``weight_decay_multipliers`` (``wd_ratio`` where a leaf was projected).
* :func:`project_out_radial` sits anywhere in that chain, after the
  direction transform (adam, momentum, lion, ...), and removes the radial
  component using the projector. :func:`decoupled_optax.add_decoupled_weight_decay`
  reads the multipliers.

For example, AdamP is::

  detect_scale_invariance(optax.chain(
      optax.scale_by_adam(), project_out_radial(),
      add_decoupled_weight_decay(wd), optax.scale_by_learning_rate(lr)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from decoupled_optax._layout import LeafRole, leaf_roles, normalized_axes
from decoupled_optax._projection_options import (
  AxisName,
  RadialProjection,
  check_projection,
  is_axes,
  is_mask_value,
)
from decoupled_optax._trees import (
  check_real_params,
  check_same_structure,
  leaf_positions,
  path_name,
  require_params,
)
from decoupled_optax._validation import (
  check_transform,
  describe,
)
from decoupled_optax.sharding import check_mesh_axes_named, reduced_over_varying_axes
from decoupled_optax.weight_decay import RADIAL_PROJECTORS, WEIGHT_DECAY_MULTIPLIERS

# AdamP's decision per leaf, as RadialProjectionState keeps it.
NOT_PROJECTED, CHANNEL_VIEW, WHOLE_VIEW = 0, 1, 2


class RadialProjector(NamedTuple):
  """How :func:`project_out_radial` projects one leaf; built by the detection.

  The projection is ``u - w * c`` with, per output channel,
  ``c = channel_weight * (w.u)_channel + whole_weight * (w.u)_total``. At
  most one weight is non-zero: ``1 / (||w_channel|| + eps)^2`` if the channel
  view is scale invariant, else ``1 / (||w|| + eps)^2`` if the whole tensor
  is, else both are 0 and the update passes unchanged.

  Attributes:
    channel_weight: per-channel weights, shaped to broadcast against the leaf.
    whole_weight: scalar weight of the whole-tensor view.
    reduce_axes: every axis but the channel axis (static).
    axis_name: mapped axes that shard the reduced (non-channel) dims: the
      per-channel sums are psum'd over them; None if none (static).
    channel_axis_name: mapped axes that shard the channel dim: the
      whole-tensor sum of the per-channel sums is psum'd over them; None if
      none (static).
    view: the view found scale invariant: 0 none, 1 the channel view, 2 the
      whole tensor (int8 scalar), for :func:`decoupled_optax.with_diagnostics`.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> w = {"kernel": jnp.array([[1.0, 2.0], [2.0, -1.0]]),
    ...      "bias": jnp.ones(2)}
    >>> g = {"kernel": jnp.array([[2.0, 1.0], [-1.0, 2.0]]),  # w.g = 0
    ...      "bias": jnp.ones(2)}
    >>> projectors, _ = dopt.scale_invariance(g, w)
    >>> p = projectors["kernel"]  # the channel view (1), per column
    >>> int(p.view), p.channel_weight.shape, float(p.whole_weight)
    (1, (1, 2), 0.0)
    >>> round(float(p.channel_weight[0, 0]), 6)  # 1 / ||w[:, 0]||^2
    0.2
  """

  channel_weight: jax.Array
  whole_weight: jax.Array
  reduce_axes: tuple[int, ...]
  axis_name: AxisName
  channel_axis_name: AxisName = None
  view: jax.Array | None = None

  def coefficient(self, update: jax.Array, param: jax.Array) -> jax.Array:
    """``c`` per channel, shaped to broadcast against the leaf (inputs in the statistics dtype)."""
    w_dot_u = _global_sum(
      jnp.sum(param * update, axis=self.reduce_axes, keepdims=True), self.axis_name
    )
    # Without the barrier XLA turns the total back into a full-size reduction.
    w_dot_u = jax.lax.optimization_barrier(w_dot_u)
    w_dot_u_total = _global_sum(jnp.sum(w_dot_u), self.channel_axis_name)
    return self.channel_weight * w_dot_u + self.whole_weight * w_dot_u_total


class _KnownCoefficientProjector(NamedTuple):
  """A projector whose coefficient the detection knew: the fused CPU pass took ``w.u`` with the
  other statistics, so :func:`project_out_radial` reduces nothing.

  Attributes:
    known_coefficient: ``c`` per channel, shaped to broadcast against the leaf.
    view: as in :class:`RadialProjector`.
  """

  known_coefficient: jax.Array
  view: jax.Array

  def coefficient(self, update: jax.Array, param: jax.Array) -> jax.Array:
    del update, param
    return self.known_coefficient


# What project_out_radial receives per projected leaf.
_Projector = RadialProjector | _KnownCoefficientProjector


class ChannelStatistics(NamedTuple):
  """This shard's per-channel sums of one leaf, from which its projector follows.

  Attributes:
    g_dot_w: the gradient times the weight.
    g_sq: the squared gradient.
    w_sq: the squared weight.
    w_dot_u: the weight times the direction, when the sums were taken with
      the direction (the fused CPU pass); then the projector knows its
      coefficient. None otherwise.
  """

  g_dot_w: jax.Array
  g_sq: jax.Array
  w_sq: jax.Array
  w_dot_u: jax.Array | None = None


def _statistics_dtype(dtype: jnp.dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _global_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _global_max(x: jax.Array, axis_name: AxisName) -> jax.Array:
  return x if axis_name is None else jax.lax.pmax(x, axis_name)


def _axis_names(names: Any) -> tuple[str, ...]:
  if names is None:
    return ()
  if isinstance(names, str):
    return (names,)
  return tuple(names)


def _mapped_size(axis_name: AxisName) -> int:
  """How many shards the mapped axes split a dim into (1 without axes)."""
  return math.prod(jax.lax.axis_size(name) for name in _axis_names(axis_name))


def _spec_axis_names(
  spec: Any, ndim: int, channel_axes: tuple[int, ...]
) -> tuple[AxisName, AxisName]:
  """``(reduce-dim axes, channel-dim axes)`` of one leaf from its PartitionSpec."""
  entries = tuple(spec) if spec is not None else ()
  if len(entries) > ndim:
    raise ValueError(f"param_specs: {spec} has more entries than the leaf has dims ({ndim}).")
  entries += (None,) * (ndim - len(entries))
  if any(e is PartitionSpec.UNCONSTRAINED for e in entries):
    raise ValueError(f"param_specs: {spec} is unconstrained; name the sharding axes.")
  reduce_names = tuple(
    n for d, e in enumerate(entries) if d not in channel_axes for n in _axis_names(e)
  )
  channel_names = tuple(n for d in channel_axes for n in _axis_names(entries[d]))
  return reduce_names or None, channel_names or None


def _specs_per_leaf(param_specs: Any, params: Any) -> Any:
  """Broadcasts a prefix tree of PartitionSpecs (as shard_map's in_specs) to the params."""
  is_spec = lambda x: x is None or isinstance(x, PartitionSpec)  # noqa: E731
  return jax.tree.map(
    lambda spec, subtree: jax.tree.map(
      lambda _: PartitionSpec() if spec is None else spec, subtree, is_leaf=lambda x: x is None
    ),
    param_specs,
    params,
    is_leaf=is_spec,
  )


def _reduce_axes(ndim: int, channel_axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(a for a in range(ndim) if a not in channel_axes)


def _channel_count(shape: tuple[int, ...], channel_axes: tuple[int, ...]) -> int:
  return math.prod(shape[a] for a in channel_axes)


def is_projected(param: jax.Array) -> bool:
  """Whether the test can run on a leaf: not on 0-d or 1-D leaves (one row per value), nor empty ones."""
  return param.ndim > 1 and param.size > 0


def _channel_statistics(
  grad: jax.Array, param: jax.Array, channel_axes: tuple[int, ...]
) -> ChannelStatistics:
  """This shard's per-channel ``g.w, |g|^2, |w|^2`` of a projected leaf, one entry per channel."""
  reduce_axes = _reduce_axes(param.ndim, channel_axes)
  dtype = _statistics_dtype(param.dtype)
  g, w = grad.astype(dtype), param.astype(dtype)
  # Each statistic is a reduction over the leading axes with its product
  # fused in; the whole-tensor ones are their sums. The barriers keep XLA from
  # (a) merging ``sum(sum(g * w, axes))`` back into a second full-size
  # reduction, and (b) sharing ``g * g`` with Adam's ``g**2``, which would
  # write g**2 to a param-sized temporary.
  g_squared_input = jax.lax.optimization_barrier(g)
  sums = (
    jnp.sum(g * w, axis=reduce_axes),
    jnp.sum(g_squared_input * g_squared_input, axis=reduce_axes),
    jnp.sum(w * w, axis=reduce_axes),
  )
  return ChannelStatistics(*jax.lax.optimization_barrier(tuple(x.reshape(-1) for x in sums)))


def _projectors_from_statistics(
  statistics: Sequence[ChannelStatistics],
  shapes: Sequence[tuple[int, ...]],
  *,
  delta: float,
  wd_ratio: Any,
  eps: float,
  channel_axes: Sequence[tuple[int, ...]],
  axis_name: AxisName,
  channel_axis_name: AxisName = None,
) -> list[tuple[_Projector, jax.Array]]:
  """The official ``_projection`` test of several leaves from their per-channel statistics.

  The leaves' small per-channel math runs batched, padded to the widest
  leaf, so XLA compiles a few fusions for all of them rather than several
  per leaf.

  Args:
    statistics: per leaf, this shard's per-channel sums; all with ``w.u``
      or all without. With it the projectors carry their coefficient and
      :func:`project_out_radial` needs no reduction of its own.
    shapes: the leaves' (shard) shapes. ``axis_name`` names the mapped axes
      that shard their non-channel dims, ``channel_axis_name`` those that
      shard the channel dim. Per-channel sums are psum'd over the former;
      the max over channels and the whole-tensor sums are reduced over the
      latter.
    delta, wd_ratio, eps: as in :func:`detect_scale_invariance`.
    channel_axes: per leaf, its output-channel axes (see :func:`projected_channel_axes`).

  Returns:
    ``(projector, decay multiplier)`` per leaf.
  """
  knows_w_dot_u = statistics[0].w_dot_u is not None
  rows = [jnp.stack([x for x in leaf if x is not None]) for leaf in statistics]
  widths = [r.shape[-1] for r in rows]
  widest = max(widths)
  padded = [
    r if r.shape[-1] == widest else jnp.pad(r, ((0, 0), (0, widest - r.shape[-1]))) for r in rows
  ]
  stacked = _global_sum(jnp.stack(padded), axis_name)  # (leaves, statistics, widest)
  g_dot_w, g_sq, w_sq = stacked[:, 0], stacked[:, 1], stacked[:, 2]

  def cosine(dot: jax.Array, a_sq: jax.Array, b_sq: jax.Array) -> jax.Array:
    # torch.nn.functional.cosine_similarity clamps each norm by eps.
    return jnp.abs(dot) / (jnp.maximum(jnp.sqrt(a_sq), eps) * jnp.maximum(jnp.sqrt(b_sq), eps))

  # Global sizes: a shard's row length times the shards of the reduced dims.
  channels = np.array(
    [_channel_count(shape, axes) for shape, axes in zip(shapes, channel_axes, strict=True)]
  )
  row_length = np.array([math.prod(shape) for shape in shapes]) // channels
  row_length = row_length * _mapped_size(axis_name)
  size = row_length * channels
  size = size * _mapped_size(channel_axis_name)
  channel_cosine = cosine(g_dot_w, g_sq, w_sq)
  if min(widths) < widest:  # padding channels must not win the max (0/0 if eps == 0)
    real_channel = jnp.arange(widest) < np.array(widths)[:, None]
    channel_cosine = jnp.where(real_channel, channel_cosine, 0.0)
  max_cosine = _global_max(jnp.max(channel_cosine, axis=1), channel_axis_name)
  channel_invariant = max_cosine < delta / np.sqrt(row_length)
  g_dot_w_total, g_sq_total, w_sq_total = _global_sum(
    jnp.sum(stacked[:, :3], axis=2), channel_axis_name
  ).T
  whole_invariant = cosine(g_dot_w_total, g_sq_total, w_sq_total) < delta / np.sqrt(size)
  zero = jnp.zeros([], stacked.dtype)
  channel_weight = jnp.where(channel_invariant[:, None], 1.0 / (jnp.sqrt(w_sq) + eps) ** 2, zero)
  whole_weight = jnp.where(
    ~channel_invariant & whole_invariant, 1.0 / (jnp.sqrt(w_sq_total) + eps) ** 2, zero
  )
  multipliers = jnp.where(channel_invariant | whole_invariant, wd_ratio, 1.0).astype(stacked.dtype)
  views = jnp.where(
    channel_invariant, CHANNEL_VIEW, jnp.where(whole_invariant, WHOLE_VIEW, NOT_PROJECTED)
  ).astype(jnp.int8)
  coefficients = None
  if knows_w_dot_u:
    w_dot_u = stacked[:, 3]
    w_dot_u_total = _global_sum(jnp.sum(w_dot_u, axis=1), channel_axis_name)
    coefficients = channel_weight * w_dot_u + (whole_weight * w_dot_u_total)[:, None]

  results = []
  for i, (shape, width, axes) in enumerate(zip(shapes, widths, channel_axes, strict=True)):
    broadcast_shape = [n if a in axes else 1 for a, n in enumerate(shape)]
    per_channel = lambda x, i=i, width=width, shape=broadcast_shape: x[i, :width].reshape(shape)  # noqa: E731
    projector = (
      RadialProjector(
        per_channel(channel_weight),
        whole_weight[i],
        _reduce_axes(len(shape), axes),
        axis_name,
        channel_axis_name,
        views[i],
      )
      if coefficients is None
      else _KnownCoefficientProjector(per_channel(coefficients), views[i])
    )
    results.append((projector, multipliers[i]))
  return results


def _projectors_of_leaves(
  flat_grads: Sequence[Any],
  flat_params: Sequence[Any],
  flat_names: Sequence[tuple[AxisName, AxisName]],
  flat_channel_axes: Sequence[tuple[int, ...] | None],
  *,
  known_statistics: dict[int, ChannelStatistics],
  batch_leaves: bool,
  projection: RadialProjection,
) -> tuple[list[_Projector | None], list[jax.Array | None]]:
  """AdamP's test on flattened leaves: per leaf ``(projector, decay multiplier)``.

  The one place both paths decide and build the projection. Leaves that are
  not projected (no channel axes, see :func:`projected_channel_axes`) get no
  projector and a multiplier of 1 (None for a None gradient). The others'
  statistics are taken here unless ``known_statistics`` has them by leaf
  index (the fused CPU pass).

  Args:
    flat_grads, flat_params: the leaves.
    flat_names: per leaf, ``(reduce-dim axes, channel-dim axes)``, see
      :func:`leaf_axis_names`.
    flat_channel_axes: per leaf, its output-channel axes, or None if it is
      not projected.
    known_statistics: statistics already computed, by leaf index.
    batch_leaves: run the small per-channel math of leaves with the same
      axes, dtype and kind of statistics together, in groups of similar
      width: it compiles faster. Under ``jit`` with sharded params GSPMD
      propagates the stacked (replicated) statistics back into the updates
      and may return the params replicated, so only the single-device fused
      path batches.
    projection: the test's options.
  """
  projectors: list[_Projector | None] = [None] * len(flat_params)
  multipliers: list[jax.Array | None] = [
    None if g is None else jnp.ones([], _statistics_dtype(p.dtype))
    for g, p in zip(flat_grads, flat_params, strict=True)
  ]
  flat_statistics: dict[int, ChannelStatistics] = {}
  groups: dict[tuple[Any, ...], list[int]] = {}
  leaves = zip(flat_grads, flat_params, flat_names, flat_channel_axes, strict=True)
  for i, (g, w, names, axes) in enumerate(leaves):
    if g is None or axes is None:
      continue
    statistics = known_statistics.get(i)
    if statistics is None:
      statistics = _channel_statistics(g, w, axes)
    flat_statistics[i] = statistics
    # Leaves of one group are padded to its widest; grouping by the power of
    # two above the width bounds the padding by 2x each leaf's own statistics.
    width_bucket = (statistics.g_dot_w.shape[-1] - 1).bit_length()
    key = (
      names,
      statistics.g_dot_w.dtype,
      statistics.w_dot_u is not None,
      width_bucket if batch_leaves else i,
    )
    groups.setdefault(key, []).append(i)
  for (names, *_), indices in groups.items():
    results = _projectors_from_statistics(
      [flat_statistics[i] for i in indices],
      [flat_params[i].shape for i in indices],
      delta=projection.delta,
      wd_ratio=projection.wd_ratio,
      eps=projection.eps,
      channel_axes=[flat_channel_axes[i] for i in indices],  # type: ignore[misc]
      axis_name=names[0],
      channel_axis_name=names[1],
    )
    for i, (projector, multiplier) in zip(indices, results, strict=True):
      projectors[i], multipliers[i] = projector, multiplier
  return projectors, multipliers


def leaf_axis_names(
  treedef: Any,
  flat_grads: list[Any],
  params: Any,
  axis_name: AxisName,
  param_specs: Any,
  flat_channel_axes: Sequence[tuple[int, ...] | None] | None = None,
) -> list[tuple[AxisName, AxisName]]:
  """``(reduce-dim axes, channel-dim axes)`` of every leaf, from ``axis_name``/``param_specs``.

  A leaf without channel axes (None, or ``flat_channel_axes`` None) counts its last axis.
  """
  if param_specs is None:
    return [(axis_name, None)] * len(flat_grads)
  if flat_channel_axes is None:
    flat_channel_axes = [None] * len(flat_grads)
  allowed = set(_axis_names(axis_name))
  flat_names = []
  flat_specs = treedef.flatten_up_to(_specs_per_leaf(param_specs, params))
  for g, spec, axes in zip(flat_grads, flat_specs, flat_channel_axes, strict=True):
    if g is None:
      names: tuple[AxisName, AxisName] = (None, None)
    else:
      names = _spec_axis_names(spec, g.ndim, axes or (max(g.ndim - 1, 0),))
    unknown = set(_axis_names(names[0]) + _axis_names(names[1])) - allowed
    if axis_name is not None and unknown:
      raise ValueError(
        f"param_specs name the mesh axes {sorted(unknown)}, which are not in axis_name={axis_name!r}."
      )
    flat_names.append(names)
  return flat_names


def _per_leaf(option: Any, params: Any, treedef: Any, is_value: Any, what: str) -> list[Any]:
  """A per-leaf option, flattened like ``treedef``: one value for every leaf, a tree, or a function.

  A tree may be a prefix of the params (as optax's masks and shard_map's
  specs are); a function is called on the params and returns such a tree.
  """
  if is_value(option):
    return [option] * treedef.num_leaves
  tree = option(params) if callable(option) else option
  try:
    broadcast = jax.tree.map(
      lambda value, subtree: jax.tree.map(lambda _: value, subtree, is_leaf=lambda x: x is None),
      tree,
      params,
      is_leaf=is_value,
    )
    return treedef.flatten_up_to(broadcast)
  except (ValueError, TypeError) as error:
    raise ValueError(
      f"{what} must be one value for every leaf, a tree with the params' structure (or a "
      f"prefix of it), or a function of the params that returns one; got {describe(tree)}, "
      f"which does not match the params: {error}"
    ) from None


def _projected_by_default(role: LeafRole) -> bool:
  """What the official AdamP projects (weights, with ndim > 1), never biases or norm parameters."""
  return role.kind not in ("bias", "norm")


def projected_channel_axes(
  params: Any, treedef: Any, *, channel_axis: Any = None, projection_mask: Any = None
) -> list[tuple[int, ...] | None]:
  """Per leaf of ``treedef``, the output-channel axes the projection uses, or None if not projected.

  A leaf is projected when it has ``ndim > 1`` and elements, and
  ``projection_mask`` selects it (by default every leaf but the biases and
  normalization parameters, see :mod:`decoupled_optax._layout`). Its channel
  axes are ``channel_axis``'s for that leaf if given, else those read from the
  model, else the last axis.
  """
  flat_params = treedef.flatten_up_to(params)
  with_none = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]
  roles = leaf_roles(params)
  if treedef.num_leaves != len(with_none):  # a treedef without the params' None leaves
    roles = [r for r, (_, leaf) in zip(roles, with_none, strict=True) if leaf is not None]
    with_none = [(path, leaf) for path, leaf in with_none if leaf is not None]
  flat_axes = _per_leaf(channel_axis, params, treedef, is_axes, "channel_axis")
  if projection_mask is None:
    flat_mask = [_projected_by_default(role) for role in roles]
  else:
    flat_mask = _per_leaf(projection_mask, params, treedef, is_mask_value, "projection_mask")
  paths = [path for path, _ in with_none]
  result: list[tuple[int, ...] | None] = []
  for path, leaf, role, axes, selected in zip(
    paths, flat_params, roles, flat_axes, flat_mask, strict=True
  ):
    if not is_mask_value(selected):
      raise TypeError(
        f"projection_mask must give one Python bool per leaf, got {describe(selected)} at "
        f"'{path_name(path)}'."
      )
    if leaf is None or not bool(selected) or not is_projected(leaf):
      result.append(None)
      continue
    if not is_axes(axes):
      raise TypeError(
        f"channel_axis must give an int or a tuple of ints per leaf, got {describe(axes)} at "
        f"'{path_name(path)}'."
      )
    chosen = axes if axes is not None else role.channel_axes or (leaf.ndim - 1,)
    try:
      result.append(normalized_axes(chosen, leaf.ndim))
    except ValueError:
      raise ValueError(
        f"channel_axis must give axes in [-{leaf.ndim}, {leaf.ndim}), none repeated, for every "
        f"projected leaf, got {chosen}, but the leaf '{path_name(path)}' has shape "
        f"{tuple(leaf.shape)}."
      ) from None
  return result


def _is_none(x: Any) -> bool:
  return x is None


def check_update_inputs(grads: Any, params: Any) -> None:
  """The checks every update of the radial projection runs on its inputs, at trace time."""
  require_params(params)
  check_same_structure("grads", grads, params)
  check_real_params(params, allow_complex=False, transform="the radial projection")


def scale_invariance(
  grads: optax.Updates,
  params: optax.Params,
  projection: RadialProjection | None = None,
) -> tuple[Any, Any]:
  """Runs AdamP's scale-invariance test on every leaf.

  Args:
    grads: the raw gradients, with the structure of ``params``.
    params: the params.
    projection: the test's options (threshold ``delta``, ``wd_ratio``,
      ``eps``, channel axes, mask, mesh axes), a
      :class:`decoupled_optax.RadialProjection`.

  Returns:
    ``(projectors, multipliers)``: trees with the structure of ``params``.
    A projector is None for leaves that are not projected (see
    ``projection_mask``; never 0-d, 1-D or empty leaves); a multiplier is
    ``wd_ratio`` where a view was found scale invariant and 1 elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> w = {"kernel": jnp.eye(2), "bias": jnp.ones((2, 2))}
    >>> g = {"kernel": jnp.array([[0.0, 1.0], [-1.0, 0.0]]), "bias": jnp.ones((2, 2))}
    >>> projectors, multipliers = dopt.scale_invariance(g, w, dopt.RadialProjection(wd_ratio=0.1))
    >>> projectors["bias"] is None, round(float(multipliers["kernel"]), 3)  # a bias: never
    (True, 0.1)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, Algorithm 1.
  """
  projection = check_projection(projection)
  check_update_inputs(grads, params)
  extra_args = projection_extra_args(grads, params, projection)
  return extra_args[RADIAL_PROJECTORS], extra_args[WEIGHT_DECAY_MULTIPLIERS]


def projection_extra_args(
  grads: Any,
  params: Any,
  projection: RadialProjection,
  *,
  flat_channel_axes: list[tuple[int, ...] | None] | None = None,
  known_statistics: dict[int, ChannelStatistics] | None = None,
) -> dict[str, Any]:
  """The one decision of both paths: the extra args AdamP's test gives the chain it wraps.

  ``{RADIAL_PROJECTORS: projectors, WEIGHT_DECAY_MULTIPLIERS: multipliers}``,
  trees with the structure of ``grads``. The statistics of each projected
  leaf are ``known_statistics[i]`` where the fused CPU pass took them (by
  flat leaf index; then the leaves' small per-channel math is batched), and
  are taken here otherwise. The inputs are not checked again (the caller did).
  """
  treedef = jax.tree.structure(grads, is_leaf=_is_none)
  flat_grads = treedef.flatten_up_to(grads)
  flat_params = treedef.flatten_up_to(params)
  if flat_channel_axes is None:
    flat_channel_axes = projected_channel_axes(
      params,
      treedef,
      channel_axis=projection.channel_axis,
      projection_mask=projection.projection_mask,
    )
  axis_name = projection.axis_name
  flat_names = leaf_axis_names(
    treedef, flat_grads, params, axis_name, projection.param_specs, flat_channel_axes
  )
  check_mesh_axes_named(params, flat_names, flat_channel_axes, axis_name)
  flat_projectors, flat_multipliers = _projectors_of_leaves(
    flat_grads,
    flat_params,
    flat_names,
    flat_channel_axes,
    known_statistics=known_statistics or {},
    batch_leaves=bool(known_statistics),
    projection=projection,
  )
  return {
    RADIAL_PROJECTORS: treedef.unflatten(flat_projectors),
    WEIGHT_DECAY_MULTIPLIERS: treedef.unflatten(flat_multipliers),
  }


class LeafDecision(NamedTuple):
  """AdamP's decision on one leaf in the last update (kept in :class:`RadialProjectionState`).

  Attributes:
    view: the view projected: 0 none, 1 the channel view, 2 the whole tensor
      (int8); 0 before the first update and for leaves never projected.
    weight_decay_multiplier: ``wd_ratio`` where a view was projected, else 1 (float32).

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> decision = dopt.LeafDecision(jnp.int8(1), jnp.float32(0.1))  # the channel view
    >>> int(decision.view)
    1
  """

  view: jax.Array
  weight_decay_multiplier: jax.Array


class RadialProjectionState(NamedTuple):
  """State of :func:`project_out_radial`: AdamP's decisions of the last update, per leaf.

  :func:`decoupled_optax.with_diagnostics` reads them from here. With
  per-shard statistics on purpose (``axis_name=()`` under ``shard_map``) the
  state keeps the largest view and the smallest multiplier over the shards,
  so that it stays replicated.

  Attributes:
    decisions: a tuple with, per param leaf in flattening order (a None param
      and one masked out by ``optax.masked`` count as a leaf), a
      :class:`LeafDecision`, or None where the param is None or masked out.
      A flat tuple, not a tree with the params' structure, so that sharding
      recipes (``optax.tree_map_params``, flax's logical partitioning) leave it
      replicated.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> tx = dopt.detect_scale_invariance(
    ...     optax.chain(dopt.project_out_radial(), optax.scale(-0.1)))
    >>> w = {"kernel": jnp.eye(2)}
    >>> g = {"kernel": jnp.array([[0.0, 1.0], [-1.0, 0.0]])}  # orthogonal to w
    >>> _, state = tx.update(g, tx.init(w), w)
    >>> (decision,) = state[0].decisions  # one leaf
    >>> int(decision.view), round(float(decision.weight_decay_multiplier), 6)
    (1, 0.1)
  """

  decisions: Any


def _leaf_decision(param: Any, projector: Any, multiplier: Any) -> LeafDecision | None:
  if param is None:
    return None
  view = jnp.zeros([], jnp.int8) if projector is None else projector.view
  multiplier = jnp.ones([], jnp.float32) if multiplier is None else multiplier.astype(jnp.float32)
  return LeafDecision(
    reduced_over_varying_axes(view, jax.lax.pmax),
    reduced_over_varying_axes(multiplier, jax.lax.pmin),
  )


def _decisions(params: Any, projectors: Any, multipliers: Any) -> RadialProjectionState:
  """The state that keeps one update's decisions, one entry per leaf of ``params``."""
  flat_params, treedef = leaf_positions(params)
  return RadialProjectionState(
    tuple(
      map(
        _leaf_decision,
        flat_params,
        treedef.flatten_up_to(projectors),
        treedef.flatten_up_to(multipliers),
      )
    )
  )


def detect_scale_invariance(
  inner: optax.GradientTransformation,
  projection: RadialProjection | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` and tells its transforms which leaves are scale invariant.

  For every weight with ``ndim > 1`` (never a bias or a normalization
  parameter, whatever its rank: see ``projection_mask``) the official AdamP test runs on the raw
  gradient ``g`` and the parameter ``w``: first the channel view (one row per
  output channel), then the whole-tensor view. A view holds if

  .. math:: \max_{rows} \frac{|g \cdot w|}{\max(\|g\|, \epsilon)\max(\|w\|, \epsilon)}
            < \frac{\delta}{\sqrt{\text{row length}}}

  and the first view that holds wins. The result reaches the transforms of
  ``inner`` as two extra arguments: ``radial_projectors``, used by
  :func:`project_out_radial`, and ``weight_decay_multipliers`` (``wd_ratio``
  on projected leaves, 1 elsewhere), used by
  :func:`decoupled_optax.add_decoupled_weight_decay`.

  Args:
    inner: the chain to wrap; it sees the same updates, state and params.
    projection: the test's options, a :class:`decoupled_optax.RadialProjection`
      (defaults: the official ``delta=0.1``, ``wd_ratio=0.1``, ``eps=1e-8``):

      * ``delta``: threshold of the cosine test, > 0.
      * ``wd_ratio``: >= 0, multiplies the weight decay of projected leaves.
      * ``eps``: guards the norms, as in the official code.
      * ``channel_axis``: the output-channel axes. None (default): read from
        the model. Equinox layers (``eqx.filter``'s module tree) store
        PyTorch's layout, output channel on axis 0; Flax linen and NNX
        ``kernel``\ s put it last (all the dims their module's ``bias`` has: a
        ``MultiHeadDotProductAttention`` query kernel ``(in, heads, head_dim)``
        has one row per ``(head, dim)``, as PyTorch's ``(heads * head_dim, in)``
        weight); embeddings have one row per token (axis 0). Where the tree
        does not say (a bare dict of arrays, a custom module's own field), the
        last axis. An int or a tuple of ints overrides it for every leaf (0
        for PyTorch-layout arrays in a bare dict); a tree of them (None: read
        from the model), or a function of the params returning one, sets it
        per leaf.
      * ``projection_mask``: which leaves may be projected. None (default):
        every leaf but biases and normalization parameters (Flax's ``bias``
        and ``scale``, Equinox's ``bias`` fields and its norm layers'
        parameters), which the official code never projects because PyTorch
        keeps them 1-D. ``True`` is the official rule taken literally: every
        leaf with ``ndim > 1``, biases included. A tree of bools (a prefix of
        the params) or a function of the params returning one, as optax's
        masks. 0-d, 1-D and empty leaves are never projected.
      * ``axis_name``: under ``shard_map`` or ``pmap`` with params sharded
        across devices, the mapped axis name(s) that shard them. Without
        ``param_specs``, every leaf with ``ndim > 1`` must be sharded over all
        of these axes along its non-channel dims (e.g. FSDP on the input dim):
        the per-channel sums are psum'd over them. Leave it None for data
        parallelism with replicated params (``pmap`` with pmean'd gradients,
        ``shard_map`` with ``P()`` in_specs), and under ``jit`` with
        ``NamedSharding``, where GSPMD makes every reduction global by itself.
        ``()`` (no axes) computes the statistics per shard, on purpose.
      * ``param_specs``: under ``shard_map``, which mesh axes shard which dims
        of each param: a tree of :class:`jax.sharding.PartitionSpec` with the
        params' structure or a prefix of it (None for replicated), e.g. the
        params' ``in_specs`` of ``shard_map``. Axes sharding the non-channel
        dims reduce the per-channel sums (psum); axes sharding the channel dim
        reduce the max over channels (pmax) and the whole-tensor sums (psum).
        If ``axis_name`` is also given, the specs may only name its axes.
      * ``cpu_kernel``: must be None or False here; the fused kernel runs
        only in :func:`decoupled_optax.fused_scale_invariance`.

  With ``axis_name`` and ``param_specs``, the result equals the
  single-device one (up to rounding). Inside ``shard_map``, a projected
  param that is sharded over a mesh axis that neither names (its type varies
  over the axis) raises a ValueError: its cosines, norms and projection
  would be computed **per shard**, which differs from the single-device
  result. Pass ``axis_name=()`` to have them per shard on purpose. The check
  reads the params' types, so it runs with ``shard_map``'s default
  ``check_vma=True``; under ``pmap`` and with ``check_vma=False`` types do
  not say what is sharded, and missing axis names give per-shard statistics
  without an error.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with ``inner``'s state.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> sgdp = dopt.detect_scale_invariance(optax.chain(
    ...     optax.trace(0.9), dopt.project_out_radial(), optax.scale(-0.1)),
    ...     dopt.RadialProjection(delta=0.1, wd_ratio=0.1))
    >>> w = {"kernel": jnp.eye(2)}
    >>> g = {"kernel": jnp.array([[0.0, 1.0], [-1.0, 0.0]])}  # orthogonal to w
    >>> u, _ = sgdp.update(g, sgdp.init(w), w)
    >>> float(jnp.sum(u["kernel"] * w["kernel"]))  # no radial component
    0.0

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, Algorithm 1; the official
  `adamp <https://github.com/clovaai/AdamP>`_ package.
  """
  check_transform("inner", inner)
  projection = check_projection(projection)
  if projection.cpu_kernel:
    raise ValueError(
      "projection.cpu_kernel must be None or False in detect_scale_invariance, got True: the "
      "fused CPU kernel runs only in decoupled_optax.fused_scale_invariance, with an "
      "AdamDirection or a MomentumDirection."
    )
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> optax.OptState:
    check_real_params(params, allow_complex=False, transform="the radial projection")
    return inner.init(params)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    params = require_params(params)
    check_update_inputs(updates, params)
    return detected_update(inner, projection, updates, state, params, extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def detected_update(
  inner: optax.GradientTransformationExtraArgs,
  projection: RadialProjection,
  updates: Any,
  state: Any,
  params: Any,
  extra_args: dict[str, Any],
) -> tuple[Any, Any]:
  """:func:`detect_scale_invariance`'s update on inputs the caller checked."""
  extra_args = {**extra_args, **projection_extra_args(updates, params, projection)}
  return inner.update(updates, state, params, **extra_args)


def _project_leaf(update: jax.Array, param: jax.Array, projector: _Projector) -> jax.Array:
  dtype = _statistics_dtype(update.dtype)
  u, w = update.astype(dtype), param.astype(dtype)
  return (u - w * projector.coefficient(u, w)).astype(update.dtype)


def project_out_radial() -> optax.GradientTransformationExtraArgs:
  r"""Removes the radial component of the updates of scale-invariant leaves.

  .. math:: u \leftarrow u - \hat w (\hat w \cdot u), \quad \hat w = w / (\|w\| + \epsilon)

  per output channel or over the whole tensor, whichever view
  :func:`detect_scale_invariance` found scale invariant; other leaves pass
  unchanged. Place it inside a chain wrapped by :func:`detect_scale_invariance`,
  after the transform that produces the direction (``optax.scale_by_adam``,
  ``optax.trace``, ``optax.scale_by_lion``, ...). The projection is linear, so
  it may come before or after a scaling by the learning rate.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state, a
    :class:`RadialProjectionState`, keeps the last update's decisions.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> adam = optax.scale_by_adam()
    >>> tx = dopt.detect_scale_invariance(  # AdamP without decay
    ...     optax.chain(adam, dopt.project_out_radial(), optax.scale(-1e-3)))
    >>> w = {"kernel": jnp.array([[1.0, 2.0], [2.0, -1.0]]),
    ...      "bias": jnp.ones(2)}
    >>> g = {"kernel": jnp.array([[2.0, 1.0], [-1.0, 2.0]]),  # w.g = 0
    ...      "bias": jnp.ones(2)}
    >>> d, _ = adam.update(g, adam.init(w))  # Adam's direction
    >>> (d["kernel"] * w["kernel"]).sum(axis=0).round(3).tolist()
    [-1.0, 1.0]
    >>> u, _ = tx.update(g, tx.init(w), w)  # radial parts removed
    >>> (u["kernel"] * w["kernel"]).sum(axis=0).round(9).tolist()
    [0.0, 0.0]

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, Algorithm 1 (the projection Pi).
  """

  def init_fn(params: optax.Params) -> RadialProjectionState:
    flat_params, _ = leaf_positions(params)
    return RadialProjectionState(tuple(_leaf_decision(p, None, None) for p in flat_params))

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, RadialProjectionState]:
    del state
    # The projectors of a single bare leaf are the tree None: test the key, not the value.
    if RADIAL_PROJECTORS not in extra_args:
      raise ValueError(
        "project_out_radial() needs the scale-invariance test of its chain: wrap the "
        "chain in decoupled_optax.detect_scale_invariance(...)."
      )
    projectors = extra_args[RADIAL_PROJECTORS]
    params = require_params(params)
    updates = jax.tree.map(
      lambda u, w, projector: u if projector is None else _project_leaf(u, w, projector),
      updates,
      params,
      projectors,
      is_leaf=lambda x: x is None,
    )
    multipliers = extra_args.get(WEIGHT_DECAY_MULTIPLIERS)
    if multipliers is None:  # projectors given by hand, without the detection's multipliers
      multipliers = jax.tree.map(lambda _: jnp.ones([]), params)
    return updates, _decisions(params, projectors, multipliers)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
