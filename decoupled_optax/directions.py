"""Update directions: AdamP's official Nesterov Adam, and the directions the fused CPU pass takes.

:class:`Direction` is the abstract direction of AdamP/SGDP's fused first pass
(:func:`decoupled_optax.fused_scale_invariance`): its optax transform (the
generic path, whose state both paths keep) and exactly what the C++ kernel
needs to compute the same thing, the moments in that state, the step's
scalars in the kernel's order, and the direction's formula.
:class:`AdamDirection` and :class:`MomentumDirection` are its two final
subclasses, one per kernel.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, cast, final

import jax
import jax.numpy as jnp
import optax

from decoupled_optax._validation import (
  check_bool,
  check_dtype,
  check_non_negative,
  check_unit_interval,
)


def scale_by_adamp_nesterov(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: jnp.dtype | None = None,
) -> optax.GradientTransformation:
  r"""Adam with the Nesterov step of the official AdamP code.

  .. math::

    d_t = \frac{(\beta_1 m_t + (1 - \beta_1) g_t) / (1 - \beta_1^t)}
               {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

  This is not optax's NAdam (``optax.scale_by_adam(nesterov=True)``), which
  bias-corrects the momentum term with ``1 - beta1^(t+1)`` and the gradient
  term with ``1 - beta1^t``. The moments and their bookkeeping are
  ``optax.scale_by_adam``'s own; the state is ``optax.ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.scale_by_adamp_nesterov()
    >>> u, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
    >>> [round(float(x), 4) for x in u["w"]]  # (0.9 * 0.1 + 0.1) / 0.1 / 1
    [1.9, 1.9]

  Reference: official ``adamp`` package 0.3.0, ``AdamP.step`` with ``nesterov=True``.
  """
  check_unit_interval("b1", b1)
  check_unit_interval("b2", b2)
  check_non_negative("eps", eps)
  check_non_negative("eps_root", eps_root)
  check_dtype("mu_dtype", mu_dtype)
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    _, new_state = adam.update(updates, state, params)
    state = cast(optax.ScaleByAdamState, new_state)
    lookahead = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    lookahead_hat = optax.tree.bias_correction(lookahead, b1, state.count)
    nu_hat = optax.tree.bias_correction(state.nu, b2, state.count)
    directions = jax.tree.map(
      lambda m, v, g: (m / (jnp.sqrt(v + eps_root) + eps)).astype(g.dtype),
      lookahead_hat,
      nu_hat,
      updates,
    )
    return directions, state

  return optax.GradientTransformation(adam.init, update_fn)


class AdamKernelScalars(NamedTuple):
  """The Adam kernel's scalars for one step. The field order is the C++ contract.

  ``csrc/radial_first_pass.cc`` (``AdamFirstPassImpl``) reads them as one
  float32 vector in this order.
  """

  b1: jax.Array
  one_minus_b1: jax.Array
  b2: jax.Array
  one_minus_b2: jax.Array
  eps: jax.Array
  inverse_bias_correction1: jax.Array  # 1 / (1 - b1^t)
  inverse_bias_correction2: jax.Array  # 1 / (1 - b2^t)


class MomentumKernelScalars(NamedTuple):
  """The momentum kernel's scalars (``MomentumFirstPassImpl``): the decay mu."""

  decay: jax.Array


class Direction(abc.ABC):
  """A direction that AdamP/SGDP's fused CPU pass computes in C++.

  Attributes:
    kind: the name of its kernel (``decoupled_optax_first_pass_<kind>``).
    nesterov: the kernel's Nesterov flag.
  """

  kind: ClassVar[str]
  nesterov: bool

  @abc.abstractmethod
  def transform(self) -> optax.GradientTransformation:
    """The optax transform of this direction: the generic path, whose state both paths keep."""

  @abc.abstractmethod
  def moments(self, state: Any) -> tuple[Any, ...]:
    """The param-shaped moment trees of the transform's state, in the kernel's order."""

  @abc.abstractmethod
  def with_moments(self, state: Any, moments: Sequence[Any]) -> Any:
    """``state`` with its moments replaced."""

  @abc.abstractmethod
  def kernel_scalars(self, state: Any) -> NamedTuple:
    """The step's scalars, from the state after this update, in the kernel's order."""

  @abc.abstractmethod
  def from_moments(self, scalars: Any, grad: jax.Array, moments: Sequence[jax.Array]) -> jax.Array:
    """The direction from the updated moments: the same float32 formula as the kernel's."""


def _float32(x: Any) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


@final
@dataclasses.dataclass(frozen=True)
class AdamDirection(Direction):
  r"""Adam's moments and direction, as ``optax.scale_by_adam`` with ``eps_root=0``.

  .. math:: u = \frac{\hat m}{\sqrt{\hat v} + \epsilon}, \quad
            \hat m = m / (1 - \beta_1^t), \; \hat v = v / (1 - \beta_2^t)

  With ``nesterov`` the numerator is the official AdamP's
  ``b1 m + (1 - b1) g`` (see :func:`decoupled_optax.scale_by_adamp_nesterov`).

  Args:
    b1: the first moment's decay, in [0, 1).
    b2: the second moment's decay, in [0, 1).
    eps: added to the denominator, >= 0.
    nesterov: the official AdamP's Nesterov step.

  Example:
    >>> import decoupled_optax as dopt
    >>> direction = dopt.AdamDirection(b1=0.9, b2=0.999, nesterov=True)
    >>> tx = direction.transform()  # the generic path's optax transform
  """

  b1: Any = 0.9
  b2: Any = 0.999
  eps: Any = 1e-8
  nesterov: bool = False
  kind: ClassVar[str] = "adam"

  def __post_init__(self) -> None:
    check_unit_interval("b1", self.b1)
    check_unit_interval("b2", self.b2)
    check_non_negative("eps", self.eps)
    check_bool("nesterov", self.nesterov)

  def transform(self) -> optax.GradientTransformation:
    if self.nesterov:
      return scale_by_adamp_nesterov(self.b1, self.b2, self.eps)
    return optax.scale_by_adam(self.b1, self.b2, self.eps)

  def moments(self, state: optax.ScaleByAdamState) -> tuple[Any, Any]:
    return state.mu, state.nu

  def with_moments(self, state: optax.ScaleByAdamState, moments: Sequence[Any]) -> Any:
    mu, nu = moments
    return state._replace(mu=mu, nu=nu)

  def kernel_scalars(self, state: optax.ScaleByAdamState) -> AdamKernelScalars:
    b1, b2 = _float32(self.b1), _float32(self.b2)
    return AdamKernelScalars(
      b1=b1,
      # 1 - b as optax computes it (in double for Python floats): in float32,
      # 1 - 0.999 is off by 1e-5 relative.
      one_minus_b1=_float32(1 - self.b1),
      b2=b2,
      one_minus_b2=_float32(1 - self.b2),
      eps=_float32(self.eps),
      inverse_bias_correction1=1 / (1 - b1**state.count),
      inverse_bias_correction2=1 / (1 - b2**state.count),
    )

  def from_moments(
    self, scalars: AdamKernelScalars, grad: jax.Array, moments: Sequence[jax.Array]
  ) -> jax.Array:
    mu, nu = moments
    numerator = scalars.b1 * mu + scalars.one_minus_b1 * grad if self.nesterov else mu
    # Reciprocal bias corrections, as in the kernel: one division per element.
    return (numerator * scalars.inverse_bias_correction1) / (
      jnp.sqrt(nu * scalars.inverse_bias_correction2) + scalars.eps
    )


@final
@dataclasses.dataclass(frozen=True)
class MomentumDirection(Direction):
  """``optax.trace``'s momentum buffer of raw gradients and PyTorch's Nesterov.

  .. math:: b = \\mu b + g, \\quad u = b \text{ (or } g + \\mu b \text{ with Nesterov)}

  Args:
    decay: the momentum mu, in [0, 1).
    nesterov: PyTorch's Nesterov.
    accumulator_dtype: the buffer's dtype, as in ``optax.trace``.

  Example:
    >>> import decoupled_optax as dopt
    >>> tx = dopt.MomentumDirection(decay=0.9, nesterov=True).transform()
  """

  decay: Any = 0.9
  nesterov: bool = False
  accumulator_dtype: Any | None = None
  kind: ClassVar[str] = "momentum"

  def __post_init__(self) -> None:
    check_unit_interval("decay", self.decay)
    check_bool("nesterov", self.nesterov)
    check_dtype("accumulator_dtype", self.accumulator_dtype)

  def transform(self) -> optax.GradientTransformation:
    return optax.trace(self.decay, self.nesterov, self.accumulator_dtype)

  def moments(self, state: optax.TraceState) -> tuple[Any]:
    return (state.trace,)

  def with_moments(self, state: optax.TraceState, moments: Sequence[Any]) -> Any:
    (trace,) = moments
    return state._replace(trace=trace)

  def kernel_scalars(self, state: optax.TraceState) -> MomentumKernelScalars:
    del state
    return MomentumKernelScalars(decay=_float32(self.decay))

  def from_moments(
    self, scalars: MomentumKernelScalars, grad: jax.Array, moments: Sequence[jax.Array]
  ) -> jax.Array:
    (trace,) = moments
    return grad + scalars.decay * trace if self.nesterov else trace
