"""What each leaf of a params tree is: a weight, an embedding, a bias or a normalization parameter.

AdamP's projection and the weight-decay mask depend on it, and so does the
output-channel axis, which the frameworks lay out differently. It is read
from the model itself, never from a guess:

* **Equinox** keeps its modules in the tree (``eqx.filter`` returns a
  module pytree). A leaf belongs to the innermost module that holds it, and
  ``eqx.nn``'s layers store PyTorch's layout: the ``weight`` of ``Linear``,
  ``Conv*``, ``ConvTranspose*``, ``Embedding``, ``GRUCell`` and ``LSTMCell``
  has its output channel on axis 0; their biases (any rank, e.g. a conv
  bias of shape ``(out, 1, 1)``) are biases; every parameter of
  ``LayerNorm``, ``GroupNorm``, ``BatchNorm`` and ``RMSNorm`` is a
  normalization parameter.
* **Flax** (linen's params dicts and NNX state, with ``nnx.Param`` nodes or
  pure arrays) names its parameters: ``kernel`` is a weight whose output
  axes are the last ones (as many as its module's ``bias`` has dims:
  ``MultiHeadDotProductAttention``'s query kernel ``(in, heads, head_dim)``
  with bias ``(heads, head_dim)`` has output axes ``(1, 2)``, one per row of
  PyTorch's ``(heads * head_dim, in)`` weight; without a bias, the last
  axis), ``embedding`` an embedding (one row per token: axis 0, as in
  PyTorch), ``bias`` a bias and ``scale`` a normalization scale.
* Anything else is **unknown**: a bare dict of arrays, a custom Equinox
  module's own fields. Its layout cannot be known; the callers fall back to
  their documented defaults (the last axis, the official ``ndim > 1`` rule).

Equinox and Flax are recognised only if the caller imported them: neither is
imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax

Kind = Literal["weight", "embedding", "bias", "norm", "unknown"]

# eqx.nn's layers whose weights are in PyTorch's layout, and its normalization layers.
_EQUINOX_LAYERS = ("Linear", "Conv", "ConvTranspose", "Embedding", "GRUCell", "LSTMCell")
_EQUINOX_NORMS = ("LayerNorm", "GroupNorm", "BatchNorm", "RMSNorm")
# Flax's parameter names.
_FLAX_KINDS: dict[str, Kind] = {
  "kernel": "weight",
  "embedding": "embedding",
  "bias": "bias",
  "scale": "norm",
}


class LeafRole(NamedTuple):
  """What one leaf is, as read from the model.

  Attributes:
    kind: ``"weight"``, ``"embedding"``, ``"bias"``, ``"norm"`` or ``"unknown"``.
    name: the leaf's own name (the last attribute or dict key), or None.
    channel_axes: the output-channel axes (non-negative, ascending) of a
      weight or embedding; None where the layout is not known.
  """

  kind: Kind
  name: str | None
  channel_axes: tuple[int, ...] | None


def _equinox() -> Any:
  return sys.modules.get("equinox")


def is_nnx_variable(x: Any) -> bool:
  """True for an ``nnx.Variable`` (``nnx.Param``, ...); False when flax was never imported."""
  if "flax" not in sys.modules:
    return False
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover - flax partially installed
    return False
  return isinstance(x, nnx.Variable)


def _key_name(key: Any) -> str | None:
  name = getattr(key, "key", None)
  if name is None:
    name = getattr(key, "name", None)
  return None if name is None else str(name)


def _shape(leaf: Any) -> tuple[int, ...] | None:
  if is_nnx_variable(leaf):
    leaf = leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
  shape = getattr(leaf, "shape", None)
  return None if shape is None else tuple(shape)


class _Located(NamedTuple):
  """A leaf with where it sits: its path, and its innermost Equinox module and path within it."""

  path: tuple[Any, ...]
  leaf: Any
  module: Any
  within_module: tuple[Any, ...]


def _located_leaves(tree: Any) -> list[_Located]:
  """Every leaf (None and ``nnx.Variable`` nodes are leaves) in jax's flatten order."""
  eqx = _equinox()
  located: list[_Located] = []

  def visit(node: Any, prefix: tuple[Any, ...], module: Any, module_depth: int) -> None:
    def is_leaf(x: Any) -> bool:
      if x is None or is_nnx_variable(x):
        return True
      return eqx is not None and x is not node and isinstance(x, eqx.Module)

    for path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_leaf)[0]:
      full = prefix + tuple(path)
      if leaf is not None and eqx is not None and isinstance(leaf, eqx.Module):
        visit(leaf, full, leaf, len(full))
      else:
        located.append(_Located(full, leaf, module, full[module_depth:]))

  root_is_module = eqx is not None and isinstance(tree, eqx.Module)
  visit(tree, (), tree if root_is_module else None, 0)
  return located


def _equinox_role(module: Any, within: tuple[Any, ...], shape: tuple[int, ...] | None) -> LeafRole:
  eqx_nn = _equinox().nn
  field = _key_name(within[0]) if within else None
  name = _key_name(within[-1]) if within else None
  if isinstance(module, tuple(getattr(eqx_nn, n) for n in _EQUINOX_NORMS if hasattr(eqx_nn, n))):
    return LeafRole("norm", field, None)
  layers = tuple(getattr(eqx_nn, n) for n in _EQUINOX_LAYERS if hasattr(eqx_nn, n))
  if isinstance(module, layers) and field is not None and len(within) == 1:
    if field.startswith("bias"):
      return LeafRole("bias", field, None)
    if field.startswith("weight"):
      kind: Kind = "embedding" if isinstance(module, eqx_nn.Embedding) else "weight"
      return LeafRole(kind, field, (0,) if shape else None)
  return LeafRole("unknown", name, None)


def _flax_output_axes(kernel: tuple[int, ...], bias: tuple[int, ...] | None) -> tuple[int, ...]:
  """A kernel's output axes: the trailing dims its module's bias has, else the last."""
  width = len(bias) if bias and kernel[len(kernel) - len(bias) :] == bias else 1
  return tuple(range(len(kernel) - width, len(kernel)))


def leaf_roles(params: Any) -> list[LeafRole]:
  """What each leaf of ``params`` is, in the order of ``jax.tree.leaves(params, is_leaf=None-or-Variable)``.

  See the module docstring for the rules.
  """
  located = _located_leaves(params)
  shapes = [_shape(x.leaf) for x in located]
  # Flax paths end in the parameter's name, after an nnx.Variable's ``.value``.
  flax_paths = [
    x.path[:-1]
    if x.path
    and type(x.path[-1]).__name__ == "GetAttrKey"
    and _key_name(x.path[-1]) == "value"
    and x.module is None
    else x.path
    for x in located
  ]
  siblings = {
    (jax.tree_util.keystr(path[:-1]), _key_name(path[-1])): shape
    for path, shape in zip(flax_paths, shapes, strict=True)
    if path
  }
  roles = []
  for x, path, shape in zip(located, flax_paths, shapes, strict=True):
    if x.module is not None:
      roles.append(_equinox_role(x.module, x.within_module, shape))
      continue
    name = _key_name(path[-1]) if path else None
    kind = _FLAX_KINDS.get(name or "", "unknown")
    axes = None
    if kind == "weight" and shape:
      bias = siblings.get((jax.tree_util.keystr(path[:-1]), "bias"))
      axes = _flax_output_axes(shape, bias)
    elif kind == "embedding" and shape:
      axes = (0,)
    roles.append(LeafRole(kind, name, axes))
  return roles


def normalized_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  """``axes`` as sorted non-negative ints; ValueError if out of range or repeated."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  if not axes or any(not -ndim <= a < ndim for a in axes):
    raise ValueError(f"channel axes {axes} are out of range for a leaf with {ndim} dims")
  result = tuple(sorted(a % ndim for a in axes))
  if len(set(result)) != len(result):
    raise ValueError(f"channel axes {axes} repeat an axis")
  return result
