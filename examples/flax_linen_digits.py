"""Train a small BatchNorm CNN on scikit-learn's digits with Flax linen: AdamWR and AdamP.

* **AdamWR**: ``dopt.adamw`` in the paper's convention with SGDR warm restarts
  as the schedule multiplier eta_t and the paper's normalized weight decay,
  which follows the restarts (``normalized_weight_decay_schedule``).
* **AdamP**: ``dopt.adamp`` with one cosine period over the whole run.

Both decay only the kernels (``dopt.weight_decay_mask``: no decay on biases
and BatchNorm scales). The training state is ``flax.training.train_state.TrainState``
with the BatchNorm statistics alongside. Each optimizer is wrapped in
``dopt.with_diagnostics``, and the train step returns ``dopt.read_diagnostics(state.opt_state)``
with its loss. Writes ``flax_linen_digits.png`` (the learning rate and the
weight decay as applied, the angular update of each kernel, its norm, loss,
test accuracy) to ``--out``.

    python examples/flax_linen_digits.py             # ~30 epochs, about a minute on 2 CPU cores
    python examples/flax_linen_digits.py --smoke     # a few steps
    python examples/flax_linen_digits.py --tensorboard runs/   # also TensorBoard event files
"""

from __future__ import annotations

import functools
from typing import Any

import _digits as D  # also puts the checkout on sys.path
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import decoupled_optax as dopt


class TrainState(train_state.TrainState):
  """TrainState with BatchNorm's running statistics."""

  batch_stats: Any


def train(
  name: str,
  tx: optax.GradientTransformation,
  data: D.Digits,
  batches: np.ndarray,
  steps_per_epoch: int,
  seed: int,
  quiet: bool,
) -> dict[str, Any]:
  """Trains one model; returns the per-step loss and the test accuracy after each epoch.

  ``quiet`` (the smoke runs) also compiles without XLA's optimisations, to compile faster.
  """
  model = D.LinenCNN()
  init = D.jit(
    functools.partial(model.init, train=False), smoke=quiet
  )  # one program, not one per leaf
  variables = init(jax.random.key(seed), jnp.asarray(data.x_train[:1]))
  state = TrainState.create(
    apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"]
  )
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  @functools.partial(D.jit, smoke=quiet)
  def train_step(state: TrainState, idx: jax.Array) -> tuple[TrainState, jax.Array, Any]:
    x, y = x_train[idx], y_train[idx]

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
      logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, mutable=["batch_stats"]
      )
      return D.cross_entropy(logits, y), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, loss, dopt.read_diagnostics(state.opt_state)

  @functools.partial(D.jit, smoke=quiet)
  def test_accuracy(state: TrainState) -> jax.Array:
    logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, x_test, train=False
    )
    return D.accuracy(logits, y_test)

  losses, diagnostics, eval_steps, accuracies = [], [], [], []
  bar = D.progress(range(len(batches)), total=len(batches), desc=name, disable=quiet)
  for step in bar:
    state, loss, step_diagnostics = train_step(state, batches[step])
    losses.append(loss)
    diagnostics.append(step_diagnostics)
    if (step + 1) % steps_per_epoch == 0 or step + 1 == len(batches):
      eval_steps.append(step + 1)
      accuracies.append(float(test_accuracy(state)))
      if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{float(loss):.3f}", test_acc=f"{accuracies[-1]:.4f}")
  return {
    "loss": np.asarray(jax.device_get(losses)),
    "diagnostics": D.stack_diagnostics(diagnostics),
    "eval_step": np.asarray(eval_steps),
    "test_accuracy": np.asarray(accuracies),
  }


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Runs the example; returns the final test accuracy of each optimizer."""
  return D.run_example(
    train,
    __doc__.splitlines()[0],
    "flax_linen_digits.png",
    "Flax linen, digits, BatchNorm CNN",
    argv,
  )


if __name__ == "__main__":
  main()
