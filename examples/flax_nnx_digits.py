"""Train a small BatchNorm CNN on scikit-learn's digits with Flax NNX: AdamWR and AdamP.

The same optimizers as ``flax_linen_digits.py`` (see ``_digits.example_optimizers``),
through ``nnx.Optimizer(model, tx, wrt=nnx.Param)``. The mask
``dopt.weight_decay_mask`` works on NNX state: ``nnx.Optimizer`` initialises
the optimizer with ``nnx.Param`` nodes and updates it with pure arrays, and
the mask puts one bool per ``Param`` so it fits both. Writes
``flax_nnx_digits.png`` to ``--out``.

    python examples/flax_nnx_digits.py
    python examples/flax_nnx_digits.py --smoke
"""

from __future__ import annotations

from typing import Any

import _digits as D  # also puts the checkout on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import decoupled_optax as dopt


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
  model = D.NnxCNN(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  @nnx.jit
  def train_step(model: D.NnxCNN, optimizer: nnx.Optimizer, idx: jax.Array) -> Any:
    x, y = x_train[idx], y_train[idx]
    loss, grads = nnx.value_and_grad(lambda m: D.cross_entropy(m(x), y))(model)
    optimizer.update(model, grads)
    return loss, dopt.read_diagnostics(optimizer.opt_state)

  @nnx.jit
  def test_accuracy(model: D.NnxCNN) -> jax.Array:
    return D.accuracy(model(x_test), y_test)

  losses, diagnostics, eval_steps, accuracies = [], [], [], []
  bar = D.progress(range(len(batches)), total=len(batches), desc=name, disable=quiet)
  for step in bar:
    model.train()
    loss, step_diagnostics = train_step(model, optimizer, jnp.asarray(batches[step]))
    losses.append(loss)
    diagnostics.append(step_diagnostics)
    if (step + 1) % steps_per_epoch == 0 or step + 1 == len(batches):
      model.eval()
      eval_steps.append(step + 1)
      accuracies.append(float(test_accuracy(model)))
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
    train, __doc__.splitlines()[0], "flax_nnx_digits.png", "Flax NNX, digits, BatchNorm CNN", argv
  )


if __name__ == "__main__":
  main()
