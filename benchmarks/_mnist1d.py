"""Shared by the powered reproductions: MNIST-1D, a 1-D CNN with BatchNorm, vmapped training.

MNIST-1D (Greydanus & Kobak, 2020; the ``mnist1d`` package) is built
procedurally by ``mnist1d.data.make_dataset`` from ten templates in the
package's code (padding, dilation, scaling, translation, correlated and iid
noise, shear): nothing is downloaded (the package's ``get_dataset`` would
download a pickle; it is never called here). Each example is a 40-sample
signal with one of ten labels. Trained on 10,000 examples, the CNN below
(AdamW, 10 epochs) has 1.35 % test error at the best learning rate and decay
and 1.6-2.0 % with the decay 3 times off either way, so the decay matters;
5,000 test examples resolve 0.02 percentage points.

The CNN: three convolutions (widths ``features``, kernel sizes 5, 3, 3,
strides 1, 2, 2), each followed by BatchNorm and a ReLU, then a linear
classifier on the flattened features. Every convolution kernel precedes a
BatchNorm, so it is scale invariant (as the paper's ResNets' kernels); the
classifier is not. The convolutions are written as image patches times a
``nn.Dense`` kernel ((kernel size x input channels, output channels), the
output channel last as Flax's): under ``jax.vmap`` over a grid of runs they are
batched matrix products, several times faster on CPU than vmapped
convolutions (grouped convolutions).

``train`` trains one run (jittable, vmappable over hyperparameters, seeds
and batch orders): the optimizer is built inside it from traced
hyperparameters by a ``dopt.inject_hyperparams`` factory, so a whole grid
trains in one program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

NUM_CLASSES = 10
KERNEL_SIZES = (5, 3, 3)
STRIDES = (1, 2, 2)


class Data(NamedTuple):
  """Train and test splits, signals as (N, 40, 1) float32, labels int32."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def dataset_parameters(num_train: int, num_test: int, seed: int) -> dict[str, Any]:
  """The ``mnist1d`` generator's arguments (its defaults, with the sizes and seed), as a dict."""
  from mnist1d.data import get_dataset_args

  args = get_dataset_args(as_dict=True)
  args.pop("url")  # only ``get_dataset``'s download uses it
  total = num_train + num_test
  args |= {"num_samples": total, "train_split": num_train / total, "seed": seed}
  return args


@functools.lru_cache(maxsize=4)
def load_mnist1d(num_train: int = 10_000, num_test: int = 5_000, seed: int = 0) -> Data:
  """MNIST-1D built by ``mnist1d.data.make_dataset`` (procedural, no network), split train/test.

  ``make_dataset`` draws an equal number of examples per class and shuffles
  them; it seeds NumPy's global generator, whose state is restored afterwards.
  ``num_train + num_test`` must be a multiple of 10.
  """
  from importlib.metadata import version

  from mnist1d.data import make_dataset
  from mnist1d.utils import ObjectView

  if (num_train + num_test) % NUM_CLASSES:
    raise ValueError(f"num_train + num_test must be a multiple of 10, got {num_train + num_test}")
  state = np.random.get_state()
  try:
    data = make_dataset(ObjectView(dataset_parameters(num_train, num_test, seed)))
  finally:
    np.random.set_state(state)
  assert len(data["y"]) == num_train, (len(data["y"]), num_train, version("mnist1d"))

  def signals(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32)[..., None]

  return Data(
    signals(data["x"]),
    np.asarray(data["y"], np.int32),
    signals(data["x_test"]),
    np.asarray(data["y_test"], np.int32),
  )


# The powered reproductions' harder task: few training examples, so the test error stays far
# above zero; a validation split to choose hyperparameters on.
SMALL_SPLITS = (2_000, 1_000, 5_000)  # training, validation, test


def small_splits(smoke: bool) -> tuple[Data, Data]:
  """``(validation data, test data)``: the same 2,000 training examples, two evaluation sets."""
  num_train, num_validation, num_test = (200, 100, 100) if smoke else SMALL_SPLITS
  generated = load_mnist1d(num_train + num_validation, num_test, seed=0)
  x, y = generated.x_train[:num_train], generated.y_train[:num_train]
  validation = Data(x, y, generated.x_train[num_train:], generated.y_train[num_train:])
  return validation, Data(x, y, generated.x_test, generated.y_test)


def mnist1d_version() -> str:
  """The installed ``mnist1d`` package's version."""
  from importlib.metadata import version

  return version("mnist1d")


def _patches(x: jax.Array, size: int, stride: int) -> jax.Array:
  """1-D patches with SAME padding (as ``flax.linen.Conv``): (B, L, C) -> (B, L', size C)."""
  length = x.shape[1]
  out = -(-length // stride)
  pad = max((out - 1) * stride + size - length, 0)
  x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
  span = (out - 1) * stride + 1
  return jnp.concatenate([x[:, i : i + span : stride] for i in range(size)], -1)


class CNN1D(nn.Module):
  """conv-BN-ReLU x 3 (kernel sizes 5, 3, 3; strides 1, 2, 2), flatten, dense."""

  features: Sequence[int] = (16, 32, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    layers = zip(self.features, KERNEL_SIZES, STRIDES, strict=True)
    for i, (width, size, stride) in enumerate(layers):
      x = nn.Dense(width, use_bias=False, name=f"conv{i}")(_patches(x, size, stride))
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"norm{i}")(x)
      x = nn.relu(x)
    return nn.Dense(NUM_CLASSES, name="head")(x.reshape(x.shape[0], -1))


def scale_invariant(params: Any) -> Any:
  """A pytree of bools like ``params``: True for the convolution kernels (each precedes a BatchNorm)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key.startswith("conv"), params)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def batch_indices(seed: int, num_points: int, batch_size: int, num_steps: int) -> np.ndarray:
  """``num_steps`` index batches over shuffled epochs (the rest of each epoch dropped)."""
  rng = np.random.default_rng(seed)
  per_epoch = num_points // batch_size
  epochs = -(-num_steps // per_epoch)
  order = [rng.permutation(num_points)[: per_epoch * batch_size] for _ in range(epochs)]
  return np.concatenate(order).reshape(-1, batch_size)[:num_steps].astype(np.int32)


def evaluate(model: CNN1D, variables: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
  """Test error (%) and cross-entropy in inference mode."""
  logits = model.apply(variables, x, train=False)
  return 100 * jnp.mean(jnp.argmax(logits, -1) != y), cross_entropy(logits, y)


def train(
  make_tx: Callable[..., optax.GradientTransformation],
  hparams: dict[str, Any],
  seed: Any,
  batches: Any,
  data: Data,
  *,
  features: Sequence[int] = (16, 32, 32),
  eval_every: int | None = None,
) -> dict[str, Any]:
  """Trains one run; jittable and vmappable over ``hparams``, ``seed`` and ``batches``.

  Args:
    make_tx: ``dopt.inject_hyperparams(factory)``; called with ``hparams``
      (traced) inside, so the optimizer's hyperparameters live in its state.
    hparams: the factory's arguments.
    seed: initialisation seed (int or traced).
    batches: (steps, batch_size) int indices into the training set.
    data: a ``Data`` of jax arrays (pass it as an argument, not a constant).
    features: widths of the three convolutions.
    eval_every: if given, the test error (%) is also recorded after every
      ``eval_every`` steps (``test_error_curve``, one entry per evaluation).

  Returns:
    ``test_error`` (%), ``test_loss``, ``train_loss`` (mean over the last
    tenth of the steps), ``train_error`` (%, inference mode, at the end),
    ``angular_update`` per step (mean over the scale-invariant kernels of
    ||w_{t+1} - w_t|| / ||w_t||), ``kernel_norm`` per step (their mean norm) and
    ``gradient_ratio`` per step (the mean of their ||g|| / ||w||),
    and ``test_error_curve`` with ``eval_every``.
  """
  model = CNN1D(tuple(features))
  variables = model.init(jax.random.key(seed), data.x_train[:1], train=False)
  params, stats = variables["params"], variables["batch_stats"]
  invariant = scale_invariant(params)
  tx = make_tx(**hparams)
  opt_state = tx.init(params)

  def kernels(tree: Any) -> list[Any]:
    return [
      leaf for leaf, m in zip(jax.tree.leaves(tree), jax.tree.leaves(invariant), strict=True) if m
    ]

  def step(carry: Any, inputs: Any) -> tuple[Any, Any]:
    params, stats, opt_state = carry
    idx, i = inputs
    x, y = data.x_train[idx], data.y_train[idx]

    def loss_fn(p: Any) -> tuple[Any, Any]:
      logits, updates = model.apply(
        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return cross_entropy(logits, y), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    norms = [jnp.linalg.norm(w) for w in kernels(params)]
    angular = jnp.mean(
      jnp.stack([jnp.linalg.norm(u) / n for u, n in zip(kernels(updates), norms, strict=True)])
    )
    gradient_ratio = jnp.mean(
      jnp.stack([jnp.linalg.norm(g) / n for g, n in zip(kernels(grads), norms, strict=True)])
    )
    out = {
      "loss": loss,
      "angular_update": angular,
      "kernel_norm": jnp.mean(jnp.stack(norms)),
      "gradient_ratio": gradient_ratio,
    }
    if eval_every is not None:
      out["test_error"] = jax.lax.cond(
        (i + 1) % eval_every == 0,
        lambda: evaluate(
          model, {"params": new_params, "batch_stats": stats}, data.x_test, data.y_test
        )[0],
        lambda: jnp.zeros((), jnp.float32),
      )
    return (new_params, stats, opt_state), out

  steps = batches.shape[0]
  (params, stats, _), per_step = jax.lax.scan(
    step, (params, stats, opt_state), (batches, jnp.arange(steps))
  )
  final = {"params": params, "batch_stats": stats}
  test_error, test_loss = evaluate(model, final, data.x_test, data.y_test)
  train_error, _ = evaluate(model, final, data.x_train, data.y_train)
  last = max(1, steps // 10)
  result = {
    "test_error": test_error,
    "test_loss": test_loss,
    "train_error": train_error,
    "train_loss": per_step["loss"][-last:].mean(),
    "angular_update": per_step["angular_update"],
    "kernel_norm": per_step["kernel_norm"],
    "gradient_ratio": per_step["gradient_ratio"],
  }
  if eval_every is not None:
    result["test_error_curve"] = per_step["test_error"][eval_every - 1 :: eval_every]
  return result


def run_grid(
  make_tx: Callable[..., optax.GradientTransformation],
  hparams: dict[str, np.ndarray],
  seed_index: np.ndarray,
  seeds: np.ndarray,
  batches: np.ndarray,
  data: Data,
  *,
  features: Sequence[int] = (16, 32, 32),
  eval_every: int | None = None,
  chunk: int = 8,
  compiler_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
  """Trains every run of a grid in one jitted program; returns ``train``'s outputs per run.

  Run ``r`` uses ``{k: v[r] for k, v in hparams.items()}``, initialisation seed
  ``seeds[seed_index[r]]`` and batch order ``batches[seed_index[r]]``
  ((seeds, steps, batch_size)). ``jax.lax.map`` walks the runs ``chunk`` at a
  time, each chunk ``jax.vmap``-ed: on 2 CPU cores a chunk of 4-8 runs is
  about twice as fast per run as one vmap over 48 (the arrays stay in cache).
  """
  hp = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}

  def program(hp: Any, si: Any, seeds: Any, batches: Any, data: Data) -> dict[str, Any]:
    def one(args: Any) -> dict[str, Any]:
      h, s = args
      return train(make_tx, h, seeds[s], batches[s], data, features=features, eval_every=eval_every)

    return jax.lax.map(one, (hp, si), batch_size=chunk)

  # The data and batches are arguments, not constants folded into the program: faster to compile.
  out = jax.jit(program, compiler_options=compiler_options)(
    hp,
    jnp.asarray(seed_index, jnp.int32),
    jnp.asarray(seeds, jnp.int32),
    jnp.asarray(batches),
    Data(*(jnp.asarray(a) for a in data)),
  )
  return {k: np.asarray(v) for k, v in out.items()}
