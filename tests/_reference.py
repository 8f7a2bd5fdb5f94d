"""Shared helpers for the reference-exactness tests.

The test problem is a small "network" whose loss has the invariances that
AdamP's projection looks for, written twice with the same math: once in JAX
on Flax layouts, once in torch on PyTorch layouts. Each side differentiates
its own loss at its own params, so the two trajectories are coupled only
through the optimizers under test.

* ``conv``: HWIO kernel; the loss sees it only through w_c / ||w_c|| per
  output channel (a conv followed by BatchNorm).
* ``dense``: (in, out) kernel; the loss sees it only through W / ||W||.
* ``kernel``: an ordinary (in, out) kernel, not scale invariant.
* ``bias``, ``scale``: vectors, never projected.

The per-step targets play the role of minibatches: they keep the gradients
from vanishing, so Adam's ratio m / sqrt(v) stays well conditioned and the
trajectories can be compared tightly for many steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

SHAPES = {
  "conv": (3, 3, 2, 4),
  "dense": (6, 4),
  "kernel": (5, 3),
  "bias": (4,),
  "scale": (4,),
}
NAMES = tuple(SHAPES)
DECAYED = ("conv", "dense", "kernel")
MASK = {name: name in DECAYED for name in NAMES}
TOLERANCE = 2e-5


def mask_fn(params):
  # A callable mask must give the same answer as the tree mask.
  return {name: jnp.ndim(p) > 1 for name, p in params.items()}


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  params = {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
  params["scale"] = (1.0 + 0.1 * params["scale"]).astype(np.float32)
  params["kernel"] = (-1.0 + 0.3 * params["kernel"]).astype(np.float32)
  return params


def make_targets(steps: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  weights = {
    name: rng.uniform(0.5, 1.5, size=shape).astype(np.float32) for name, shape in SHAPES.items()
  }
  targets = []
  for _ in range(steps):
    step = {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
    step.update({f"{name}_w": w for name, w in weights.items()})
    targets.append(step)
  return targets


# ---------------------------------------------------------------- the loss


def shared_loss(params, targets, sqrt, total, per_channel_sq_norm):
  """The loss on Flax layouts; the array ops are passed in so JAX and torch share it."""
  conv = params["conv"]
  conv_n = conv / sqrt(per_channel_sq_norm(conv))
  dense = params["dense"]
  dense_n = dense / sqrt(total(dense * dense))
  loss = total(targets["conv"] * conv_n) + 0.5 * total((targets["conv_w"] * conv_n) ** 2)
  loss = loss + total(targets["dense"] * dense_n) + 0.5 * total((targets["dense_w"] * dense_n) ** 2)
  # The kernel's gradient stays far from orthogonal to it: the linear term pulls it towards
  # -1 / weight_decay per element, where the gradient is nearly parallel to the kernel.
  kernel = params["kernel"]
  loss = loss + total(targets["kernel_w"] * (kernel + 0.05 * kernel**2))
  loss = loss + 0.2 * total(targets["kernel"] * kernel)
  for name in ("bias", "scale"):
    loss = loss + 0.5 * total(targets[f"{name}_w"] * (params[name] - targets[name]) ** 2)
  return loss


def loss_jax(params, targets):
  return shared_loss(
    params,
    targets,
    jnp.sqrt,
    jnp.sum,
    lambda w: jnp.sum(w * w, axis=(0, 1, 2), keepdims=True),
  )


grad_jax = jax.jit(jax.grad(loss_jax))


# ---------------------------------------------------------------- layouts


def flax_to_torch(name: str, x: np.ndarray) -> np.ndarray:
  if name == "conv":
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))  # HWIO -> OIHW
  if x.ndim == 2:
    return np.ascontiguousarray(x.T)  # (in, out) -> (out, in)
  return x


def torch_to_flax(name: str, x: np.ndarray) -> np.ndarray:
  if name == "conv":
    return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))  # OIHW -> HWIO
  if x.ndim == 2:
    return np.ascontiguousarray(x.T)
  return x


# ---------------------------------------------------------------- trajectories


def table_schedule(values: Sequence[float]) -> Callable:
  """An optax schedule that reads eta_t from a table, so both sides see the same values."""
  table = jnp.asarray(np.asarray(values, np.float32))
  return lambda count: table[count]


def sgdr_table(steps: int, first_period: int = 20, period_mult: int = 2, minimum: float = 0.1):
  """eta_t of SGDR in float64 Python, so the comparisons do not rely on our schedule."""
  values, t_cur, period = [], 0, first_period
  for _ in range(steps):
    values.append(minimum + 0.5 * (1 - minimum) * (1 + math.cos(math.pi * t_cur / period)))
    t_cur += 1
    if t_cur == period:
      t_cur, period = 0, period * period_mult
  return [float(np.float32(v)) for v in values]


def run_ours(tx: optax.GradientTransformation, steps: int, params=None, with_states=False):
  """Trajectory of ``tx`` (Flax layout); entry k holds the params after k updates."""
  params = jax.tree.map(jnp.asarray, init_params() if params is None else params)
  targets = make_targets(steps)

  @jax.jit
  def step(params, state, targets):
    grads = jax.grad(loss_jax)(params, targets)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  trajectory, states = [jax.tree.map(np.asarray, params)], [state]
  for t in range(steps):
    params, state = step(params, state, targets[t])
    trajectory.append(jax.tree.map(np.asarray, params))
    states.append(state)
  return (trajectory, states) if with_states else trajectory


# ---------------------------------------------------------------- comparisons


def max_relative_error(ours, reference) -> tuple[float, int, str]:
  """Largest per-leaf ||ours - ref|| / ||ref|| over a trajectory, with its step and leaf."""
  worst = (0.0, -1, "")
  for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
    for name in NAMES:
      x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
      err = np.linalg.norm(x - y) / np.linalg.norm(y)
      if err > worst[0]:
        worst = (float(err), step, name)
  return worst


def assert_trajectories_match(ours, reference, tolerance: float = TOLERANCE) -> None:
  assert len(ours) == len(reference)
  err, step, name = max_relative_error(ours, reference)
  assert err <= tolerance, f"relative error {err:.3g} at step {step}, leaf {name!r}"
  # The decay and the steps must have moved the params, or the match is vacuous.
  first, last = ours[0], ours[-1]
  for n in NAMES:
    moved = np.linalg.norm(last[n] - first[n]) / np.linalg.norm(first[n])
    assert moved > 1e-2, f"leaf {n!r} barely moved ({moved:.3g})"
