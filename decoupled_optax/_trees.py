"""Checks of the trees an update receives: grads against params, masks, dtypes.

optax leaves these to pytree and broadcasting errors deep inside a step, or
to silent broadcasting. Each check here runs at trace time (shapes, dtypes
and structures are static) and names the argument and the first path where
it goes wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

# optax's own text (optax.adamw raises ValueError with it); optax keeps it in a
# private module, so it is spelled out here.
NO_PARAMS_MSG = (
  "You are using a transformation that requires the current value of "
  "parameters, but you are not passing `params` when calling `update`."
)

_is_none = lambda x: x is None  # noqa: E731


T = TypeVar("T")


def require_params(params: T | None) -> T:
  """``params``, or optax's ValueError when an update was called without them."""
  if params is None:
    raise ValueError(NO_PARAMS_MSG)
  return params


def path_name(path: tuple[Any, ...]) -> str:
  """A key path as ``a/b/0``; ``<root>`` for a bare leaf."""
  if not path:
    return "<root>"
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[Any, ...]]:
  return [path for path, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def _first_extra(paths: list[tuple[Any, ...]], others: list[tuple[Any, ...]]) -> Any:
  other_set = set(others)
  return next((p for p in paths if p not in other_set), None)


def check_same_structure(name: str, tree: Any, params: Any) -> None:
  """Raises ValueError if ``tree`` (e.g. the grads) and ``params`` differ in structure or shapes.

  None leaves (optax's frozen leaves) count as leaves on both sides.
  """
  tree_def = jax.tree.structure(tree, is_leaf=_is_none)
  params_def = jax.tree.structure(params, is_leaf=_is_none)
  if tree_def != params_def:
    tree_paths, params_paths = _paths(tree, _is_none), _paths(params, _is_none)
    extra = _first_extra(tree_paths, params_paths)
    missing = _first_extra(params_paths, tree_paths)
    if extra is not None:
      where = f"{name} have a leaf at '{path_name(extra)}' that params do not have"
    elif missing is not None:
      where = f"params have a leaf at '{path_name(missing)}' that {name} do not have"
    else:
      where = f"their containers differ: {tree_def} against {params_def}"
    raise ValueError(f"{name} must have the tree structure of params: {where}.")
  for (path, leaf), param in zip(
    jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0],
    params_def.flatten_up_to(params),
    strict=True,
  ):
    shape, param_shape = getattr(leaf, "shape", None), getattr(param, "shape", None)
    if shape is not None and param_shape is not None and tuple(shape) != tuple(param_shape):
      raise ValueError(
        f"{name} must have the shapes of params: at '{path_name(path)}' {name} have shape "
        f"{tuple(shape)} and params {tuple(param_shape)} (no broadcasting)."
      )


def check_mask_structure(mask: Any, params: Any) -> None:
  """Raises ValueError unless ``mask`` is a prefix of ``params``'s structure, as optax.masked needs."""
  try:
    jax.tree.structure(mask, is_leaf=_is_none).flatten_up_to(params)
    return
  except (ValueError, TypeError):
    pass
  mask_paths = _paths(mask, _is_none)
  params_paths = _paths(params, _is_none)
  for path in params_paths:
    if not any(path[: len(m)] == m for m in mask_paths):
      raise ValueError(
        f"mask must have the tree structure of params (or a prefix of it): params have a "
        f"leaf at '{path_name(path)}' that the mask does not cover."
      )
  for m in mask_paths:
    if not any(p[: len(m)] == m for p in params_paths):
      raise ValueError(
        f"mask must have the tree structure of params (or a prefix of it): the mask has "
        f"an entry at '{path_name(m)}' that params do not have."
      )
  raise ValueError(
    "mask must have the tree structure of params (or a prefix of it): their containers "
    f"differ: {jax.tree.structure(mask)} against {jax.tree.structure(params)}."
  )


def check_mask_leaves(mask: Any) -> None:
  """Raises ValueError for a mask leaf that is an array with dimensions: a mask decides per leaf.

  optax.masked would end in jax's "truth value of an array ... is ambiguous".
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_none)[0]:
    if getattr(leaf, "ndim", 0) > 0:
      raise ValueError(
        "mask must hold one bool per leaf (or subtree) of the params, got an array of shape "
        f"{tuple(leaf.shape)} at '{path_name(path)}': weight decay is on or off for a whole "
        "leaf, as in optax.masked. Put True or False there (or pass "
        "mask=decoupled_optax.weight_decay_mask); to decay only some elements of a param, "
        "split it into separate leaves."
      )


def checked_mask(mask: Any) -> Callable[[Any], Any]:
  """``mask`` (a tree or a callable of the params) as a callable that checks its result."""

  def mask_fn(tree: Any) -> Any:
    check_not_nnx_graph(tree)
    result = mask(tree) if callable(mask) else mask
    check_mask_leaves(result)
    check_mask_structure(result, tree)
    return result

  return mask_fn


_NNX_FIX = (
  "Pass the optimizer to nnx.Optimizer(model, tx, wrt=nnx.Param), which inits it with the "
  "model's parameters, or call tx.init(nnx.state(model, nnx.Param))."
)


def check_not_nnx_graph(params: Any) -> None:
  """Raises TypeError for an ``nnx.Module`` given as params, or NNX state with Flax's other variables.

  Both would be optimized as if they were parameters: batch statistics and
  RNG state included, and a parameter mask would not match them. Flax is
  never imported here: without ``flax.nnx`` loaded nothing can be either.
  """
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return
  module, variable = getattr(nnx, "Module", None), getattr(nnx, "Variable", None)
  param = getattr(nnx, "Param", None)
  if module is None or variable is None or param is None:  # pragma: no cover - another flax
    return
  is_node = lambda x: isinstance(x, (module, variable))  # noqa: E731
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_node)[0]:
    where = "" if not path else f" at '{path_name(path)}'"
    if isinstance(leaf, module):
      raise TypeError(
        f"params must be the model's parameters, got the nnx.Module {type(leaf).__name__}"
        f"{where}, whose state also holds batch statistics and RNG state. " + _NNX_FIX
      )
    # Flax's own non-parameter variables (BatchStat, RngKey, Cache, ...); a
    # user's Variable subclass may be trained on purpose.
    flax_type = type(leaf).__module__.split(".")[0] == "flax"
    if isinstance(leaf, variable) and not isinstance(leaf, param) and flax_type:
      raise TypeError(
        f"params must be the model's parameters, got NNX state with an nnx."
        f"{type(leaf).__name__} variable{where}, which is not an nnx.Param (nnx.state(model) "
        "holds every variable). " + _NNX_FIX
      )


def check_real_params(params: Any, *, allow_complex: bool, transform: str) -> None:
  """Raises TypeError for integer (or boolean) leaves, and for complex ones unless allowed.

  Integer params would be silently truncated by every update; the radial
  projection's cosine is defined for real weights only. An ``nnx.Module``
  raises too (:func:`check_not_nnx_graph`).
  """
  check_not_nnx_graph(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      continue
    floating = jnp.issubdtype(dtype, jnp.floating)
    complex_ = jnp.issubdtype(dtype, jnp.complexfloating)
    if floating or (complex_ and allow_complex):
      continue
    allowed = "floating point or complex" if allow_complex else "real floating point"
    raise TypeError(
      f"{transform} needs {allowed} params, but the leaf '{path_name(path)}' has dtype "
      f"{jnp.dtype(dtype).name}"
      + (
        "; integer params would be truncated at every step."
        if not complex_
        else "; the radial projection is defined for real weights (split a complex weight "
        "into real and imaginary parts, or exclude it from the projection)."
      )
    )


def is_leaf_placeholder(x: Any) -> bool:
  """A leaf position without an array: a None param, or one that ``optax.masked`` masked out."""
  return x is None or isinstance(x, optax.MaskedNode)


def leaf_positions(params: Any) -> tuple[list[Any], Any]:
  """``(flat params, treedef)``, one entry per leaf position, None where there is no array.

  The per-leaf tuples that states keep (AdamP's decisions, cautious decay's
  fractions) have one entry per position, so that
  :func:`decoupled_optax.with_diagnostics` can name them from the params.
  """
  flat_params, treedef = jax.tree.flatten(params, is_leaf=is_leaf_placeholder)
  return [None if is_leaf_placeholder(p) else p for p in flat_params], treedef


def _full_mask(mask: Any, tree: Any) -> Any:
  """``mask`` (a tree, a prefix of ``tree``'s, or a callable returning one) with one bool per leaf."""
  result = checked_mask(mask)(tree)
  return jax.tree.map(
    lambda value, subtree: jax.tree.map(lambda _: bool(value), subtree, is_leaf=_is_none),
    result,
    tree,
    is_leaf=_is_none,
  )


def intersected_masks(*masks: tuple[Any, bool]) -> Callable[[Any], Any]:
  """A mask function: per leaf, the AND of ``(mask, negate)`` pairs' values (None decays every leaf)."""

  def mask_fn(tree: Any) -> Any:
    full = [
      _full_mask(True if mask is None else mask, tree)
      if not negate
      else jax.tree.map(lambda m: not m, _full_mask(mask, tree), is_leaf=_is_none)
      for mask, negate in masks
    ]
    return jax.tree.map(lambda *values: all(values), *full, is_leaf=_is_none)

  return mask_fn
