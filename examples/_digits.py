"""Shared by the examples and the reproductions: scikit-learn's digits, small CNNs, plots.

The digits data set (1,797 grayscale 8x8 images of the ten digits) ships with
scikit-learn, so nothing is downloaded. The CNNs are two 3x3 convolutions,
each followed by BatchNorm and a ReLU, then global average pooling and a
linear classifier: the convolution kernels are scale invariant (they precede
a BatchNorm), which is what AdamP/SGDP act on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import decoupled_optax as dopt  # noqa: E402

DOCS_DIR = REPO_ROOT / "docs"
# Runs write here (ignored by git); the committed figures in docs/ and tables in
# benchmarks/results/ are regenerated only on request (``--out docs``, ``--publish``).
OUTPUT_DIR = REPO_ROOT / "outputs"
# ``--smoke`` compiles without XLA's backend optimisations: about 3-4 times faster to compile
# on CPU (the smoke runs are almost all compilation), same code paths.
SMOKE_COMPILER_OPTIONS = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
NUM_CLASSES = 10


class Digits(NamedTuple):
  """Train and test splits, images as (N, 8, 8, 1) float32 in [0, 1]."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def load_digits(seed: int = 0, test_fraction: float = 0.2, *, smoke: bool = False) -> Digits:
  """scikit-learn's digits, split at random (stratified) with ``seed``; ``smoke``: a small subset."""
  from sklearn.datasets import load_digits as sk_load_digits
  from sklearn.model_selection import train_test_split

  data = sk_load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=test_fraction, random_state=seed, stratify=y
  )
  data = Digits(x_train, y_train, x_test, y_test)
  return smoke_subset(data) if smoke else data


def smoke_subset(data: Digits, num_train: int = 128, num_test: int = 64) -> Digits:
  """The first points of each split, for the smoke runs (cheaper to run at ``--smoke``'s O0)."""
  return Digits(
    data.x_train[:num_train],
    data.y_train[:num_train],
    data.x_test[:num_test],
    data.y_test[:num_test],
  )


def epoch_batches(rng: np.random.Generator, num_points: int, batch_size: int) -> np.ndarray:
  """A shuffled epoch as an array of index batches, (steps, batch_size); drops the rest."""
  steps = num_points // batch_size
  return rng.permutation(num_points)[: steps * batch_size].reshape(steps, batch_size)


def batch_indices(seed: int, num_points: int, batch_size: int, num_steps: int) -> np.ndarray:
  """``num_steps`` index batches over as many shuffled epochs as needed, (num_steps, batch_size)."""
  rng = np.random.default_rng(seed)
  epochs: list[np.ndarray] = []
  total = 0
  while total < num_steps:
    epochs.append(epoch_batches(rng, num_points, batch_size))
    total += len(epochs[-1])
  return np.concatenate(epochs)[:num_steps]


class LinenCNN(nn.Module):
  """conv-BN-ReLU, strided conv-BN-ReLU, global average pool, dense."""

  features: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2, use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return nn.Dense(NUM_CLASSES)(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
  """The NNX twin of :class:`LinenCNN`."""

  def __init__(self, rngs: nnx.Rngs, features: Sequence[int] = (16, 32)) -> None:
    self.convs = nnx.List()
    self.norms = nnx.List()
    width_in = 1
    for i, width in enumerate(features):
      stride = 1 if i == 0 else 2
      self.convs.append(
        nnx.Conv(width_in, width, (3, 3), strides=stride, use_bias=False, rngs=rngs)
      )
      self.norms.append(nnx.BatchNorm(width, momentum=0.9, rngs=rngs))
      width_in = width
    self.head = nnx.Linear(width_in, NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs, self.norms, strict=True):
      x = nnx.relu(norm(conv(x)))
    return self.head(x.mean(axis=(1, 2)))


def example_optimizers(
  steps_per_epoch: int, epochs: int, batch_size: int, num_train: int
) -> dict[str, optax.GradientTransformation]:
  """The examples' optimizers, by name.

  AdamWR: ``dopt.adamw`` in the paper's convention, SGDR warm restarts as
  eta_t (T_0 = a third of the run, T_mult = 2) and the normalized weight decay
  that follows the restarts. AdamP: one cosine period over the run and the
  normalized decay for the whole run (multiplied by ``wd_ratio`` = 0.1 on the
  kernels it finds scale invariant). Both decay only kernels.
  """
  first_period = max(1, epochs // 3) * steps_per_epoch  # restarts after T_0 and 3 T_0 epochs
  eta_wr = dopt.cosine_warm_restart_schedule(1.0, first_period=first_period, period_mult=2)
  lam_wr = dopt.normalized_weight_decay_schedule(
    0.025,
    batch_size=batch_size,
    num_train_points=num_train,
    first_period=first_period,
    period_mult=2,
    steps_per_epoch=steps_per_epoch,
  )
  total = epochs * steps_per_epoch
  eta_cos = dopt.cosine_warm_restart_schedule(1.0, first_period=total)
  lam_p = dopt.normalized_weight_decay(0.025, batch_size, num_train, epochs)
  mask = dopt.weight_decay_mask
  return {
    "AdamWR": dopt.adamw(1e-2, lam_wr, schedule=eta_wr, mask=mask, weight_decay_convention="paper"),
    "AdamP": dopt.adamp(1e-2, lam_p, schedule=eta_cos, mask=mask, weight_decay_convention="paper"),
  }


def jit(fun: Any, *, smoke: bool = False, **kwargs: Any) -> Any:
  """``jax.jit``; with ``smoke``, compiled with ``SMOKE_COMPILER_OPTIONS``."""
  return jax.jit(fun, compiler_options=SMOKE_COMPILER_OPTIONS if smoke else None, **kwargs)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of correct top-1 predictions."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def base_parser(
  description: str, *, default_out: Path | None = OUTPUT_DIR
) -> argparse.ArgumentParser:
  """The flags every example and reproduction shares."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--seed", type=int, default=0, help="seed of data split, init and batches")
  parser.add_argument(
    "--smoke", action="store_true", help="a few steps only, to check the script runs (CI)"
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=default_out,
    help=f"output folder (default {default_out}; `--out docs` regenerates the committed figure)",
  )
  return parser


def progress(iterable: Any, *, total: int, desc: str, disable: bool = False) -> Iterator[Any]:
  """A tqdm bar, hidden when stderr is not a terminal or when asked."""
  from tqdm.auto import tqdm

  quiet = disable or not sys.stderr.isatty() or os.environ.get("CI") is not None
  return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False)


def stack_diagnostics(steps: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Per key, the values of ``dopt.read_diagnostics`` over the steps, as one array."""
  steps = jax.device_get(steps)
  return {key: np.asarray([d[key] for d in steps]) for key in steps[0]}


def _kernel_keys(diagnostics: dict[str, np.ndarray], quantity: str) -> list[str]:
  """``quantity``'s keys for the weights: the leaves the diagnostics give an angular update."""
  weights = [k.split("/", 1)[1] for k in diagnostics if k.startswith("angular_update/")]
  return sorted(f"{quantity}/{w}" for w in weights if f"{quantity}/{w}" in diagnostics)


def save_figure(fig: Any, path: Path) -> None:
  """Lays out ``fig``, writes it to ``path`` (folders made as needed) at the docs' 110 dpi, closes it."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_training(histories: dict[str, dict[str, Any]], path: Path, title: str) -> None:
  """Six panels from each run's diagnostics, loss and accuracy.

  The learning rate and the weight decay as applied per step (``read_diagnostics``'
  ``learning_rate`` and ``weight_decay``), the angular update of each kernel
  beside the one rotational equilibrium predicts for it, the norm of each kernel, the training loss and the test accuracy. Each history holds
  ``diagnostics`` (per key, one value per step), ``loss`` (per step),
  ``eval_step`` and ``test_accuracy``.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
  (ax_lr, ax_wd, ax_angle), (ax_norm, ax_loss, ax_acc) = axes
  styles = ["-", "--", ":", "-."]
  for name, h in histories.items():
    d = h["diagnostics"]
    steps = np.arange(1, len(h["loss"]) + 1)
    (line,) = ax_lr.plot(steps, d["learning_rate"], label=name)
    color = line.get_color()
    ax_wd.plot(steps, d["weight_decay"], label=name, color=color)
    for style, key in zip(styles, _kernel_keys(d, "angular_update"), strict=False):
      layer = key.split("/", 1)[1]
      ax_angle.plot(steps, d[key], style, color=color, lw=1, label=f"{name} {layer}")
      predicted = d.get(f"equilibrium_angular_update/{layer}")
      if predicted is not None and np.any(predicted > 0):  # rotational equilibrium's prediction
        ax_angle.plot(steps, predicted, style, color=color, lw=2.5, alpha=0.3)
    for style, key in zip(styles, _kernel_keys(d, "weight_norm"), strict=False):
      layer = key.split("/", 1)[1]
      ax_norm.plot(steps, d[key], style, color=color, lw=1, label=f"{name} {layer}")
    loss = np.asarray(h["loss"])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    ax_loss.plot(steps[: len(smooth)] + window // 2, smooth, label=name, color=color)
    ax_acc.plot(h["eval_step"], h["test_accuracy"], label=name, color=color, marker=".")
  ax_lr.set(title="learning rate as applied, alpha * eta_t", xlabel="step")
  ax_wd.set(
    title="weight decay as applied per step (x wd_ratio where AdamP projects)",
    xlabel="step",
    ylabel="fraction of the weight removed",
  )
  ax_angle.set(
    title="angular update of each kernel; thick: its rotational equilibrium",
    xlabel="step",
    ylabel="radians",
    yscale="log",
  )
  ax_norm.set(title="kernel norms ||w||", xlabel="step")
  ax_loss.set(title="training loss (moving average)", xlabel="step", yscale="log")
  ax_acc.set(title="test accuracy", xlabel="step", ylim=(0.8, 1.0))
  for ax in axes.flat:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{title} (from dopt.read_diagnostics)")
  save_figure(fig, path)


def write_tensorboard(histories: dict[str, dict[str, Any]], log_dir: Path) -> None:
  """One TensorBoard run per optimizer: every diagnostic, the loss and the test accuracy."""
  from tensorboardX import SummaryWriter

  for name, h in histories.items():
    with SummaryWriter(str(log_dir / name)) as writer:
      for key, values in h["diagnostics"].items():
        for step, value in enumerate(values, start=1):
          writer.add_scalar(f"diagnostics/{key}", float(value), step)
      for step, value in enumerate(h["loss"], start=1):
        writer.add_scalar("train/loss", float(value), step)
      for step, value in zip(h["eval_step"], h["test_accuracy"], strict=True):
        writer.add_scalar("test/accuracy", float(value), int(step))


def run_example(
  train: Callable[..., dict[str, np.ndarray]],
  description: str,
  figure: str,
  title: str,
  argv: list[str] | None = None,
) -> dict[str, float]:
  """The examples' driver: parse arguments, train each example optimizer with ``train``, plot, report.

  ``train(name, tx, data, batches, steps_per_epoch, seed, quiet=...)`` is the
  framework-specific part (linen ``TrainState`` or ``nnx.Optimizer``); ``tx``
  is wrapped in ``dopt.with_diagnostics``, and ``train`` returns the loss and
  the diagnostics per step and the test accuracy at each epoch end.
  """
  parser = base_parser(description)
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=None, help="stop after this many steps")
  parser.add_argument(
    "--tensorboard",
    type=Path,
    default=None,
    help="also write TensorBoard event files here, one run per optimizer (needs tensorboardX)",
  )
  args = parser.parse_args(argv)
  if args.smoke and args.steps is None:
    args.steps = 5
  start = time.perf_counter()
  data = load_digits(args.seed, smoke=args.smoke)
  num_train = len(data.x_train)
  steps_per_epoch = num_train // args.batch_size
  total = args.epochs * steps_per_epoch if args.steps is None else args.steps
  batches = batch_indices(args.seed, num_train, args.batch_size, total)
  histories, results = {}, {}
  optimizers = example_optimizers(steps_per_epoch, args.epochs, args.batch_size, num_train)
  for name, tx in optimizers.items():
    tx = dopt.with_diagnostics(tx)
    history = train(name, tx, data, batches, steps_per_epoch, args.seed, quiet=args.smoke)
    histories[name] = history
    results[name] = float(history["test_accuracy"][-1])
  plot_training(histories, args.out / figure, title)
  if args.tensorboard is not None:
    write_tensorboard(histories, args.tensorboard)
  print(f"{total} steps per optimizer, {time.perf_counter() - start:.1f} s in all")
  for name, acc in results.items():
    print(f"{name} test accuracy: {acc:.4f}")
  return results
