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

  detect_scale_invariance(optax.chain(direction, *tail))

where ``direction`` is Adam (``optax.scale_by_adam`` or the official
Nesterov variant) or optax's momentum ``trace``, and the first of ``tail`` is
:func:`decoupled_optax.project_out_radial`. The state is that chain's state,
so checkpoints move between the two. The kernel runs for float32 leaves with
``ndim > 1`` when the step is lowered for the CPU (chosen with
:func:`jax.lax.platform_dependent`) and, by default, when the process has a
single CPU device; everything else (other dtypes and leaves, GPUs and TPUs,
sharded CPU runs, a missing kernel) runs the generic chain.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from decoupled_optax._validation import (
  check_bool,
  check_dtype,
  check_non_negative,
  check_transform,
  check_unit_interval,
  describe,
)
from decoupled_optax.conventions import user_stacklevel
from decoupled_optax.directions import scale_by_adamp_nesterov
from decoupled_optax.projection import (
  RADIAL_PROJECTORS,
  AxisName,
  _leaf_axis_names,
  _leaf_statistics,
  _projected,
  _projectors,
  check_update_inputs,
  detect_scale_invariance,
)
from decoupled_optax.weight_decay import WEIGHT_DECAY_MULTIPLIERS

_TARGET_PREFIX = "decoupled_optax_first_pass_"


class CPUKernelWarning(RuntimeWarning):
  """AdamP/SGDP run without the fused CPU kernel, about 2.5x slower on a CPU."""


@functools.cache
def _kernel_status() -> tuple[frozenset[str], str]:
  """Registers the FFI handlers once: the direction kinds whose kernel works here, and why not.

  Each kernel runs once on a tiny leaf against NumPy, so that a kernel this
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
  working = []
  for direction in (AdamDirection(), MomentumDirection()):
    if direction.kind in handlers and _self_test(direction):
      working.append(direction.kind)
  return frozenset(working), "the kernel does not run with this jaxlib (see the warning above)"


def _registered_kernels() -> frozenset[str]:
  return _kernel_status()[0]


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


def _default_backend_is_cpu() -> bool:
  try:
    return jax.default_backend() == "cpu"
  except RuntimeError:
    return False


def _self_test(direction: Direction) -> bool:
  grad = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], np.float32)
  param = np.array([[2.0, 1.0, -1.0], [0.5, -0.5, 4.0]], np.float32)
  try:
    # Everything in the block, the count too: under an outer jit (the first
    # optimizer may be built inside one) even jnp.int32(1) would be a tracer.
    with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
      state = direction.state_template(jnp.int32(1))
      moments = tuple(np.full(param.shape, 0.5, np.float32) for _ in direction.moments(state))
      scalars = direction.scalars(state)
      _, _, statistics = _kernel_call(direction, scalars, grad, param, moments, -1)
      expected = np.stack([(grad * param).sum(0), (grad * grad).sum(0), (param * param).sum(0)])
      ok = np.allclose(np.asarray(statistics)[:3], expected, rtol=1e-5)
  except Exception as error:  # noqa: BLE001 - any failure means: do not use the kernel
    warnings.warn(
      f"decoupled_optax: the fused CPU kernel ({direction.kind}) does not run with this "
      f"jaxlib ({error!r}); AdamP/SGDP use the generic chain.",
      RuntimeWarning,
      stacklevel=2,
    )
    return False
  return bool(ok)


def _single_cpu_device() -> bool:
  try:
    return jax.device_count("cpu") == 1
  except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu)
    return False


def cpu_kernel_available() -> bool:
  """Whether the fused CPU kernel was built and could be registered with XLA."""
  return bool(_registered_kernels())


@dataclasses.dataclass(frozen=True)
class AdamDirection:
  """Adam's moments and direction, as ``optax.scale_by_adam`` with ``eps_root=0``.

  ``nesterov`` is the official AdamP's, see
  :func:`decoupled_optax.scale_by_adamp_nesterov`.
  """

  b1: Any = 0.9
  b2: Any = 0.999
  eps: Any = 1e-8
  nesterov: bool = False
  kind = "adam"

  def __post_init__(self) -> None:
    check_unit_interval("b1", self.b1)
    check_unit_interval("b2", self.b2)
    check_non_negative("eps", self.eps)
    check_bool("nesterov", self.nesterov)

  def transform(self) -> optax.GradientTransformation:
    """The optax transform that computes this direction (and keeps its state)."""
    if self.nesterov:
      return scale_by_adamp_nesterov(self.b1, self.b2, self.eps)
    return optax.scale_by_adam(self.b1, self.b2, self.eps)

  def state_template(self, count: jax.Array) -> optax.ScaleByAdamState:
    return optax.ScaleByAdamState(count, None, None)

  def moments(self, state: optax.ScaleByAdamState) -> tuple[Any, Any]:
    return state.mu, state.nu

  def with_moments(self, state: optax.ScaleByAdamState, moments: Sequence[Any]) -> Any:
    return state._replace(mu=moments[0], nu=moments[1])

  def scalars(self, state: optax.ScaleByAdamState) -> dict[str, jax.Array]:
    """The step's scalars, from the state after this update (its step count)."""
    count = state.count
    # 1 - b computed as optax does (in double for Python floats): in float32,
    # 1 - 0.999 is off by 1e-5 relative.
    b1, one_minus_b1, b2, one_minus_b2, eps = (
      jnp.asarray(x, jnp.float32) for x in (self.b1, 1 - self.b1, self.b2, 1 - self.b2, self.eps)
    )
    bias_correction1, bias_correction2 = 1 - b1**count, 1 - b2**count
    kernel = [b1, one_minus_b1, b2, one_minus_b2, eps, bias_correction1, bias_correction2]
    return dict(
      b1=b1,
      one_minus_b1=one_minus_b1,
      eps=eps,
      bias_correction1=bias_correction1,
      bias_correction2=bias_correction2,
      kernel=jnp.stack(kernel),
    )

  def direction(
    self, s: dict[str, jax.Array], grad: jax.Array, moments: Sequence[jax.Array]
  ) -> jax.Array:
    """The direction from the updated moments, as the kernel computes it."""
    mu, nu = moments
    numerator = s["b1"] * mu + s["one_minus_b1"] * grad if self.nesterov else mu
    return (numerator / s["bias_correction1"]) / (jnp.sqrt(nu / s["bias_correction2"]) + s["eps"])


@dataclasses.dataclass(frozen=True)
class MomentumDirection:
  """optax.trace's momentum buffer of raw gradients and PyTorch's Nesterov."""

  decay: Any = 0.9
  nesterov: bool = False
  accumulator_dtype: Any | None = None
  kind = "momentum"

  def __post_init__(self) -> None:
    check_unit_interval("decay", self.decay)
    check_bool("nesterov", self.nesterov)
    check_dtype("accumulator_dtype", self.accumulator_dtype)

  def transform(self) -> optax.GradientTransformation:
    """The optax transform that computes this direction (and keeps its state)."""
    return optax.trace(self.decay, self.nesterov, self.accumulator_dtype)

  def state_template(self, count: jax.Array) -> optax.TraceState:
    del count
    return optax.TraceState(None)

  def moments(self, state: optax.TraceState) -> tuple[Any]:
    return (state.trace,)

  def with_moments(self, state: optax.TraceState, moments: Sequence[Any]) -> Any:
    return state._replace(trace=moments[0])

  def scalars(self, state: optax.TraceState) -> dict[str, jax.Array]:
    """The step's scalars."""
    del state
    decay = jnp.asarray(self.decay, jnp.float32)
    return dict(decay=decay, kernel=decay[None])

  def direction(
    self, s: dict[str, jax.Array], grad: jax.Array, moments: Sequence[jax.Array]
  ) -> jax.Array:
    """The direction from the updated buffer, as the kernel computes it."""
    (trace,) = moments
    return grad + s["decay"] * trace if self.nesterov else trace


Direction = AdamDirection | MomentumDirection


def _layout(shape: tuple[int, ...], channel_axis: int) -> dict[str, Any]:
  axis = channel_axis % len(shape)
  return dict(
    outer=math.prod(shape[:axis]), channels=shape[axis], inner=math.prod(shape[axis + 1 :])
  )


def _kernel_call(
  direction: Direction,
  scalars: dict[str, jax.Array],
  grad: jax.Array,
  param: jax.Array,
  moments: tuple[jax.Array, ...],
  channel_axis: int,
) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  layout = _layout(param.shape, channel_axis)
  moment_shapes = [jax.ShapeDtypeStruct(param.shape, jnp.float32) for _ in moments]
  *new_moments, statistics = jax.ffi.ffi_call(
    _TARGET_PREFIX + direction.kind,
    (*moment_shapes, jax.ShapeDtypeStruct((4, layout["channels"]), jnp.float32)),
    # The moments are updated in place (operands 2, 3 are results 0, 1).
    input_output_aliases={2 + k: k for k in range(len(moments))},
    vmap_method="sequential",
  )(grad, param, *moments, scalars["kernel"], nesterov=direction.nesterov, **layout)
  return tuple(new_moments), direction.direction(scalars, grad, new_moments), statistics


def _first_pass(
  direction: Direction,
  scalars: dict[str, jax.Array],
  grad: jax.Array,
  param: jax.Array,
  moments: tuple[jax.Array, ...],
  channel_axis: int,
) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
  """One leaf through the kernel: ``(new moments, direction, statistics (4, channels))``.

  ``scalars`` are ``direction.scalars(state)``, computed once per step. The
  direction itself is recomputed from the new moments with the kernel's
  formula, so XLA fuses it into the final update.
  """
  if direction.kind not in _registered_kernels():
    raise RuntimeError(f"the fused CPU kernel ({direction.kind}) is not available here.")
  return _kernel_call(direction, scalars, grad, param, moments, channel_axis)


def _plain_type(x: jax.Array) -> bool:
  """Whether ``x``'s type is just shape and dtype: no mesh, no varying manual axes.

  The kernel's results have plain types; a leaf typed with a mesh (under
  ``jax.set_mesh``, Explicit axes, or inside ``shard_map``) keeps the generic path.
  """
  aval = jax.typeof(x)
  return aval == jax.core.ShapedArray(aval.shape, aval.dtype)


def fused_scale_invariance(
  direction: Direction,
  tail: optax.GradientTransformation,
  *,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  eps: float = 1e-8,
  channel_axis: int = -1,
  axis_name: AxisName = None,
  param_specs: Any = None,
  cpu_kernel: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``detect_scale_invariance(chain(direction.transform(), tail))``, fused on the CPU.

  The first pass reads :math:`g, w` and the moments once, writes the moments
  and accumulates, per output channel,

  .. math:: g \cdot w, \quad \|g\|^2, \quad \|w\|^2, \quad w \cdot u

  with :math:`u` the direction; the projection's coefficient follows from
  them, and XLA fuses :math:`u - w c`, the decay and the learning rate into
  the parameter update.

  Args:
    direction: :class:`AdamDirection` or :class:`MomentumDirection`.
    tail: the rest of the chain, starting with
      :func:`decoupled_optax.project_out_radial`.
    delta, wd_ratio, eps, channel_axis, axis_name, param_specs: as in
      :func:`decoupled_optax.detect_scale_invariance`.
    cpu_kernel: whether the CPU runs the kernel. None (default): when the
      process sees a single CPU device, the usual CPU setup. With several
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

  Reference: Heo et al., ICLR 2021, Algorithm 1; official ``adamp`` package.
  """
  if not isinstance(direction, (AdamDirection, MomentumDirection)):
    raise TypeError(
      f"direction must be an AdamDirection or a MomentumDirection, got {describe(direction)}."
    )
  check_transform("tail", tail)
  check_bool("cpu_kernel", cpu_kernel, optional=True)
  detection = dict(delta=delta, wd_ratio=wd_ratio, eps=eps, channel_axis=channel_axis)
  direction_transform = direction.transform()
  chain = optax.chain(direction_transform, tail)
  generic = detect_scale_invariance(
    chain, **detection, axis_name=axis_name, param_specs=param_specs
  )
  if cpu_kernel is True and direction.kind not in _registered_kernels():
    raise RuntimeError(
      f"cpu_kernel=True, but the fused CPU kernel is not available: {_kernel_status()[1]}. "
      "Pass cpu_kernel=None to use it only where it is available."
    )
  if cpu_kernel is None:
    cpu_kernel = _single_cpu_device()
    if cpu_kernel and direction.kind not in _registered_kernels() and _default_backend_is_cpu():
      _warn_missing_kernel()
  if not cpu_kernel or direction.kind not in _registered_kernels():
    return generic
  tail = optax.with_extra_args_support(tail)

  def fusable_leaves(updates: optax.Updates, state: Any, params: optax.Params) -> list[bool]:
    """Which leaves the kernel takes: projected (ndim > 1, non-empty), float32, plain types."""
    treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
    moments = [treedef.flatten_up_to(t) for t in direction.moments(state[0])]
    return [
      g is not None
      and _projected(w)
      and all(x.dtype == jnp.float32 and _plain_type(x) for x in (g, w, *old))
      for g, w, *old in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(params), *moments, strict=True
      )
    ]

  def fused_update(
    updates: optax.Updates,
    state: Any,
    params: optax.Params,
    fusable: list[bool],
    **extra_args: Any,
  ) -> tuple[optax.Updates, Any]:
    direction_state, tail_state = state
    is_none = lambda x: x is None  # noqa: E731
    treedef = jax.tree.structure(updates, is_leaf=is_none)
    skip_fused = lambda tree: treedef.unflatten(  # noqa: E731
      [None if f else x for f, x in zip(fusable, treedef.flatten_up_to(tree), strict=True)]
    )
    # optax's own direction update for the leaves the kernel does not take.
    directions, new_direction_state = direction_transform.update(
      skip_fused(updates),
      direction.with_moments(
        direction_state, [skip_fused(t) for t in direction.moments(direction_state)]
      ),
      params,
    )
    flat_grads = treedef.flatten_up_to(updates)
    flat_params = treedef.flatten_up_to(params)
    flat_directions = treedef.flatten_up_to(directions)
    flat_old = [treedef.flatten_up_to(t) for t in direction.moments(direction_state)]
    flat_new = [treedef.flatten_up_to(t) for t in direction.moments(new_direction_state)]
    flat_names = _leaf_axis_names(treedef, flat_grads, params, axis_name, param_specs, channel_axis)
    flat_statistics: list[jax.Array | None] = [None] * len(flat_grads)
    scalars = direction.scalars(new_direction_state)
    for i, (g, w) in enumerate(zip(flat_grads, flat_params, strict=True)):
      if fusable[i]:
        old = tuple(t[i] for t in flat_old)
        new, flat_directions[i], flat_statistics[i] = _first_pass(
          direction, scalars, g, w, old, channel_axis
        )
        for t, moment in zip(flat_new, new, strict=True):
          t[i] = moment
      else:
        flat_statistics[i] = _leaf_statistics(g, w, channel_axis)
    projectors, multipliers = _projectors(
      flat_statistics, flat_grads, flat_params, flat_names, batch_leaves=True, **detection
    )
    new_direction_state = direction.with_moments(
      new_direction_state, [treedef.unflatten(t) for t in flat_new]
    )
    extra_args[RADIAL_PROJECTORS] = treedef.unflatten(projectors)
    extra_args[WEIGHT_DECAY_MULTIPLIERS] = treedef.unflatten(multipliers)
    updates, tail_state = tail.update(
      treedef.unflatten(flat_directions), tail_state, params, **extra_args
    )
    return updates, (new_direction_state, tail_state)

  def update_fn(
    updates: optax.Updates,
    state: Any,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, Any]:
    check_update_inputs(updates, params, channel_axis)
    # Decided here, on the caller's types, not on the branches' closures.
    fusable = fusable_leaves(updates, state, params)
    if not any(fusable):
      return generic.update(updates, state, params, **extra_args)

    # The FFI call has no derivatives; differentiating the step (meta-learning,
    # unrolled hypergradients) gets the generic chain's, of the same function.
    def generic_step(u: Any, s: Any, p: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
      return generic.update(u, s, p, **extra)

    def fused_step(u: Any, s: Any, p: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
      # Neither a custom_jvp function nor its rule may close over tracers (such
      # as the hyperparameters that inject_hyperparams traces), so both are
      # closure-converted. The generic chain closes over the same values; the
      # rule finds them among the fused step's by identity, and their tangents
      # carry the hyperparameters' derivatives.
      closed, constants = jax.closure_convert(
        lambda u, s, p, extra: fused_update(u, s, p, fusable, **extra), u, s, p, extra
      )
      position = {id(c): i for i, c in enumerate(constants)}
      differentiable = jax.custom_jvp(lambda constants, *args: closed(*args, *constants))

      @differentiable.defjvp
      def rule(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
        generic_closed, generic_constants = jax.closure_convert(generic_step, *primals[1:])
        missing = [c for c in generic_constants if id(c) not in position]
        if missing:
          raise NotImplementedError(
            "decoupled_optax: the generic chain closes over values the fused CPU step does "
            "not; differentiate with cpu_kernel=False."
          )
        index = [position[id(c)] for c in generic_constants]
        return jax.jvp(
          generic_closed,
          (*primals[1:], *(primals[0][i] for i in index)),
          (*tangents[1:], *(tangents[0][i] for i in index)),
        )

      return differentiable(tuple(constants), u, s, p, extra)

    return jax.lax.platform_dependent(
      updates,
      state,
      params,
      extra_args,
      cpu=fused_step,
      default=generic_step,
    )

  return optax.GradientTransformationExtraArgs(generic.init, update_fn)
