"""AdamP/SGDP's projection options: one frozen, validated object that every projection block takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from decoupled_optax._validation import check_bool, check_non_negative, check_positive, describe

AxisName = str | Sequence[str] | None

ChannelAxis = Any
"""None (read from the model), an int or tuple of ints, a tree of them per leaf, or a function."""

ProjectionMask = Any
"""None (weights, not biases or norm parameters), a bool, a tree of bools, or a function."""


def is_axes(x: Any) -> bool:
  """A per-leaf channel-axis value: an int, a tuple of ints, or None (inferred)."""
  if x is None or (isinstance(x, (int, np.integer)) and not isinstance(x, bool)):
    return True
  return isinstance(x, tuple) and all(
    isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in x
  )


def is_mask_value(x: Any) -> bool:
  return isinstance(x, (bool, np.bool_))


def check_axis_name(axis_name: Any) -> None:
  """``axis_name`` is None, a mesh axis name, or a sequence of names."""
  names = (axis_name,) if isinstance(axis_name, str) or axis_name is None else axis_name
  if not isinstance(names, (tuple, list)) or not all(
    isinstance(n, str) or (n is None and axis_name is None) for n in names
  ):
    raise TypeError(
      f"axis_name must be None, a mesh axis name or a sequence of them, got {describe(axis_name)}."
    )


def _check_channel_axis(channel_axis: Any) -> None:
  if not callable(channel_axis) and not all(
    is_axes(x) for x in jax.tree.leaves(channel_axis, is_leaf=is_axes)
  ):
    raise TypeError(
      "channel_axis must be None (read from the model), a Python int or tuple of ints, a tree "
      f"of them per leaf, or a function of the params, got {describe(channel_axis)}. Under "
      "optax.inject_hyperparams pass static_args=('channel_axis',), or use "
      "decoupled_optax.inject_hyperparams, which does it for you."
    )


def _check_projection_mask(mask: Any) -> None:
  if not callable(mask) and not all(is_mask_value(x) for x in jax.tree.leaves(mask)):
    raise TypeError(
      "projection_mask must be None (weights, never biases or normalization parameters), a "
      "Python bool, a tree of Python bools per leaf, or a function of the params that returns "
      f"one, got {describe(mask)}. Under optax.inject_hyperparams pass "
      "static_args=('projection_mask',), or use decoupled_optax.inject_hyperparams."
    )


@dataclasses.dataclass(frozen=True)
class RadialProjection:
  r"""AdamP/SGDP's projection options, validated once, for the blocks that project.

  :func:`decoupled_optax.detect_scale_invariance`,
  :func:`decoupled_optax.fused_scale_invariance`,
  :func:`decoupled_optax.scale_invariance` and ``decoupled_chain``'s
  ``radial_projection`` take one of these; :func:`decoupled_optax.adamp` and
  :func:`decoupled_optax.sgdp` keep flat keywords and build it. A leaf's view
  (one row per output channel, then the whole tensor) is scale invariant when

  .. math:: \max_{rows} \frac{|g \cdot w|}{\max(\|g\|, \epsilon)\max(\|w\|, \epsilon)}
            < \frac{\delta}{\sqrt{\text{row length}}}

  Args:
    delta: the threshold's scale, > 0 (official default 0.1).
    wd_ratio: >= 0, multiplies the weight decay of projected leaves.
    eps: >= 0, guards the norms, as in the official code.
    channel_axis: the output-channel axes. None: read from the model (see
      :func:`decoupled_optax.detect_scale_invariance`); an int or tuple of
      ints for every leaf, a tree of them per leaf, or a function of the
      params returning one.
    projection_mask: which leaves may be projected. None: every leaf but biases and
      normalization parameters; ``True``: every leaf with ``ndim > 1``; a
      tree of bools or a function of the params returning one.
    axis_name: the mapped axis name(s) that shard the params inside
      ``shard_map``/``pmap``; ``()`` takes the statistics per shard on purpose.
    param_specs: under ``shard_map``, the params' PartitionSpecs (a prefix tree).
    cpu_kernel: whether the CPU runs the fused kernel (only
      :func:`decoupled_optax.fused_scale_invariance` has one). None: when the
      process sees a single CPU device.

  Example:
    >>> import decoupled_optax as dopt, optax
    >>> projection = dopt.RadialProjection(delta=0.1, wd_ratio=0.1, channel_axis=0)
    >>> sgdp = dopt.detect_scale_invariance(optax.chain(
    ...     optax.trace(0.9), dopt.project_out_radial(), optax.scale(-0.1)), projection)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, Algorithm 1.
  """

  delta: Any = 0.1
  wd_ratio: Any = 0.1
  eps: Any = 1e-8
  channel_axis: ChannelAxis = None
  projection_mask: ProjectionMask = None
  axis_name: AxisName = None
  param_specs: Any = None
  cpu_kernel: bool | None = None

  def __post_init__(self) -> None:
    check_positive("delta", self.delta)
    check_non_negative("wd_ratio", self.wd_ratio)
    check_non_negative("eps", self.eps)
    _check_channel_axis(self.channel_axis)
    _check_projection_mask(self.projection_mask)
    check_axis_name(self.axis_name)
    check_bool("cpu_kernel", self.cpu_kernel, optional=True)


def check_projection(projection: Any, name: str = "projection") -> RadialProjection:
  """``projection`` if it is a :class:`RadialProjection`, the defaults for None; else a TypeError."""
  if projection is None:
    return RadialProjection()
  if not isinstance(projection, RadialProjection):
    fix = (
      f"decoupled_optax.RadialProjection(**{projection!r})"
      if isinstance(projection, dict)
      else "decoupled_optax.RadialProjection(delta=..., wd_ratio=..., ...)"
    )
    raise TypeError(
      f"{name} must be a decoupled_optax.RadialProjection, got {describe(projection)}; pass {fix}."
    )
  return projection
