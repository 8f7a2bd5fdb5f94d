"""Optimizer state that follows the params' sharding: helpers for jit, GSPMD and Flax.

Every state leaf of the library's optimizers either has the shape of a param
(Adam's moments, the momentum buffer) or is a scalar (step counts). There is
no per-tensor or factored state, so a state leaf's sharding is simply its
param's sharding, or replicated for the scalars. This module derives those
shardings and makes sure a jitted ``init`` produces them:

* :func:`keep_param_sharding` wraps any transform so that
  ``jax.jit(tx.init)(sharded_params)`` returns param-shaped state with the
  sharding of the params (optax's own ``jax.jit(optax.adam(...).init)`` puts
  its zeros on one device). The aliases of this library already use it.
* :func:`state_shardings` gives the state's shardings from the params', for
  ``jax.jit(..., out_shardings=...)`` and for checkpoint restoration.
* :func:`state_partition_specs` gives the state's ``PartitionSpec`` from the
  params', for ``shard_map``'s ``in_specs``/``out_specs``.
* :func:`init_sharded` is ``jax.jit(tx.init, out_shardings=state_shardings(...))``.
* :func:`check_mesh_axes_named` stops AdamP's projection from computing its
  statistics per shard, silently, inside ``shard_map`` with sharded params.

A param-shaped state leaf is found structurally: a subtree of the state with
the params' tree structure and, leaf for leaf, the params' shapes (leaves
masked out by ``optax.masked`` may be ``optax.MaskedNode``). This works for
any optax transform that keeps copies of the params in its state, including
``optax.masked`` ones, which ``optax.tree_map_params`` rejects when the mask
is a pytree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.core import Tracer
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from decoupled_optax._trees import path_name
from decoupled_optax._validation import check_transform


def _is_tracer(x: Any) -> bool:
  return isinstance(x, Tracer)


def _is_param_like(leaf: Any, param: Any) -> bool:
  if leaf is None or isinstance(leaf, optax.MaskedNode):
    return True
  shape = getattr(leaf, "shape", None)
  return shape is not None and tuple(shape) == tuple(getattr(param, "shape", ()))


def map_param_state(
  state: Any,
  params: Any,
  param_fn: Callable[[Any, int], Any],
  other_fn: Callable[[Any], Any],
) -> Any:
  """Maps the param-shaped leaves of an optimizer state and, separately, the others.

  Args:
    state: an optimizer state (arrays or ``jax.ShapeDtypeStruct``).
    params: the params the state was built from (anything with ``.shape``).
    param_fn: called as ``param_fn(state_leaf, i)`` on every leaf of a
      subtree of ``state`` that is a copy of the params' tree, ``i`` being
      the index of the matching param in ``jax.tree.leaves(params)``.
    other_fn: called on every other leaf of ``state``.

  Returns:
    The mapped state, with the structure of ``state``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from decoupled_optax.sharding import map_param_state
    >>> params = {"w": jnp.ones((2, 3))}
    >>> state = optax.adam(1e-3).init(params)
    >>> map_param_state(state, params, lambda x, i: "param", lambda x: "other")[0]
    ScaleByAdamState(count='other', mu={'w': 'param'}, nu={'w': 'param'})
  """
  param_leaves, params_def = jax.tree.flatten(params)

  def as_params_copy(subtree: Any) -> list[Any] | None:
    try:
      entries = params_def.flatten_up_to(subtree)
    except (ValueError, TypeError):
      return None
    if all(_is_param_like(e, p) for e, p in zip(entries, param_leaves, strict=True)):
      return entries
    return None

  def walk(subtree: Any) -> Any:
    entries = as_params_copy(subtree)
    if entries is not None:
      return params_def.unflatten(
        [
          e if e is None or isinstance(e, optax.MaskedNode) else param_fn(e, i)
          for i, e in enumerate(entries)
        ]
      )
    if jax.tree_util.all_leaves([subtree]):
      return other_fn(subtree)
    children, node_def = jax.tree.flatten(subtree, is_leaf=lambda x: x is not subtree)
    return node_def.unflatten([walk(child) for child in children])

  return walk(state)


def _zero_like_param(param: jax.Array) -> jax.Array:
  # Elementwise in ``param`` (so GSPMD gives it the param's sharding) and
  # never folded to a constant (x * 0 is not 0 for floats: inf * 0 is nan).
  # A plain jnp.zeros is one constant shared by every leaf, which XLA places
  # on a single device or shards arbitrarily.
  return jnp.where(jnp.isfinite(param), jnp.abs(param) * 0, 0)


def keep_param_sharding(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Makes a jitted ``init`` give param-shaped state the sharding of its param.

  Outside ``jit``, ``tx.init(sharded_params)`` already keeps the sharding.
  Inside ``jit`` with automatic sharding (``Mesh`` axes of type ``Auto``, the
  classic pjit/GSPMD setting), optax's zeros are constants that do not depend
  on the params, so XLA puts them on one device:
  ``jax.jit(optax.adam(1e-3).init)(sharded_params)`` returns unsharded
  moments. This wrapper adds to every param-shaped state leaf a zero computed
  elementwise from its param, so that GSPMD propagates the param's sharding:
  each device then holds only its shard of the state. The values are
  unchanged (``x + 0``, except that ``-0.0`` becomes ``0.0``); scalars are
  replicated over the params' devices. ``update`` is ``inner``'s.

  With a mesh of ``Explicit`` axes, jit already keeps the sharding, and the
  wrapper changes nothing.

  Args:
    inner: any optax transform.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with ``inner``'s state.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> tx = dopt.keep_param_sharding(optax.adam(1e-3))
    >>> state = jax.jit(tx.init)({"w": jnp.ones((4, 8))})
    >>> state[0].mu["w"].shape
    (4, 8)
  """
  check_transform("inner", inner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> optax.OptState:
    state = inner.init(params)
    param_leaves = jax.tree.leaves(params)
    if not any(_is_tracer(p) for p in param_leaves):
      return state

    def follow(leaf: Any, i: int) -> Any:
      param = param_leaves[i]
      if not (_is_tracer(param) and isinstance(leaf, jax.Array)):
        return leaf
      if not jnp.issubdtype(param.dtype, jnp.inexact):
        return leaf  # integer or bool params: no optimizer state to speak of
      return leaf + _zero_like_param(param).astype(leaf.dtype)

    return map_param_state(state, params, follow, lambda leaf: leaf)

  return optax.GradientTransformationExtraArgs(init_fn, inner.update)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _replicated_like(shardings: list[Any]) -> Sharding:
  for sharding in shardings:
    if isinstance(sharding, NamedSharding):
      return NamedSharding(sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
  for sharding in shardings:
    if isinstance(sharding, Sharding) and sharding.is_fully_replicated:
      return sharding
  for sharding in shardings:
    if isinstance(sharding, Sharding):
      return jax.sharding.SingleDeviceSharding(min(sharding.device_set, key=lambda d: d.id))
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def state_shardings(
  tx: optax.GradientTransformation,
  params: Any,
  shardings: Any = None,
  *,
  replicated: Sharding | None = None,
) -> Any:
  """The shardings of ``tx``'s state, derived from the params' shardings.

  A param-shaped state leaf gets its param's sharding; every other leaf (the
  step counts) gets ``replicated``. Use it as ``out_shardings`` of a jitted
  ``init`` or ``update``, or to build the target of a sharded checkpoint
  restore.

  Args:
    tx: the optimizer.
    params: the params, as arrays or ``jax.ShapeDtypeStruct`` (only their
      shapes and dtypes are used, through ``jax.eval_shape``).
    shardings: a tree of :class:`jax.sharding.Sharding` with the params'
      structure; by default each param's ``.sharding``.
    replicated: the sharding of the other leaves; by default replicated over
      the mesh of the first ``NamedSharding`` among ``shardings``.

  Returns:
    A tree of shardings with the structure of ``tx.init(params)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import decoupled_optax as dopt
    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> params = {"w": jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, P(None, "model")))}
    >>> tx = dopt.adamp(1e-3, weight_decay=1e-5, weight_decay_convention="paper")
    >>> shardings = dopt.state_shardings(tx, params)
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> state[0].mu["w"].sharding.spec
    P(None, 'model')
  """
  check_transform("tx", tx)
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, params)
  sharding_leaves = jax.tree_util.tree_structure(params).flatten_up_to(shardings)
  if replicated is None:
    replicated = _replicated_like(sharding_leaves)
  abstract_state = jax.eval_shape(tx.init, _abstract(params))
  return map_param_state(
    abstract_state, params, lambda _, i: sharding_leaves[i], lambda _: replicated
  )


def state_partition_specs(tx: optax.GradientTransformation, params: Any, param_specs: Any) -> Any:
  """The ``PartitionSpec`` of every leaf of ``tx``'s state, from the params' specs.

  For ``shard_map``'s ``in_specs`` and ``out_specs`` of the optimizer state,
  and for :class:`jax.sharding.NamedSharding` construction. A param-shaped
  state leaf gets its param's spec; the others get ``PartitionSpec()``.

  Args:
    tx: the optimizer.
    params: the params (arrays or ``jax.ShapeDtypeStruct``).
    param_specs: a tree of ``PartitionSpec`` with the params' structure.

  Returns:
    A tree of ``PartitionSpec`` with the structure of ``tx.init(params)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import decoupled_optax as dopt
    >>> specs = dopt.state_partition_specs(
    ...     dopt.adamw(1e-3, 1e-5, weight_decay_convention="paper"), {"w": jnp.ones((4, 8))},
    ...     {"w": P(None, "model")})
    >>> specs[0].mu["w"], specs[0].count
    (P(None, 'model'), P())
  """
  check_transform("tx", tx)
  spec_leaves = jax.tree_util.tree_structure(params).flatten_up_to(param_specs)
  abstract_state = jax.eval_shape(tx.init, _abstract(params))
  return map_param_state(
    abstract_state, params, lambda _, i: spec_leaves[i], lambda _: PartitionSpec()
  )


def init_sharded(tx: optax.GradientTransformation, params: Any) -> optax.OptState:
  """``tx.init(params)`` under ``jit``, with the state sharded like the params.

  Works for any optax transform, e.g. ``optax.adam``, whose jitted ``init``
  alone would put the state on one device.

  Args:
    tx: any optax transform.
    params: the params, sharded (or on one device).

  Returns:
    ``tx.init(params)``, each state leaf that has a param's shape sharded like that param.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> state = dopt.init_sharded(optax.adam(1e-3), {"w": jnp.ones((4, 8))})
  """
  check_transform("tx", tx)
  return jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)


def varying_mesh_axes(x: Any) -> frozenset[str]:
  """The manual mesh axes over which ``x`` varies, as its type says.

  Inside ``shard_map`` with ``check_vma=True`` (the default) a value sharded
  over a mesh axis varies over it, and a replicated one (``P()`` in
  ``in_specs``) does not. Empty elsewhere: outside ``shard_map``, under
  ``pmap`` and with ``check_vma=False``, types carry no such axes.
  """
  aval = jax.typeof(x)
  varying = getattr(aval, "vma", None)  # jax < 0.10
  if varying is None:
    varying = getattr(getattr(aval, "manual_axis_type", None), "varying", ())
  return frozenset(varying)


def reduced_over_varying_axes(x: jax.Array, reduce: Any) -> jax.Array:
  """``x`` reduced (``jax.lax.pmax``, ``pmean``, ...) over the mesh axes it varies over, else itself.

  Keeps per-shard values (statistics taken with ``axis_name=()``) replicated in a state.
  """
  axes = tuple(sorted(varying_mesh_axes(x)))
  return reduce(x, axes) if axes else x


def _names(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def check_mesh_axes_named(
  params: Any,
  flat_names: Sequence[tuple[Any, Any]],
  flat_channel_axes: Sequence[Any],
  axis_name: Any,
) -> None:
  """Raises ValueError if a projected param varies over mesh axes its statistics do not reduce over.

  Inside ``shard_map``, AdamP's cosines and norms are psum'd only over the
  axes named by ``axis_name``/``param_specs``; over any other axis that
  shards a param they would be computed per shard, and the step would differ
  from the single-device one without a word. Replicated params (data
  parallelism) vary over no axis and pass. ``axis_name=()`` asks for
  per-shard statistics on purpose and skips the check.

  Args:
    params: the params, whose leaves are in the order of the flat lists.
    flat_names: per leaf, ``(reduce-dim axes, channel-dim axes)`` that the
      projection reduces over.
    flat_channel_axes: per leaf, its channel axes, or None if not projected.
    axis_name: the ``axis_name`` the user gave, for the message.
  """
  if isinstance(axis_name, (tuple, list)) and not axis_name:
    return
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)[0]
  projected = [
    (path, leaf, names)
    for (path, leaf), names, axes in zip(leaves, flat_names, flat_channel_axes, strict=True)
    if leaf is not None and axes is not None
  ]
  sharding_axes = sorted({a for _, leaf, _ in projected for a in varying_mesh_axes(leaf)})
  for path, leaf, names in projected:
    missing = varying_mesh_axes(leaf) - {n for entry in names for n in _names(entry)}
    if missing:
      raise ValueError(
        f"axis_name: inside shard_map the param '{path_name(path)}' is sharded over the mesh "
        f"axes {sorted(missing)}, which axis_name={axis_name!r} and param_specs do not name, "
        "so AdamP's cosines and norms would be computed per shard and the step would differ "
        f"from the single-device one. Pass axis_name={tuple(sharding_axes)!r} (the mesh axes "
        "that shard the params) and param_specs= the params' in_specs of shard_map; or "
        "axis_name=() to compute the statistics per shard on purpose."
      )
