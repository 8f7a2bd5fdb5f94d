"""Update directions that optax lacks: AdamP's official Nesterov variant of Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from decoupled_optax._validation import check_dtype, check_non_negative, check_unit_interval


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
    updates: optax.Updates, state: optax.ScaleByAdamState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.ScaleByAdamState]:
    _, state = adam.update(updates, state, params)
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
