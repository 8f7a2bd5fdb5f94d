"""Weight-decay masks: decay the weights, not the biases and normalization parameters.

The common recipe (BERT, timm's ``filter_bias_and_bn``, the AdamP paper's
``wd_ratio`` aside) decays only the weight matrices and convolution kernels.
:func:`weight_decay_mask` builds that mask for

* Flax linen params (nested dicts or ``FrozenDict``), e.g. ``variables["params"]``;
* Flax NNX state, both ``nnx.state(model, nnx.Param)``, whose leaves sit in
  ``nnx.Param`` nodes, and the pure arrays that ``nnx.Optimizer.update`` hands
  to the optimizer. A mask built with ``jax.tree.map`` over the first does
  not match the second (``nnx.Optimizer`` inits with ``Param`` nodes and
  updates with pure arrays), so optax raises a pytree structure error; this
  mask treats each ``nnx.Variable`` as one leaf and puts a single bool there,
  which optax applies as a prefix to both forms;
* Equinox models, as ``eqx.filter`` returns them: the layers are
  recognised by their classes (equinox is not imported here), so a conv bias
  of shape ``(out, 1, 1)`` or a 3-D ``LayerNorm`` weight is not decayed;
* any other pytree of arrays, by rank.

Pass the function itself as the mask (it is called on the updates at every
step), or the tree it returns::

  tx = dopt.adamw(1e-3, 1e-5, mask=dopt.weight_decay_mask, weight_decay_convention="paper")
  tx = dopt.adamw(1e-3, 1e-5, mask=dopt.weight_decay_mask(params), weight_decay_convention="paper")

With ``optax.inject_hyperparams`` a callable mask needs
``static_args=("mask",)``; :func:`decoupled_optax.inject_hyperparams` adds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import Any

import jax

from decoupled_optax._layout import is_nnx_variable, leaf_roles
from decoupled_optax._validation import check_number, describe
from decoupled_optax.weight_decay import MASK_AS_SCHEDULE_HINT

#: Leaf names that are never decayed by default: Flax's biases and the
#: scales of ``BatchNorm``, ``LayerNorm``, ``GroupNorm`` and ``RMSNorm``.
DEFAULT_EXCLUDED_NAMES: tuple[str, ...] = ("bias", "scale")


def _leaf_ndim(x: Any) -> int:
  if is_nnx_variable(x):
    x = x.get_value() if hasattr(x, "get_value") else x.value
  return getattr(x, "ndim", 0)


def _check_mask_options(exclude_names: Any, min_ndim: Any) -> tuple[str, ...]:
  """The names as a tuple; a single string would otherwise be read as a set of characters."""
  if isinstance(exclude_names, (str, bytes)):
    raise TypeError(
      f"exclude_names must be a collection of leaf names, got the string {exclude_names!r}, "
      "which would be read as a set of characters. Pass a tuple, e.g. "
      f'exclude_names=("bias", "scale", {exclude_names!r}) (it replaces the defaults).'
    )
  if not isinstance(exclude_names, Collection) or not all(
    isinstance(name, str) for name in exclude_names
  ):
    raise TypeError(
      f"exclude_names must be a collection of strings, got {describe(exclude_names)}."
    )
  check_number("min_ndim", min_ndim, low=0, integer=True)
  return tuple(exclude_names)


def weight_decay_mask(
  params: Any,
  *,
  exclude_names: Collection[str] = DEFAULT_EXCLUDED_NAMES,
  min_ndim: int = 2,
) -> Any:
  """Mask that decays weights and embeddings, never biases or normalization parameters.

  A leaf is decayed (``True``) by what it is, read from the model (see
  :func:`decoupled_optax.detect_scale_invariance`'s ``channel_axis`` for
  the same reading):

  * Equinox (the module tree of ``eqx.filter``): the ``weight`` of
    ``Linear``, ``Conv*``, ``ConvTranspose*``, ``Embedding``, ``GRUCell`` and
    ``LSTMCell``; never a bias, whatever its rank (a conv bias is
    ``(out, 1, 1)``), nor the weight or bias of ``LayerNorm``, ``GroupNorm``,
    ``BatchNorm`` or ``RMSNorm``, whatever their rank.
  * Flax linen and NNX: ``kernel`` and ``embedding``; never ``bias`` nor a
    norm's ``scale``.
  * Leaves whose role the tree does not say (a bare dict, a custom module's
    own field): decayed when they have at least ``min_ndim`` dims.

  In every case a leaf with fewer than ``min_ndim`` dims, or whose name (the
  last key of its path) is in ``exclude_names``, is not decayed.

  Args:
    params: Flax linen params, NNX state (with ``nnx.Param`` nodes or pure
      arrays), an ``nnx.Module`` (its ``nnx.Param`` state is used) or any
      pytree of arrays.
    exclude_names: leaf names never decayed (e.g. add ``"embedding"``).
    min_ndim: leaves with fewer dimensions are never decayed.

  Returns:
    A pytree of bools with the structure of ``params``, where every
    ``nnx.Variable`` is replaced by a single bool; usable as ``mask=`` in any
    optimizer of this library or in optax.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
    ...           "LayerNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
    >>> dopt.weight_decay_mask(params)
    {'Dense_0': {'bias': False, 'kernel': True}, 'LayerNorm_0': {'bias': False, 'scale': False}}
  """
  if "flax" in sys.modules:
    from flax import nnx

    if isinstance(params, nnx.Module):
      params = nnx.state(params, nnx.Param)
  if isinstance(params, (int, float)) or (hasattr(params, "ndim") and params.ndim == 0):
    # optax.inject_hyperparams without static_args=("mask",) calls a callable
    # mask on the step count as if it were a schedule; answering False would
    # silently turn weight decay off.
    raise TypeError(
      "weight_decay_mask got a scalar instead of a params pytree. " + MASK_AS_SCHEDULE_HINT
    )
  excluded = frozenset(_check_mask_options(exclude_names, min_ndim))
  leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None or is_nnx_variable(x))
  decisions = [
    leaf is not None
    and role.kind not in ("bias", "norm")
    and _leaf_ndim(leaf) >= min_ndim
    and role.name not in excluded
    for leaf, role in zip(leaves, leaf_roles(params), strict=True)
  ]
  return jax.tree.unflatten(treedef, decisions)


def make_weight_decay_mask(
  *,
  exclude_names: Collection[str] = DEFAULT_EXCLUDED_NAMES,
  min_ndim: int = 2,
) -> Callable[[Any], Any]:
  """:func:`weight_decay_mask` with other defaults, as a callable mask.

  Args:
    exclude_names: leaf names never decayed, matched against the last key of each leaf's path.
    min_ndim: leaves with fewer dimensions are not decayed.

  Returns:
    A callable ``mask(params)`` for the ``mask=`` argument of the aliases and blocks.

  Example:
    >>> import decoupled_optax as dopt
    >>> mask = dopt.make_weight_decay_mask(exclude_names=("bias", "scale", "embedding"))
    >>> tx = dopt.adamw(1e-3, 1e-5, mask=mask, weight_decay_convention="paper")
  """
  names = _check_mask_options(exclude_names, min_ndim)

  def mask(params: Any) -> Any:
    return weight_decay_mask(params, exclude_names=names, min_ndim=min_ndim)

  return mask
