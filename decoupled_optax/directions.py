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


def _at_least_float32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _scale_by_adam(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any | None = None,
  nu_dtype: Any | None = None,
  *,
  nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""``optax.scale_by_adam``, whose second moment nu is stored in ``nu_dtype``.

  optax sets the dtype of the first moment only (optax issue #1552): its nu
  starts in the params' dtype and is updated in the gradients'. Here, with
  ``nu_dtype``,

  .. math:: v_t = \operatorname{cast}_{\texttt{nu\_dtype}}
            \left(\beta_2 v_{t-1} + (1 - \beta_2) g_t^2\right)

  is computed in at least float32 (the promoted dtype of the gradient, the
  stored nu and float32), stored in ``nu_dtype`` after every update (so it
  keeps its dtype across steps, under ``lax.scan`` and through checkpoints),
  and the step's direction uses the value before the cast, as optax does for
  mu and ``mu_dtype``. The first moment and the direction's formula are
  optax's, the direction has the dtype optax's would have (the gradient's and
  the first moment's, promoted), and the state is ``optax.ScaleByAdamState``.
  With ``nu_dtype=None`` this is ``optax.scale_by_adam`` itself, bit for bit.

  Private on purpose: the aliases and :class:`AdamDirection` take
  ``nu_dtype``, and ``AdamDirection(nu_dtype=...).transform()`` is the public
  transform for :func:`decoupled_optax.decoupled_chain` or any optax chain;
  a second public ``scale_by_adam`` beside optax's would only invite mixing
  the two up.

  Args:
    b1: the first moment's decay, as in ``optax.scale_by_adam``.
    b2: the second moment's decay, as there.
    eps: added to the denominator, as there.
    eps_root: added inside the square root, as there.
    mu_dtype: the first moment's dtype, as there; None for the params'.
    nu_dtype: the second moment's dtype; None for optax's behaviour.
    nesterov: optax's NAdam, as there.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from decoupled_optax.directions import _scale_by_adam
    >>> tx = _scale_by_adam(nu_dtype=jnp.bfloat16)
    >>> params = {"w": jnp.ones(2)}
    >>> _, state = tx.update(params, tx.init(params))
    >>> state.nu["w"].dtype, state.mu["w"].dtype
    (dtype(bfloat16), dtype('float32'))
  """
  check_unit_interval("b1", b1)
  check_unit_interval("b2", b2)
  check_non_negative("eps", eps)
  check_non_negative("eps_root", eps_root)
  check_dtype("mu_dtype", mu_dtype)
  check_dtype("nu_dtype", nu_dtype)
  check_bool("nesterov", nesterov)
  if nu_dtype is None:
    return optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
  nu_dtype = jax.dtypes.canonicalize_dtype(nu_dtype)

  def init_fn(params: optax.Params) -> optax.ScaleByAdamState:
    return optax.ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params, dtype=nu_dtype),
    )

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    del params
    state = cast(optax.ScaleByAdamState, state)
    # optax's arithmetic, with nu (and the gradient, for nu) promoted first.
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(
      jax.tree.map(_at_least_float32, updates), jax.tree.map(_at_least_float32, state.nu), b2, 2
    )
    count_inc = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        optax.tree.bias_correction(mu, b1, optax.safe_increment(count_inc)),
        optax.tree.bias_correction(updates, b1, count_inc),
      )
    else:
      mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
    directions = jax.tree.map(
      lambda m, v: None if m is None else (m / (jnp.sqrt(v + eps_root) + eps)).astype(m.dtype),
      mu_hat,
      nu_hat,
      is_leaf=lambda x: x is None,
    )
    mu = optax.tree.cast(mu, mu_dtype)
    nu = optax.tree.cast(nu, nu_dtype)
    return directions, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adamp_nesterov(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: jnp.dtype | None = None,
  nu_dtype: jnp.dtype | None = None,
) -> optax.GradientTransformation:
  r"""Adam with the Nesterov step of the official AdamP code.

  .. math::

    d_t = \frac{(\beta_1 m_t + (1 - \beta_1) g_t) / (1 - \beta_1^t)}
               {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

  This is not optax's NAdam (``optax.scale_by_adam(nesterov=True)``), which
  bias-corrects the momentum term with ``1 - beta1^(t+1)`` and the gradient
  term with ``1 - beta1^t``. The moments and their bookkeeping are
  ``optax.scale_by_adam``'s own (with ``nu_dtype``, as in
  :class:`decoupled_optax.AdamDirection`); the state is
  ``optax.ScaleByAdamState``. The direction is computed from the stored
  moments, with nu in at least float32 when ``nu_dtype`` is given, and has the
  gradient's dtype.

  Args:
    b1: the first moment's decay, in [0, 1).
    b2: the second moment's decay, in [0, 1).
    eps: added to the denominator, >= 0.
    eps_root: added inside the square root, >= 0, as in ``optax.scale_by_adam``.
    mu_dtype: the first moment's dtype, as in ``optax.scale_by_adam``; None
      for the params'.
    nu_dtype: the second moment's dtype, kept across updates (optax has no
      such argument); None for the params', as in optax.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp
    >>> import decoupled_optax as dopt
    >>> tx = dopt.scale_by_adamp_nesterov()
    >>> u, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
    >>> [round(float(x), 4) for x in u["w"]]  # (0.9 * 0.1 + 0.1) / 0.1 / 1
    [1.9, 1.9]

  Reference: the official `adamp <https://github.com/clovaai/AdamP>`_ package 0.3.0, ``AdamP.step`` with
  ``nesterov=True``.
  """
  # _scale_by_adam checks its arguments.
  adam = _scale_by_adam(
    b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype
  )

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    _, new_state = adam.update(updates, state, params)
    state = cast(optax.ScaleByAdamState, new_state)
    lookahead = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    lookahead_hat = optax.tree.bias_correction(lookahead, b1, state.count)
    nu = state.nu if nu_dtype is None else jax.tree.map(_at_least_float32, state.nu)
    nu_hat = optax.tree.bias_correction(nu, b2, state.count)
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

  Example:
    >>> import decoupled_optax as dopt
    >>> direction = dopt.MomentumDirection(0.9, nesterov=True)
    >>> isinstance(direction, dopt.Direction), direction.kind
    (True, 'momentum')
    >>> tx = direction.transform()  # its optax transform, for the generic chain
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

  @abc.abstractmethod
  def angular_equilibrium_factor(self) -> Any:
    """``c`` in the angular update at rotational equilibrium, ``sqrt(2 d c)`` (Kosson et al. 2024)."""

  @abc.abstractmethod
  def updated_moments(
    self, scalars: Any, grad: jax.Array, moments: Sequence[jax.Array]
  ) -> tuple[jax.Array, ...]:
    """The kernel's moment update in jnp: its derivative rule (the FFI call has none)."""


def angular_equilibrium_factor(beta: Any, nesterov: bool) -> Any:
  r"""``c`` in the angular update at rotational equilibrium, ``sqrt(2 d c)``, for decoupled decay.

  In Kosson et al.'s random-walk model (2024) a gradient ``g_k``, orthogonal
  to the weight, enters the updates with coefficients ``c_j`` at lags
  ``j = 0, 1, ...``. Balancing the norm the updates add, ``(sum c_j)^2 |g|^2``
  per step, against the ``2 d |w|^2`` a decoupled decay ``d`` removes gives

  .. math:: \angle = \sqrt{2 d \, \frac{\sum_j c_j^2}{(\sum_j c_j)^2}}

  which is ``(1 - b) / (1 + b)`` for Adam's first moment and for heavy-ball
  momentum (``c_j`` proportional to ``b^j``: the paper's AdamW formula), and
  ``(1 - b)^2 ((1 + b)^2 + b^4 / (1 - b^2))`` with Nesterov (``c_0``
  proportional to ``1 + b``, ``c_j`` to ``b^{j+1}``); 1 for plain SGD. The
  paper's SGDM formula, ``sqrt(2 eta lambda / (1 + b))``, is for a decay
  inside the momentum buffer (its code adds ``lambda w`` to the gradient),
  whose per-step effect is ``eta lambda / (1 - b)``: the same prediction.

  Args:
    beta: the momentum (Adam's ``b1``), in [0, 1).
    nesterov: whether the direction takes the Nesterov step.

  Returns:
    ``c``, a float (or an array for a traced ``beta``).

  Example:
    >>> import decoupled_optax as dopt
    >>> round(dopt.angular_equilibrium_factor(0.9, nesterov=False), 6)  # (1 - 0.9) / (1 + 0.9)
    0.052632

  Reference: `Kosson et al., ICML 2024 <https://arxiv.org/abs/2305.17212>`_, Section 3 and
  `epfml/rotational-optimizers <https://github.com/epfml/rotational-optimizers>`_.
  """
  check_unit_interval("beta", beta)
  check_bool("nesterov", nesterov)
  if nesterov:
    return (1 - beta) ** 2 * ((1 + beta) ** 2 + beta**4 / (1 - beta**2))
  return (1 - beta) / (1 + beta)


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

  The moments' dtypes: ``mu_dtype`` as in ``optax.scale_by_adam``, and
  ``nu_dtype``, which optax lacks: nu is updated in at least float32 and
  stored in ``nu_dtype`` after every update, so it keeps that dtype across
  steps; None is optax's behaviour, bit for bit. The fused CPU kernel
  (:func:`decoupled_optax.fused_scale_invariance`) keeps float32 moments, so
  leaves whose moments have another dtype run the generic chain there.

  Args:
    b1: the first moment's decay, in [0, 1).
    b2: the second moment's decay, in [0, 1).
    eps: added to the denominator, >= 0.
    nesterov: the official AdamP's Nesterov step.
    mu_dtype: the first moment's dtype; None for the params'.
    nu_dtype: the second moment's dtype; None for the params'.

  Example:
    >>> import decoupled_optax as dopt
    >>> direction = dopt.AdamDirection(b1=0.9, b2=0.999, nesterov=True)
    >>> tx = direction.transform()  # the generic path's optax transform
    >>> import jax.numpy as jnp
    >>> tx = dopt.AdamDirection(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16).transform()
    >>> tx.init({"w": jnp.zeros(2)}).nu["w"].dtype
    dtype(bfloat16)
  """

  b1: Any = 0.9
  b2: Any = 0.999
  eps: Any = 1e-8
  nesterov: bool = False
  mu_dtype: Any | None = None
  nu_dtype: Any | None = None
  kind: ClassVar[str] = "adam"

  def __post_init__(self) -> None:
    check_unit_interval("b1", self.b1)
    check_unit_interval("b2", self.b2)
    check_non_negative("eps", self.eps)
    check_bool("nesterov", self.nesterov)
    check_dtype("mu_dtype", self.mu_dtype)
    check_dtype("nu_dtype", self.nu_dtype)

  def transform(self) -> optax.GradientTransformation:
    mu_dtype, nu_dtype = self.mu_dtype, self.nu_dtype
    if self.nesterov:
      return scale_by_adamp_nesterov(
        self.b1, self.b2, self.eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype
      )
    return _scale_by_adam(self.b1, self.b2, self.eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

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

  def angular_equilibrium_factor(self) -> Any:
    return angular_equilibrium_factor(self.b1, self.nesterov)

  def updated_moments(
    self, scalars: AdamKernelScalars, grad: jax.Array, moments: Sequence[jax.Array]
  ) -> tuple[jax.Array, ...]:
    mu, nu = moments
    return (
      scalars.b1 * mu + scalars.one_minus_b1 * grad,
      scalars.b2 * nu + scalars.one_minus_b2 * grad * grad,
    )


@final
@dataclasses.dataclass(frozen=True)
class MomentumDirection(Direction):
  r"""``optax.trace``'s momentum buffer of raw gradients and PyTorch's Nesterov.

  .. math:: b = \mu b + g, \quad u = b \text{ (or } g + \mu b \text{ with Nesterov)}

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

  def angular_equilibrium_factor(self) -> Any:
    return angular_equilibrium_factor(self.decay, self.nesterov)

  def updated_moments(
    self, scalars: MomentumKernelScalars, grad: jax.Array, moments: Sequence[jax.Array]
  ) -> tuple[jax.Array, ...]:
    (trace,) = moments
    return (grad + scalars.decay * trace,)
