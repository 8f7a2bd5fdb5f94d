"""Train a small BatchNorm CNN on scikit-learn's digits with Equinox: AdamWR and AdamP.

The same optimizers as the Flax examples (``_digits.example_optimizers``), on
an Equinox model. Nothing about the layout is passed: Equinox stores
PyTorch's layout (``Conv2d.weight`` is ``(out, in, kh, kw)``, its bias
``(out, 1, 1)``), and the library reads it from the module tree that
``eqx.filter`` returns. AdamP tests each conv weight per output channel
(axis 0), as the official AdamP does on the same weights, and
``dopt.weight_decay_mask`` decays the conv and linear weights, never a
bias or a BatchNorm parameter, whatever their rank. Writes
``equinox_digits.png`` to ``--out``.

    python examples/equinox_digits.py
    python examples/equinox_digits.py --smoke
"""

from __future__ import annotations

from typing import Any

import _digits as D  # also puts the checkout on sys.path
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import decoupled_optax as dopt


class EquinoxCNN(eqx.Module):
  """Two 3x3 convolutions, each followed by BatchNorm and a ReLU, then pooling and a linear head."""

  conv1: eqx.nn.Conv2d
  norm1: eqx.nn.BatchNorm
  conv2: eqx.nn.Conv2d
  norm2: eqx.nn.BatchNorm
  head: eqx.nn.Linear

  def __init__(self, key: jax.Array, width: int = 32) -> None:
    k1, k2, k3 = jax.random.split(key, 3)
    self.conv1 = eqx.nn.Conv2d(1, width, 3, padding=1, key=k1)
    self.norm1 = eqx.nn.BatchNorm(width, axis_name="batch", mode="batch")
    self.conv2 = eqx.nn.Conv2d(width, width, 3, padding=1, key=k2)
    self.norm2 = eqx.nn.BatchNorm(width, axis_name="batch", mode="batch")
    self.head = eqx.nn.Linear(width, D.NUM_CLASSES, key=k3)

  def __call__(self, image: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
    x = jnp.transpose(image, (2, 0, 1))  # the digits are (8, 8, 1); Equinox convs take (C, H, W)
    x, state = self.norm1(self.conv1(x), state)
    x, state = self.norm2(self.conv2(jax.nn.relu(x)), state)
    return self.head(jnp.mean(jax.nn.relu(x), axis=(1, 2))), state


def train(
  name: str,
  tx: optax.GradientTransformation,
  data: D.Digits,
  batches: np.ndarray,
  steps_per_epoch: int,
  seed: int,
  quiet: bool,
) -> dict[str, Any]:
  """Trains one model; returns the per-step loss and the test accuracy after each epoch."""
  model, state = eqx.nn.make_with_state(EquinoxCNN)(jax.random.key(seed))
  opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  batched = jax.vmap(EquinoxCNN.__call__, (None, 0, None), (0, None), axis_name="batch")

  def loss_fn(model: EquinoxCNN, state: eqx.nn.State, x: jax.Array, y: jax.Array) -> Any:
    logits, state = batched(model, x, state)
    return D.cross_entropy(logits, y), state

  @eqx.filter_jit
  def train_step(model: EquinoxCNN, state: eqx.nn.State, opt_state: Any, idx: jax.Array) -> Any:
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
    (loss, state), grads = grad_fn(model, state, x_train[idx], y_train[idx])
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, updates)
    return model, state, opt_state, loss, dopt.read_diagnostics(opt_state)

  @eqx.filter_jit
  def test_accuracy(model: EquinoxCNN, state: eqx.nn.State) -> jax.Array:
    logits, _ = batched(eqx.nn.inference_mode(model), x_test, state)
    return D.accuracy(logits, y_test)

  losses, diagnostics, eval_steps, accuracies = [], [], [], []
  bar = D.progress(range(len(batches)), total=len(batches), desc=name, disable=quiet)
  for step in bar:
    model, state, opt_state, loss, step_diagnostics = train_step(
      model, state, opt_state, jnp.asarray(batches[step])
    )
    losses.append(loss)
    diagnostics.append(step_diagnostics)
    if (step + 1) % steps_per_epoch == 0 or step + 1 == len(batches):
      eval_steps.append(step + 1)
      accuracies.append(float(test_accuracy(model, state)))
      if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{float(losses[-1]):.3f}", test_acc=f"{accuracies[-1]:.4f}")
  return {
    "loss": np.asarray(jax.device_get(losses)),
    "diagnostics": D.stack_diagnostics(diagnostics),
    "eval_step": np.asarray(eval_steps),
    "test_accuracy": np.asarray(accuracies),
  }


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Runs the example; returns the final test accuracy of each optimizer."""
  return D.run_example(
    train, __doc__.splitlines()[0], "equinox_digits.png", "Equinox, digits, BatchNorm CNN", argv
  )


if __name__ == "__main__":
  main()
