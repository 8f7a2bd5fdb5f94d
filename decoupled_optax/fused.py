r"""AdamP/SGDP's first pass in one read of the arrays on the CPU.

On a CPU, XLA emits each reduction as its own kernel, so AdamP's four
per-channel statistics g.w, |g|^2, |w|^2 and w.u (u the Adam or momentum
direction) each cost a pass over the arrays: 18 array passes per step
against optax.adamw's 10. :func:`fused_scale_invariance` does the moment
update and the four statistics in one pass, with a small C++ kernel called
through the XLA FFI (``decoupled_optax._cpu_kernels``, built at install when a
C++ compiler is present). XLA then fuses the projection, the weight decay and
the parameter update into one elementwise pass: the two-pass floor of 10.

It computes exactly what the generic chain computes::

  detect_scale_invariance(optax.chain(direction.transform(), tail))

where ``direction`` is a :class:`decoupled_optax.directions.Direction` (Adam,
or optax's momentum ``trace``) and ``tail`` starts with
:func:`decoupled_optax.project_out_radial`. The state is that chain's state,
so checkpoints move between the two. The kernel runs for float32 leaves with
``ndim > 1`` when the step is lowered for the CPU (in a process whose default
backend is the CPU, the only platform it can lower for; elsewhere chosen with
:func:`jax.lax.platform_dependent`) and, by default, when the process has a
single CPU device; everything else (other dtypes and leaves, GPUs and TPUs,
sharded CPU runs, a missing kernel) runs the generic chain.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.core import ShapedArray

from decoupled_optax._layout import normalized_axes
from decoupled_optax._projection_options import RadialProjection, check_projection
from decoupled_optax._trees import require_params
from decoupled_optax._validation import check_transform, describe
from decoupled_optax.conventions import user_stacklevel
from decoupled_optax.directions import AdamDirection, Direction, MomentumDirection
from decoupled_optax.projection import (
  ChannelStatistics,
  check_update_inputs,
  detect_scale_invariance,
  detected_update,
  projected_channel_axes,
  projection_extra_args,
)

_TARGET_PREFIX = "decoupled_optax_first_pass_"


class CPUKernelWarning(RuntimeWarning):
  """AdamP/SGDP run without the fused CPU kernel, about 2.5x slower on a CPU.

  Raised once per process, on a single CPU device, when the kernel is missing and
  ``cpu_kernel=None``; the numbers are the same. ``cpu_kernel=False`` silences it, and so
  does a warning filter:

  Example:
    >>> import warnings
    >>> import decoupled_optax as dopt
    >>> with warnings.catch_warnings():
    ...   warnings.simplefilter("ignore", dopt.CPUKernelWarning)
    ...   tx = dopt.adamp(1e-3, 1e-2, weight_decay_convention="torch")
    >>> tx = dopt.adamp(1e-3, 1e-2, weight_decay_convention="torch", cpu_kernel=False)
  """


@functools.cache
def _kernel_status() -> tuple[frozenset[str], str]:
  """Registers the FFI handlers once: the direction kinds whose kernel works here, and why not.

  Each kernel runs once on a tiny leaf against optax, so that a kernel this
  jaxlib cannot call (an FFI it does not know) falls back to the generic
  chain with a warning instead of failing inside a training step.
  """
  try:
    from decoupled_optax import _cpu_kernels  # type: ignore[attr-defined]
  except ImportError:
    return frozenset(), (
      "the C++ extension decoupled_optax._cpu_kernels was not built (installing needs a "
      "C++17 compiler and the Python headers, e.g. `apt install g++ python3-dev`, then "
      "reinstall decoupled_optax)"
    )
  try:
    handlers = _cpu_kernels.handlers()
    for kind, capsule in handlers.items():
      jax.ffi.register_ffi_target(_TARGET_PREFIX + kind, capsule, platform="cpu")
  except AttributeError as error:  # a jax without jax.ffi
    return frozenset(), f"this jax cannot register FFI targets ({error})"
  working = [
    direction.kind
    for direction in (AdamDirection(), MomentumDirection())
    if direction.kind in handlers and _self_test(direction)
  ]
  return frozenset(working), "the kernel does not run with this jaxlib (see the warning above)"


def _registered_kernels() -> frozenset[str]:
  return _kernel_status()[0]


def cpu_kernel_available() -> bool:
  """Whether the fused CPU kernel was built and could be registered with XLA.

  Returns:
    True when ``adamp``/``sgdp`` can run their first pass in the C++ kernel on the CPU.

  Example:
    >>> import decoupled_optax as dopt
    >>> available = dopt.cpu_kernel_available()  # True for a wheel or a build with a compiler
    >>> isinstance(available, bool)
    True
  """
  return bool(_registered_kernels())


def _self_test(direction: Direction) -> bool:
  """One step of the kernel on a tiny leaf against the direction's optax transform."""
  grad = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], np.float32)
  param = np.array([[2.0, 1.0, -1.0], [0.5, -0.5, 4.0]], np.float32)
  try:
    # Everything in the block: the first optimizer may be built inside a jit,
    # where any jnp value would otherwise be a tracer.
    with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
      transform = direction.transform()
      state = transform.init(param)
      expected, new_state = transform.update(grad, state, param)
      # The FFI call alone: a custom_jvp would bind to an enclosing vmap's trace.
      moments, statistics = _ffi_first_pass(
        direction,
        _layout(param.shape, (1,)),
        jnp.asarray(grad),
        jnp.asarray(param),
        tuple(direction.moments(state)),
        jnp.stack(direction.kernel_scalars(new_state)),
      )
      ok = all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
        for a, b in zip(moments, direction.moments(new_state), strict=True)
      ) and np.allclose(
        np.asarray(statistics)[:4],
        np.stack(
          [(grad * param).sum(0), (grad * grad).sum(0), (param * param).sum(0)]
          + [(param * np.asarray(expected)).sum(0)]
        ),
        rtol=1e-5,
      )
  except Exception as error:  # noqa: BLE001 - any failure means: do not use the kernel
    warnings.warn(
      f"decoupled_optax: the fused CPU kernel ({direction.kind}) does not run with this "
      f"jaxlib ({error!r}); AdamP/SGDP use the generic chain.",
      RuntimeWarning,
      stacklevel=2,
    )
    return False
  return bool(ok)


@functools.cache
def _warn_missing_kernel() -> None:
  """Once per process: AdamP/SGDP on a lone CPU device without the kernel."""
  warnings.warn(
    "decoupled_optax: AdamP/SGDP run on a CPU without the fused CPU kernel, about 2.5x "
    f"slower per update step, because {_kernel_status()[1]}. The numbers are the same. "
    "Pass cpu_kernel=False to silence this.",
    CPUKernelWarning,
    stacklevel=user_stacklevel(),
  )


def _single_cpu_device() -> bool:
  try:
    return jax.device_count("cpu") == 1
  except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu)
    return False


def _default_backend_is_cpu() -> bool:
  try:
    return jax.default_backend() == "cpu"
  except RuntimeError:
    return False


def _uses_kernel(direction: Direction, cpu_kernel: bool | None) -> bool:
  """The one decision, at construction, whether the CPU may run the kernel at all."""
  available = direction.kind in _registered_kernels()
  if cpu_kernel is True and not available:
    raise RuntimeError(
      f"cpu_kernel=True, but the fused CPU kernel is not available: {_kernel_status()[1]}. "
      "Pass cpu_kernel=None to use it only where it is available."
    )
  if cpu_kernel is None:
    cpu_kernel = _single_cpu_device()
    if cpu_kernel and not available and _default_backend_is_cpu():
      _warn_missing_kernel()
  return bool(cpu_kernel) and available


class _Layout(NamedTuple):
  """A leaf viewed as ``(outer, channels, inner)``: the kernel's attributes."""

  outer: int
  channels: int
  inner: int


def _layout(shape: tuple[int, ...], channel_axes: int | tuple[int, ...]) -> _Layout:
  """The kernel's view of a leaf whose channel axes are contiguous."""
  axes = normalized_axes(channel_axes, len(shape))
  first, last = axes[0], axes[-1] + 1
  return _Layout(math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:]))


def _contiguous(axes: tuple[int, ...]) -> bool:
  return axes == tuple(range(axes[0], axes[0] + len(axes)))


def _reference_first_pass(
  direction: Direction,
  scalars: Any,
  layout: _Layout,
  grad: jax.Array,
  param: jax.Array,
  moments: tuple[jax.Array, ...],
) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """The kernel's results in jnp, ``(new moments, statistics (4, channels))``: its derivatives."""
  new_moments = direction.updated_moments(scalars, grad, moments)
  update = direction.from_moments(scalars, grad, new_moments)
  as_rows = lambda x: x.reshape(layout)  # noqa: E731
  g, w, u = as_rows(grad), as_rows(param), as_rows(update)
  statistics = [jnp.sum(a * b, axis=(0, 2)) for a, b in ((g, w), (g, g), (w, w), (w, u))]
  return tuple(new_moments), jnp.stack(statistics)


def _ffi_first_pass(
  direction: Direction,
  layout: _Layout,
  grad: jax.Array,
  param: jax.Array,
  moments: tuple[jax.Array, ...],
  stacked_scalars: jax.Array,
) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """The FFI call itself: ``(new moments, statistics (4, channels))``; no derivatives."""
  moment_shapes = [jax.ShapeDtypeStruct(param.shape, jnp.float32) for _ in moments]
  *new_moments, statistics = jax.ffi.ffi_call(
    _TARGET_PREFIX + direction.kind,
    (*moment_shapes, jax.ShapeDtypeStruct((4, layout.channels), jnp.float32)),
    # The moments are updated in place: operand 2 + k (after grad and param) is result k.
    input_output_aliases={2 + k: k for k in range(len(moments))},
    vmap_method="sequential",
  )(grad, param, *moments, stacked_scalars, nesterov=direction.nesterov, **layout._asdict())
  return tuple(new_moments), statistics


def _kernel_call(
  direction: Direction,
  scalars: Any,
  grad: jax.typing.ArrayLike,
  param: jax.typing.ArrayLike,
  moments: tuple[jax.typing.ArrayLike, ...],
  channel_axes: int | tuple[int, ...],
) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  """One leaf through the kernel: ``(new moments, direction, statistics (4, channels))``.

  The direction is recomputed from the new moments with the kernel's formula
  (:meth:`Direction.from_moments`), so XLA fuses it into the final update.
  The FFI call has no derivatives: its rule is the JVP of the same
  computation in jnp (:meth:`Direction.updated_moments`), so gradients,
  hypergradients and forward-mode derivatives flow through the fused step.
  """
  grad, param = jnp.asarray(grad), jnp.asarray(param)
  layout = _layout(param.shape, channel_axes)
  rebuild = type(scalars)
  first_pass = jax.custom_jvp(functools.partial(_ffi_first_pass, direction, layout))

  @first_pass.defjvp
  def first_pass_jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    reference = lambda g, w, m, s: _reference_first_pass(  # noqa: E731
      direction, rebuild(*s), layout, g, w, m
    )
    _, out_tangents = jax.jvp(reference, primals, tangents)
    return first_pass(*primals), out_tangents

  new_moments, statistics = first_pass(grad, param, tuple(moments), jnp.stack(scalars))
  return new_moments, direction.from_moments(scalars, grad, new_moments), statistics


def _plain_type(x: jax.Array) -> bool:
  """Whether ``x``'s type is just shape and dtype: no mesh, no varying manual axes.

  The kernel's results have plain types; a leaf typed with a mesh (under
  ``jax.set_mesh``, Explicit axes, or inside ``shard_map``) keeps the generic path.
  """
  aval = jax.typeof(x)
  return aval == ShapedArray(aval.shape, aval.dtype)


class _FlatLeaves(NamedTuple):
  """The update's leaves, flattened once: grads, params and, per leaf, its moments."""

  treedef: Any
  grads: list[Any]
  params: list[Any]
  moments: list[tuple[Any, ...]]


def _flat_leaves(
  direction: Direction, updates: Any, direction_state: Any, params: Any
) -> _FlatLeaves:
  treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
  moments = [treedef.flatten_up_to(m) for m in direction.moments(direction_state)]
  return _FlatLeaves(
    treedef,
    treedef.flatten_up_to(updates),
    treedef.flatten_up_to(params),
    list(zip(*moments, strict=True)) if moments else [() for _ in range(treedef.num_leaves)],
  )


def _kernel_takes(
  grad: Any, param: Any, moments: tuple[Any, ...], channel_axes: tuple[int, ...] | None
) -> bool:
  """Which leaves the kernel takes: projected on contiguous axes, float32 throughout, plain types."""
  return (
    grad is not None
    and channel_axes is not None
    and _contiguous(channel_axes)
    and all(x.dtype == jnp.float32 and _plain_type(x) for x in (grad, param, *moments))
  )


def fused_scale_invariance(
  direction: Direction,
  tail: optax.GradientTransformation,
  projection: RadialProjection | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``detect_scale_invariance(chain(direction.transform(), tail))``, fused on the CPU.

  The first pass reads :math:`g, w` and the moments once, writes the moments
  and accumulates, per output channel,

  .. math:: g \cdot w, \quad \|g\|^2, \quad \|w\|^2, \quad w \cdot u

  with :math:`u` the direction; the projection's coefficient follows from
  them, and XLA fuses :math:`u - w c`, the decay and the learning rate into
  the parameter update.

  Args:
    direction: a :class:`decoupled_optax.AdamDirection` or
      :class:`decoupled_optax.MomentumDirection`.
    tail: the rest of the chain, starting with
      :func:`decoupled_optax.project_out_radial`.
    projection: the test's options, a :class:`decoupled_optax.RadialProjection`,
      as in :func:`decoupled_optax.detect_scale_invariance`. Its
      ``cpu_kernel``: whether the CPU runs the kernel. None (default): when
      the process sees a single CPU device, the usual CPU setup. With several
      CPU devices (``--xla_force_host_platform_device_count``, multi-host
      CPU clusters) GSPMD may shard values whose types do not say so, and
      would gather them for the kernel and return its results replicated, so
      the generic chain runs there unless True is given. Leaves whose types
      carry a mesh (sharded ``jit`` inputs, ``jax.set_mesh``, ``shard_map``)
      take the generic chain in any case. False: the generic chain everywhere.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with the generic
    chain's state.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import decoupled_optax as dopt
    >>> adamp = dopt.fused_scale_invariance(
    ...     dopt.AdamDirection(b1=0.9, b2=0.999, eps=1e-8),
    ...     optax.chain(dopt.project_out_radial(), optax.scale(-1e-3)))
    >>> params = {"kernel": jnp.ones((3, 3, 4, 8))}
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(adamp.update)(grads, adamp.init(params), params)

  Reference: `Heo et al., ICLR 2021 <https://arxiv.org/abs/2006.08217>`_, Algorithm 1; the official
  `adamp <https://github.com/clovaai/AdamP>`_ package.
  """
  if not isinstance(direction, Direction):
    raise TypeError(
      f"direction must be an AdamDirection or a MomentumDirection, got {describe(direction)}."
    )
  check_transform("tail", tail)
  projection = check_projection(projection)
  direction_transform = direction.transform()
  inner = optax.with_extra_args_support(optax.chain(direction_transform, tail))
  generic = detect_scale_invariance(inner, dataclasses.replace(projection, cpu_kernel=None))
  if not _uses_kernel(direction, projection.cpu_kernel):
    return generic
  chain = _FusedChain(
    direction,
    direction_transform,
    optax.with_extra_args_support(tail),
    inner,
    projection,
  )

  def update_fn(
    updates: optax.Updates,
    state: Any,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, Any]:
    return _dispatch(chain, updates, state, params, extra_args)

  return optax.GradientTransformationExtraArgs(generic.init, update_fn)


class _FusedChain(NamedTuple):
  """What the fused step is made of, built once by :func:`fused_scale_invariance`."""

  direction: Direction
  direction_transform: optax.GradientTransformation
  tail: optax.GradientTransformationExtraArgs
  inner: optax.GradientTransformationExtraArgs  # chain(direction_transform, tail)
  projection: RadialProjection

  def generic_update(self, updates: Any, state: Any, params: Any, extra_args: Any) -> Any:
    """The generic chain's update (detect_scale_invariance's) on checked inputs."""
    return detected_update(self.inner, self.projection, updates, state, params, extra_args)


class _FirstPass(NamedTuple):
  """The directions and moments of every leaf, and the statistics the kernel took."""

  directions: list[Any]
  direction_state: Any
  moments: list[list[Any]]
  known_statistics: dict[int, ChannelStatistics]


def _first_pass(
  chain: _FusedChain,
  leaves: _FlatLeaves,
  direction_state: Any,
  params: Any,
  fused: list[bool],
  flat_channel_axes: list[tuple[int, ...] | None],
) -> _FirstPass:
  """The kernel for the leaves it takes; optax's own direction update for the others."""
  direction, treedef = chain.direction, leaves.treedef
  without_fused = lambda flat: treedef.unflatten(  # noqa: E731
    [None if f else x for f, x in zip(fused, flat, strict=True)]
  )
  directions, new_direction_state = chain.direction_transform.update(
    without_fused(leaves.grads),
    direction.with_moments(
      direction_state, [without_fused(m) for m in zip(*leaves.moments, strict=True)]
    ),
    params,
  )
  flat_directions = treedef.flatten_up_to(directions)
  flat_new_moments = [
    list(treedef.flatten_up_to(m)) for m in direction.moments(new_direction_state)
  ]
  scalars = direction.kernel_scalars(new_direction_state)  # this step's
  known_statistics = {}
  for i in (i for i, f in enumerate(fused) if f):
    moments, flat_directions[i], statistics = _kernel_call(
      direction,
      scalars,
      leaves.grads[i],
      leaves.params[i],
      leaves.moments[i],
      flat_channel_axes[i],  # type: ignore[arg-type]
    )
    known_statistics[i] = ChannelStatistics(*statistics)
    for new, moment in zip(flat_new_moments, moments, strict=True):
      new[i] = moment
  return _FirstPass(flat_directions, new_direction_state, flat_new_moments, known_statistics)


def _fused_update(
  chain: _FusedChain,
  updates: Any,
  state: tuple[Any, Any],
  params: Any,
  extra_args: dict[str, Any],
  fused: list[bool],
  flat_channel_axes: list[tuple[int, ...] | None],
) -> tuple[Any, tuple[Any, Any]]:
  """The first pass, then the one projection decision, then the tail of the chain."""
  direction_state, tail_state = state
  leaves = _flat_leaves(chain.direction, updates, direction_state, params)
  first = _first_pass(chain, leaves, direction_state, params, fused, flat_channel_axes)
  extra_args = {
    **extra_args,
    **projection_extra_args(
      updates,
      params,
      chain.projection,
      flat_channel_axes=flat_channel_axes,
      known_statistics=first.known_statistics,
    ),
  }
  treedef = leaves.treedef
  updates, tail_state = chain.tail.update(
    treedef.unflatten(first.directions), tail_state, params, **extra_args
  )
  new_moments = [treedef.unflatten(m) for m in first.moments]
  return updates, (chain.direction.with_moments(first.direction_state, new_moments), tail_state)


def _dispatch(
  chain: _FusedChain, updates: Any, state: Any, params: Any, extra_args: dict[str, Any]
) -> tuple[Any, Any]:
  """Which leaves the kernel takes, and which path runs: fused, generic, or per platform."""
  check_update_inputs(updates, params)
  fused, flat_channel_axes = _fused_leaves(chain, updates, state, params)
  if not any(fused):
    return chain.generic_update(updates, state, params, extra_args)

  def fused_step(u: Any, s: Any, p: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
    return _fused_update(chain, u, s, p, extra, fused, flat_channel_axes)

  if _default_backend_is_cpu():
    # A process whose default backend is the CPU has no other platform to
    # lower for: trace the fused step alone (platform_dependent traces both).
    return fused_step(updates, state, params, extra_args)
  return jax.lax.platform_dependent(
    updates,
    state,
    params,
    extra_args,
    cpu=fused_step,
    default=chain.generic_update,
  )


def _fused_leaves(
  chain: _FusedChain, updates: Any, state: Any, params: Any
) -> tuple[list[bool], list[tuple[int, ...] | None]]:
  """Per leaf, whether the kernel takes it, and its channel axes.

  Decided on the caller's types: the branches of platform_dependent are traced
  with new arguments.
  """
  params = require_params(params)
  leaves = _flat_leaves(chain.direction, updates, state[0], params)
  flat_channel_axes = projected_channel_axes(
    params,
    leaves.treedef,
    channel_axis=chain.projection.channel_axis,
    projection_mask=chain.projection.projection_mask,
  )
  fused = [
    _kernel_takes(*leaf)
    for leaf in zip(leaves.grads, leaves.params, leaves.moments, flat_channel_axes, strict=True)
  ]
  return fused, flat_channel_axes
