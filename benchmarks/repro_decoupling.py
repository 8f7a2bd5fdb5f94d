"""Reproduction 1: decoupled weight decay separates the best learning rate and decay (Figure 2).

Loshchilov & Hutter (ICLR 2019), Figure 2: on alpha x lambda grids, SGD + L2
and Adam + L2 show a diagonal valley of good settings (the best lambda' falls
as alpha grows, since the effective decay per step is about alpha * lambda'),
while for SGDW and AdamW in the paper's convention (the decay is not
multiplied by alpha) the best lambda barely moves with alpha.

Here: the digits CNN (narrower, (8, 16)), one cosine period, a grid of
learning rates x decays for each of Adam + L2, AdamW, SGD + L2 and SGDW. Each
grid trains in one program: ``inject_hyperparams`` puts alpha and lambda in
the optimizer state and ``jax.vmap`` maps the whole training over them. The
coupling is quantified by the slope of log10(best lambda) against
log10(alpha), fitted by least squares over the learning rates, with its
standard error; the paper predicts about -1 for the L2 variants and about 0
for the decoupled ones.

    python benchmarks/repro_decoupling.py
"""

from __future__ import annotations

import warnings
from typing import Any

import _common as C
import jax
import jax.numpy as jnp
import numpy as np
import optax

import decoupled_optax as dopt

FEATURES = (8, 16)


def factories(schedule: Any, mask: Any) -> dict[str, tuple[Any, str]]:
  """name -> (injectable factory(learning_rate, weight_decay), how the decay enters)."""

  def adam_l2(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),  # L2: the decay goes through Adam
      optax.scale_by_adam(),
      optax.scale(-1.0),
      optax.scale(learning_rate),
      optax.scale_by_schedule(schedule),
    )

  def sgd_l2(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.trace(0.9),
      optax.scale(-1.0),
      optax.scale(learning_rate),
      optax.scale_by_schedule(schedule),
    )

  def adamw(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    return dopt.adamw(learning_rate, weight_decay, schedule=schedule, mask=mask)

  def sgdw(learning_rate: Any, weight_decay: Any) -> optax.GradientTransformation:
    return dopt.sgdw(learning_rate, 0.9, weight_decay, schedule=schedule, mask=mask)

  return {
    "Adam+L2": (adam_l2, "L2 coefficient lambda'"),
    "AdamW": (adamw, "decay lambda (paper's convention)"),
    "SGD+L2": (sgd_l2, "L2 coefficient lambda'"),
    "SGDW": (sgdw, "decay lambda (paper's convention)"),
  }


GRIDS = {  # log10 ranges of (alpha, lambda)
  "Adam+L2": ((-3.5, -1.5), (-5.0, -1.0)),
  "AdamW": ((-3.5, -1.5), (-5.0, -2.0)),
  "SGD+L2": ((-2.0, 0.0), (-5.0, -1.0)),
  "SGDW": ((-2.0, 0.0), (-6.0, -2.0)),
}


def best_log_lambda(log_lambdas: np.ndarray, errors: np.ndarray) -> float:
  """log10 of the best lambda, refined by a parabola through the minimum and its neighbours."""
  i = int(np.argmin(errors))
  if 0 < i < len(errors) - 1:
    x, y = log_lambdas[i - 1 : i + 2], errors[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    if a > 0:
      return float(np.clip(-b / (2 * a), x[0], x[-1]))
  return float(log_lambdas[i])


def slope(log_alphas: np.ndarray, best: np.ndarray) -> tuple[float, float]:
  """Least-squares slope of best log10(lambda) against log10(alpha), and its standard error."""
  s, c = np.polyfit(log_alphas, best, 1)
  fit = s * log_alphas + c
  dof = max(1, len(log_alphas) - 2)
  sigma2 = float(np.sum((best - fit) ** 2)) / dof
  se = float(np.sqrt(sigma2 / np.sum((log_alphas - log_alphas.mean()) ** 2)))
  return float(s), se


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the grids and slopes."""

  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--grid", type=int, default=6, help="points per axis")
    parser.add_argument("--batch-size", type=int, default=64)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  out = C.Outputs("repro_decoupling", args.out, argv)
  data = C.D.load_digits(args.seed)
  num_train = len(data.x_train)
  steps = 4 if args.smoke else args.epochs * (num_train // args.batch_size)
  n = 3 if args.smoke else args.grid
  batches = jnp.asarray(C.D.batch_indices(args.seed, num_train, args.batch_size, steps))
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=steps)
  sample_params, _ = C.init_linen_cnn(args.seed, jnp.asarray(data.x_train[:1]), FEATURES)
  mask = dopt.weight_decay_mask(sample_params)
  data_arrays = jax.tree.map(jnp.asarray, data)

  results: dict[str, dict[str, Any]] = {}
  for name, (factory, label) in factories(schedule, mask).items():
    (a_lo, a_hi), (l_lo, l_hi) = GRIDS[name]
    log_alphas, log_lambdas = np.linspace(a_lo, a_hi, n), np.linspace(l_lo, l_hi, n)
    with warnings.catch_warnings():
      # The placeholder values only build the state; the grid spans both conventions on purpose.
      warnings.simplefilter("ignore", dopt.WeightDecayConventionWarning)
      tx = optax.inject_hyperparams(factory)(learning_rate=1e-3, weight_decay=1e-4)
    aa, ll = np.meshgrid(10.0**log_alphas, 10.0**log_lambdas, indexing="ij")

    def run(alpha: Any, lam: Any, data: Any, tx: Any = tx) -> Any:
      r = C.train_linen_cnn(
        tx,
        data,
        batches,
        args.seed,
        hparams={"learning_rate": alpha, "weight_decay": lam},
        features=FEATURES,
      )
      return r["test_accuracy"], r["test_loss"]

    acc, loss = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(
      jnp.asarray(aa.ravel(), jnp.float32), jnp.asarray(ll.ravel(), jnp.float32), data_arrays
    )
    error = 100 * (1 - np.asarray(acc).reshape(n, n))
    test_loss = np.asarray(loss).reshape(n, n)
    # Ties in test error (360 test images: steps of 0.28%) are broken by the test loss.
    score = error + 1e-3 * np.nan_to_num(test_loss, nan=1e3)
    best = np.array([best_log_lambda(log_lambdas, row) for row in score])
    s, se = slope(log_alphas, best)
    results[name] = {
      "label": label,
      "log_alphas": log_alphas,
      "log_lambdas": log_lambdas,
      "test_error": error,
      "test_loss": test_loss,
      "best_log_lambda": best,
      "slope": s,
      "slope_se": se,
    }
    print(f"{name:8s} slope {s:+.2f} ± {se:.2f}; best test error {error.min():.2f}%")

  rows = [
    [
      name,
      f"{r['slope']:+.2f} ± {r['slope_se']:.2f}",
      "-1" if "L2" in name else "0",
      f"{r['test_error'].min():.2f}",
      f"10^[{r['log_alphas'][0]:g}, {r['log_alphas'][-1]:g}] x 10^[{r['log_lambdas'][0]:g}, "
      f"{r['log_lambdas'][-1]:g}]",
    ]
    for name, r in results.items()
  ]
  md = (
    f"Digits CNN {FEATURES}, {steps} steps (batch {args.batch_size}), one cosine period, "
    f"{n} x {n} grid per optimizer, seed {args.seed}. The best lambda per alpha minimises the "
    "test error (ties broken by the test loss), refined by a parabola in log lambda; the slope "
    "is a least-squares fit over the learning rates, ± its standard error.\n\n"
  )
  md += C.markdown_table(
    [
      "optimizer",
      "slope d log(best lambda) / d log(alpha)",
      "paper",
      "best test error (%)",
      "grid",
    ],
    rows,
  )
  out.write("Decoupling of the best learning rate and weight decay", md, {"grids": results})

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 9))
  for ax, (name, r) in zip(axes.flat, results.items(), strict=True):
    da = (r["log_alphas"][1] - r["log_alphas"][0]) / 2
    dl = (r["log_lambdas"][1] - r["log_lambdas"][0]) / 2
    im = ax.imshow(
      r["test_error"].T,
      origin="lower",
      aspect="auto",
      cmap="viridis_r",
      extent=(
        r["log_alphas"][0] - da,
        r["log_alphas"][-1] + da,
        r["log_lambdas"][0] - dl,
        r["log_lambdas"][-1] + dl,
      ),
      vmax=min(float(np.nanmax(r["test_error"])), 4 * float(np.nanmin(r["test_error"])) + 2),
    )
    ax.plot(r["log_alphas"], r["best_log_lambda"], "r.-", label="best lambda per alpha")
    ax.set(
      title=f"{name}: test error (%), slope {r['slope']:+.2f} ± {r['slope_se']:.2f}",
      xlabel="log10 alpha",
      ylabel=f"log10 {r['label']}",
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(out.figure("repro_decoupling.png"), dpi=110)
  plt.close(fig)
  return {name: (r["slope"], r["slope_se"]) for name, r in results.items()}


if __name__ == "__main__":
  main()
