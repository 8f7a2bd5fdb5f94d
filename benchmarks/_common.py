"""Shared by the reproductions: the digits data and CNN (from ``examples/_digits.py``), outputs.

Every reproduction writes its figures and its results table, as Markdown and
JSON with the command that regenerates it, to ``outputs/`` (ignored by git), or
to ``--out DIR``. ``--publish`` regenerates the committed ones: the figures in
``docs/`` and the tables in ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(_EXAMPLES) not in sys.path:
  sys.path.insert(0, str(_EXAMPLES))

import _digits as D  # noqa: E402  (puts the checkout on sys.path too)
import numpy as np  # noqa: E402

__all__ = ["D", "Outputs", "markdown_table", "parse_args"]


def parse_args(description: str, argv: list[str] | None, extra: Any = None) -> Any:
  """The common flags (``--seed``, ``--smoke``, ``--out``, ``--publish``), plus ``extra(parser)``."""
  parser = D.base_parser(description)
  parser.add_argument(
    "--publish",
    action="store_true",
    help="write the committed figures (docs/) and tables (benchmarks/results/)",
  )
  if extra is not None:
    extra(parser)
  return parser.parse_args(argv)


def digits_training_flags(epochs: int) -> Any:
  """``parse_args``' ``extra`` for a digits run: ``--epochs`` (default ``epochs``), ``--batch-size``."""

  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=64)

  return extra


def digits_batches(args: Any) -> tuple[Any, int, Any]:
  """``(data, steps, batches)``: digits split by ``args.seed``, and the index batches of
  ``args.epochs`` epochs of ``args.batch_size`` (8 steps with ``--smoke``)."""
  data = D.load_digits(args.seed, smoke=args.smoke)
  num_train = len(data.x_train)
  steps = 8 if args.smoke else args.epochs * (num_train // args.batch_size)
  return data, steps, D.batch_indices(args.seed, num_train, args.batch_size, steps)


class Outputs:
  """Where a reproduction writes its figures and tables, and the command that made them."""

  def __init__(
    self, name: str, out: Path | None, argv: list[str] | None, *, publish: bool = False
  ) -> None:
    self.name = name
    out = D.OUTPUT_DIR if out is None else Path(out)
    self.figures = D.DOCS_DIR if publish else out
    self.results = D.RESULTS_DIR if publish else out
    self.figures.mkdir(parents=True, exist_ok=True)
    self.results.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else argv
    self.command = shlex.join(["python", f"benchmarks/{name}.py", *args])
    self.start = time.perf_counter()

  def figure(self, filename: str) -> Path:
    """Path of a figure in the figure folder."""
    return self.figures / filename

  def write(self, title: str, markdown: str, data: dict[str, Any]) -> None:
    """Writes ``<name>.md`` and ``<name>.json`` to the results folder."""
    elapsed = time.perf_counter() - self.start
    header = (
      f"# {title}\n\nRegenerate with `{self.command}` (seeded, deterministic on CPU); "
      f"this run took {elapsed:.0f} s.\n\n"
    )
    (self.results / f"{self.name}.md").write_text(header + markdown.rstrip() + "\n")
    payload = {"title": title, "command": self.command, "seconds": round(elapsed, 1), **data}
    (self.results / f"{self.name}.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    print(f"wrote {self.results / self.name}.md/.json; {elapsed:.1f} s")


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
  """Mean over the last axis (seeds: values, or paired differences) and its 95 % t-interval."""
  from scipy import stats

  values = np.asarray(values, np.float64)
  n = values.shape[-1]
  mean = values.mean(-1)
  half = stats.t.ppf(0.975, n - 1) * values.std(-1, ddof=1) / np.sqrt(n) if n > 1 else np.nan
  return float(mean), float(mean - half), float(mean + half)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A Markdown table; floats are written with 4 significant digits."""

  def cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
      return f"{v:.4g}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def init_linen_cnn(seed: int, sample: Any, features: tuple[int, ...] = (16, 32)) -> tuple[Any, Any]:
  """Params and BatchNorm statistics of ``D.LinenCNN`` initialised with ``seed``."""
  import jax

  variables = D.LinenCNN(features).init(jax.random.key(seed), sample, train=False)
  return variables["params"], variables["batch_stats"]


def evaluate_linen_cnn(
  params: Any, batch_stats: Any, x: Any, y: Any, features: tuple[int, ...] = (16, 32)
) -> tuple[Any, Any]:
  """Accuracy and cross-entropy of ``D.LinenCNN`` in inference mode."""
  import jax.numpy as jnp

  logits = D.LinenCNN(features).apply(
    {"params": params, "batch_stats": batch_stats}, jnp.asarray(x), train=False
  )
  return D.accuracy(logits, jnp.asarray(y)), D.cross_entropy(logits, jnp.asarray(y))


def train_linen_cnn(
  tx: Any,
  data: Any,
  batches: Any,
  seed: int,
  *,
  hparams: dict[str, Any] | None = None,
  record: Any = None,
  record_every: int = 1,
  l2: Any = 0.0,
  l2_mask: Any = None,
  features: tuple[int, ...] = (16, 32),
) -> dict[str, Any]:
  """Trains ``D.LinenCNN`` with ``tx`` over ``batches`` in one ``lax.scan``; jittable, vmappable.

  Args:
    tx: the optimizer. With ``hparams``, it must come from ``inject_hyperparams``;
      ``hparams`` then overrides ``opt_state.hyperparams`` after init, so a
      ``jax.vmap`` over ``hparams`` trains a whole grid in one program.
    data: a ``D.Digits``.
    batches: (steps, batch_size) int indices.
    seed: initialisation seed.
    hparams: values for ``opt_state.hyperparams`` (may be traced).
    record: optional ``(params, batch_stats, opt_state) -> pytree``, recorded
      after every ``record_every`` steps (zeros at the other steps); e.g.
      ``dopt.read_diagnostics(opt_state)`` of a ``dopt.with_diagnostics`` optimizer.
    l2: coefficient of an L2 penalty ``l2 / 2 * ||theta||^2`` added to the loss
      (the "+L2" baselines), over the leaves selected by ``l2_mask``.
    l2_mask: pytree of bools like the params (None: all leaves).
    features: widths of ``D.LinenCNN``'s convolutions.

  Returns:
    ``loss`` per step, ``record`` per step, ``test_accuracy``, ``test_loss``,
    ``train_accuracy`` at the end, and the final ``params``.
  """
  import jax
  import jax.numpy as jnp
  import optax

  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  model = D.LinenCNN(features)
  params, batch_stats = init_linen_cnn(seed, x_train[:1], features)
  opt_state = tx.init(params)
  if hparams is not None:
    opt_state.hyperparams.update(
      {k: jnp.asarray(v, opt_state.hyperparams[k].dtype) for k, v in hparams.items()}
    )
  mask = jax.tree.map(lambda _: True, params) if l2_mask is None else l2_mask

  def step(carry: Any, inputs: Any) -> tuple[Any, Any]:
    params, batch_stats, opt_state = carry
    idx, i = inputs
    x, y = x_train[idx], y_train[idx]

    def loss_fn(p: Any) -> tuple[Any, Any]:
      logits, updates = model.apply(
        {"params": p, "batch_stats": batch_stats}, x, mutable=["batch_stats"]
      )
      penalty = sum(
        jnp.sum(w**2) for w, m in zip(jax.tree.leaves(p), jax.tree.leaves(mask), strict=True) if m
      )
      return D.cross_entropy(logits, y) + 0.5 * l2 * penalty, (
        updates["batch_stats"],
        D.cross_entropy(logits, y),
      )

    (_, (batch_stats, loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if record is None:
      recorded = None
    elif record_every == 1:
      recorded = record(params, batch_stats, opt_state)
    else:
      shapes = jax.eval_shape(record, params, batch_stats, opt_state)
      recorded = jax.lax.cond(
        (i + 1) % record_every == 0,
        record,
        lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
        params,
        batch_stats,
        opt_state,
      )
    return (params, batch_stats, opt_state), (loss, recorded)

  (params, batch_stats, _), (losses, recorded) = jax.lax.scan(
    step, (params, batch_stats, opt_state), (jnp.asarray(batches), jnp.arange(len(batches)))
  )

  test_accuracy, test_loss = evaluate_linen_cnn(
    params, batch_stats, data.x_test, data.y_test, features
  )
  train_accuracy, _ = evaluate_linen_cnn(params, batch_stats, x_train, y_train, features)
  return {
    "loss": losses,
    "record": recorded,
    "test_accuracy": test_accuracy,
    "test_loss": test_loss,
    "train_accuracy": train_accuracy,
    "params": params,
  }
