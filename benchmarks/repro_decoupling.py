"""Reproduction 1: decoupled weight decay separates the best learning rate and decay (Figure 2).

Loshchilov & Hutter (ICLR 2019), Figure 2: on alpha x lambda grids, SGD + L2
and Adam + L2 show a diagonal valley of good settings (the best lambda' falls
as alpha grows, since the effective decay per step is about alpha * lambda'),
while for SGDW and AdamW in the paper's convention (the decay is not
multiplied by alpha) the best lambda barely moves with alpha.

Here: the digits CNN (narrower, (8, 16)), one cosine period of ``--epochs``
epochs, an alpha x lambda grid for each of Adam + L2, AdamW, SGD + L2 and
SGDW, several seeds (initialisation and batch order). The whole grid of a
family trains in one program: ``chain(add_decayed_weights(lambda'), adamw(alpha,
lambda))`` (or ``sgdw``) is one optimizer in which lambda' = 0 gives AdamW
and lambda = 0 gives Adam + L2; ``inject_hyperparams`` puts alpha, lambda'
and lambda in its state and ``jax.vmap`` maps the training over the grid and
the seeds. The CNN is written with image patches and matrix products (the
same architecture as ``examples/_digits.py``'s ``LinenCNN``): vmapped
convolutions are about 6 times slower on CPU.

The coupling is the slope of log10(best lambda) against log10(alpha), fitted
by least squares over the learning rates that fit the training set (see
``CONVERGED_TRAIN_LOSS``), on the seed-averaged grid; its spread is a
bootstrap over seeds and the per-seed slopes, and the table gives, per
learning rate, the band of lambda within ``NEAR_OPTIMAL_PP`` points of the
best error. The paper predicts about -1 for the L2 variants and about 0 for
the decoupled ones.

    python benchmarks/repro_decoupling.py
"""

from __future__ import annotations

from typing import Any

import _common as C
import jax
import jax.numpy as jnp
import numpy as np
import optax

import decoupled_optax as dopt

FEATURES = (8, 16)
# log10 ranges of alpha, of the L2 coefficient lambda' and of the decoupled lambda (paper's
# convention), per family; the L2 and decoupled grids of a family share alpha and train together.
# A pilot (20 epochs, alpha from 1e-3 for Adam) left alpha < 1e-2 (Adam) and < 0.1 (SGD) far from
# fitting the training set, and the error flat below lambda ~ 1e-4.
FAMILIES = {
  "Adam": {
    "names": ("Adam+L2", "AdamW"),
    "alpha": (-2.0, -0.5),
    "l2": (-4.0, -0.5),
    "wd": (-4.0, -0.5),
  },
  "SGD": {
    "names": ("SGD+L2", "SGDW"),
    "alpha": (-1.0, 0.5),
    "l2": (-4.5, -1.0),
    "wd": (-4.0, -0.5),
  },
}
# A learning rate "trains" (and enters the fit) if its run fits the training set: at its best
# lambda, the training loss of the last tenth of the steps (seed mean) is below this.
CONVERGED_TRAIN_LOSS = 0.05
NEAR_OPTIMAL_PP = 0.5  # the near-optimal band: mean test error within this many points of the best


def _patches(x: jax.Array, stride: int) -> jax.Array:
  """3x3 patches with SAME padding (as ``flax.linen.Conv``): (B, H, W, C) -> (B, H', W', 9 C)."""
  size = x.shape[1]
  out = -(-size // stride)
  pad = max((out - 1) * stride + 3 - size, 0)
  x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
  span = (out - 1) * stride + 1
  return jnp.concatenate(
    [x[:, i : i + span : stride, j : j + span : stride] for i in range(3) for j in range(3)], -1
  )


def init_cnn(key: jax.Array, features: tuple[int, ...]) -> tuple[Any, Any]:
  """Params and BatchNorm statistics of the CNN (LeCun-normal kernels, as Flax's default)."""
  keys = jax.random.split(key, len(features) + 1)
  init = jax.nn.initializers.lecun_normal()
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  width_in = 1
  for i, width in enumerate(features):
    params[f"conv{i}"] = {"kernel": init(keys[i], (9 * width_in, width))}
    params[f"norm{i}"] = {"scale": jnp.ones(width), "bias": jnp.zeros(width)}
    stats[f"norm{i}"] = {"mean": jnp.zeros(width), "var": jnp.ones(width)}
    width_in = width
  params["head"] = {
    "kernel": init(keys[-1], (width_in, C.D.NUM_CLASSES)),
    "bias": jnp.zeros(C.D.NUM_CLASSES),
  }
  return params, stats


def apply_cnn(params: Any, stats: Any, x: jax.Array, train: bool) -> tuple[jax.Array, Any]:
  """Logits and (in training) the updated BatchNorm statistics (momentum 0.9, eps 1e-5)."""
  new_stats = {}
  for i in range(len(stats)):
    x = _patches(x, 1 if i == 0 else 2) @ params[f"conv{i}"]["kernel"]
    norm, stat = params[f"norm{i}"], stats[f"norm{i}"]
    if train:
      mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
      new_stats[f"norm{i}"] = {
        "mean": 0.9 * stat["mean"] + 0.1 * mean,
        "var": 0.9 * stat["var"] + 0.1 * var,
      }
    else:
      mean, var = stat["mean"], stat["var"]
    x = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5) * norm["scale"] + norm["bias"])
  return x.mean((1, 2)) @ params["head"]["kernel"] + params["head"]["bias"], new_stats


def family_optimizer(family: str, schedule: Any, mask: Any) -> optax.GradientTransformation:
  """L2 (through the optimizer's normalisation) then the library's decoupled optimizer."""

  def make(learning_rate: Any, l2: Any, weight_decay: Any) -> optax.GradientTransformation:
    if family == "Adam":
      decoupled = dopt.adamw(learning_rate, weight_decay, schedule=schedule, mask=mask)
    else:
      decoupled = dopt.sgdw(learning_rate, 0.9, weight_decay, schedule=schedule, mask=mask)
    return optax.chain(optax.add_decayed_weights(l2, mask), decoupled)

  return optax.inject_hyperparams(make)(learning_rate=1e-3, l2=0.0, weight_decay=0.0)


def train(
  tx: optax.GradientTransformation,
  hparams: dict[str, Any],
  seed: Any,
  batches: Any,
  data: Any,
  features: tuple[int, ...],
) -> tuple[Any, Any, Any]:
  """Test error (%), test loss and the last epoch's mean training loss of one run; vmappable."""
  params, stats = init_cnn(jax.random.fold_in(jax.random.key(0), seed), features)
  opt_state = tx.init(params)
  opt_state.hyperparams.update(hparams)

  def step(carry: Any, idx: Any) -> tuple[Any, Any]:
    params, stats, opt_state = carry

    def loss_fn(p: Any) -> tuple[Any, Any]:
      logits, new_stats = apply_cnn(p, stats, data.x_train[idx], train=True)
      return C.D.cross_entropy(logits, data.y_train[idx]), new_stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), loss

  (params, stats, _), losses = jax.lax.scan(step, (params, stats, opt_state), batches)
  logits, _ = apply_cnn(params, stats, data.x_test, train=False)
  error = 100 * (1 - C.D.accuracy(logits, data.y_test))
  last = max(1, len(batches) // 10)
  return error, C.D.cross_entropy(logits, data.y_test), losses[-last:].mean()


def smooth(errors: np.ndarray) -> np.ndarray:
  """A (1, 2, 1) / 4 moving average along lambda (the last axis), the ends repeated."""
  padded = np.concatenate([errors[..., :1], errors, errors[..., -1:]], -1)
  return (padded[..., :-2] + 2 * padded[..., 1:-1] + padded[..., 2:]) / 4


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
  if len(log_alphas) < 2:
    return float("nan"), float("nan")
  s, c = np.polyfit(log_alphas, best, 1)
  dof = max(1, len(log_alphas) - 2)
  sigma2 = float(np.sum((best - (s * log_alphas + c)) ** 2)) / dof
  se = float(np.sqrt(sigma2 / np.sum((log_alphas - log_alphas.mean()) ** 2)))
  return float(s), se


def analyse(
  log_alphas: np.ndarray,
  log_lambdas: np.ndarray,
  error: np.ndarray,
  loss: np.ndarray,
  train_loss: np.ndarray,
  rng: Any,
  converged_train_loss: float = CONVERGED_TRAIN_LOSS,
  resamples: int = 1000,
) -> dict[str, Any]:
  """Best lambda per alpha, the converged alphas, the slope and its spread; (seeds, a, l) arrays.

  The score is the test error (ties, at 360 test images steps of 0.28%, broken by the test loss),
  smoothed along lambda by ``smooth`` against the noise of single test images.
  """
  score = smooth(error + 1e-3 * np.nan_to_num(loss, nan=1e3))
  mean_error, mean_score = error.mean(0), score.mean(0)
  best = np.array([best_log_lambda(log_lambdas, row) for row in mean_score])
  best_error = mean_error.min(1)
  converged = np.nan_to_num(train_loss.mean(0), nan=1e3).min(1) < converged_train_loss
  interior = np.array([0 < np.argmin(row) < len(row) - 1 for row in mean_score])
  s, se = slope(log_alphas[converged], best[converged])
  per_seed = [
    slope(
      log_alphas[converged],
      np.array([best_log_lambda(log_lambdas, row) for row in seed_score[converged]]),
    )[0]
    for seed_score in score
  ]
  boot = []
  for _ in range(resamples):
    sample = score[rng.integers(0, len(score), len(score))].mean(0)
    b = np.array([best_log_lambda(log_lambdas, row) for row in sample[converged]])
    boot.append(slope(log_alphas[converged], b)[0])
  band = [
    (
      float(log_lambdas[row <= row.min() + NEAR_OPTIMAL_PP].min()),
      float(log_lambdas[row <= row.min() + NEAR_OPTIMAL_PP].max()),
    )
    for row in mean_error
  ]
  # The upper edge of the band (where too much decay starts to cost) is a second, less noisy
  # handle on the coupling than the argmin of a flat valley.
  edge_slope, edge_se = slope(log_alphas[converged], np.array([hi for _, hi in band])[converged])
  return {
    "band_edge_slope": edge_slope,
    "band_edge_slope_se": edge_se,
    "test_error_mean": mean_error,
    "test_error_per_seed": error,
    "test_loss_mean": loss.mean(0),
    "best_log_lambda": best,
    "best_error": best_error,
    "converged": converged,
    "interior": interior,
    "near_optimal_band": band,
    "slope": s,
    "slope_se": se,
    "slope_per_seed": per_seed,
    "slope_bootstrap_95": [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))],
  }


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the slope per optimizer."""

  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alphas", type=int, default=4, help="learning rates per grid")
    parser.add_argument("--lambdas", type=int, default=8, help="decays per grid")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  out = C.Outputs("repro_decoupling", args.out, argv, publish=args.publish)
  data = C.D.load_digits(args.seed, smoke=args.smoke)
  num_train = len(data.x_train)
  features = (2, 2) if args.smoke else FEATURES
  steps = 3 if args.smoke else args.epochs * (num_train // args.batch_size)
  n_alpha, n_lambda = (2, 3) if args.smoke else (args.alphas, args.lambdas)
  seeds = np.arange(args.seed, args.seed + (2 if args.smoke else args.seeds))
  batches = np.stack([C.D.batch_indices(int(s), num_train, args.batch_size, steps) for s in seeds])
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=steps)
  mask = dopt.weight_decay_mask(init_cnn(jax.random.key(0), features)[0])
  data_arrays = jax.tree.map(jnp.asarray, data)
  rng = np.random.default_rng(args.seed)

  results: dict[str, dict[str, Any]] = {}
  for family, spec in FAMILIES.items():
    log_alphas = np.linspace(*spec["alpha"], n_alpha)
    grids = {kind: np.linspace(*spec[kind], n_lambda) for kind in ("l2", "wd")}
    # Every (kind, seed, alpha, lambda) of the family: the other decay is 0.
    kk, ss, aa, ll = np.meshgrid(
      np.arange(2), np.arange(len(seeds)), log_alphas, np.arange(n_lambda), indexing="ij"
    )
    lam = np.where(kk == 0, 10.0 ** grids["l2"][ll], 10.0 ** grids["wd"][ll])
    hparams = {
      "learning_rate": jnp.asarray(10.0 ** aa.ravel(), jnp.float32),
      "l2": jnp.asarray(np.where(kk == 0, lam, 0.0).ravel(), jnp.float32),
      "weight_decay": jnp.asarray(np.where(kk == 1, lam, 0.0).ravel(), jnp.float32),
    }
    tx = family_optimizer(family, schedule, mask)

    def run(hp: Any, seed: Any, batches: Any, data: Any, tx: Any = tx) -> Any:
      return train(tx, hp, seed, batches, data, features)

    error, loss, train_loss = C.D.jit(jax.vmap(run, in_axes=(0, 0, 0, None)), smoke=args.smoke)(
      hparams, jnp.asarray(seeds[ss.ravel()]), jnp.asarray(batches[ss.ravel()]), data_arrays
    )
    shape = kk.shape
    error, loss = np.asarray(error).reshape(shape), np.asarray(loss).reshape(shape)
    train_loss = np.asarray(train_loss).reshape(shape)
    for k, (name, kind) in enumerate(zip(spec["names"], ("l2", "wd"), strict=True)):
      # The smoke run fits every learning rate, to run the fit.
      threshold = np.inf if args.smoke else CONVERGED_TRAIN_LOSS
      r = analyse(
        log_alphas,
        grids[kind],
        error[k],
        loss[k],
        train_loss[k],
        rng,
        threshold,
        resamples=20 if args.smoke else 1000,
      )
      r |= {
        "label": "L2 coefficient lambda'" if kind == "l2" else "decay lambda (paper's convention)",
        "log_alphas": log_alphas,
        "log_lambdas": grids[kind],
        "train_loss_mean": train_loss[k].mean(0),
      }
      results[name] = r
      fitted = ", ".join(f"{a:g}" for a in log_alphas[r["converged"]])
      print(
        f"{name:8s} slope {r['slope']:+.2f} ± {r['slope_se']:.2f} over log alpha {fitted}; "
        f"bootstrap 95% {r['slope_bootstrap_95'][0]:+.2f}..{r['slope_bootstrap_95'][1]:+.2f}; "
        f"best error {r['best_error'].round(2)}; best log lambda {r['best_log_lambda'].round(2)}"
      )

  rows = [
    [
      name,
      f"{r['slope']:+.2f} ± {r['slope_se']:.2f}",
      f"[{r['slope_bootstrap_95'][0]:+.2f}, {r['slope_bootstrap_95'][1]:+.2f}]",
      ", ".join(f"{s:+.2f}" for s in r["slope_per_seed"]),
      f"{r['band_edge_slope']:+.2f} ± {r['band_edge_slope_se']:.2f}",
      "-1" if "L2" in name else "0",
      ", ".join(f"{a:g}" for a in r["log_alphas"][r["converged"]]),
      f"{r['best_error'].min():.2f}",
      f"10^[{r['log_alphas'][0]:g}, {r['log_alphas'][-1]:g}] x 10^[{r['log_lambdas'][0]:g}, "
      f"{r['log_lambdas'][-1]:g}]",
    ]
    for name, r in results.items()
  ]
  md = (
    f"Digits CNN {features}, {args.epochs if not args.smoke else 0} epochs = {steps} steps "
    f"(batch {args.batch_size}), one cosine period, {n_alpha} x {n_lambda} grid per optimizer, "
    f"{len(seeds)} seeds (initialisation and batch order; data split {args.seed}). The best lambda "
    "per alpha minimises the seed-averaged test error (ties broken by the test loss), smoothed "
    "by a (1, 2, 1)/4 average along lambda and refined by a parabola in log lambda; the slope is "
    "a least-squares fit over the learning rates that fit the training set (final training loss "
    f"below {CONVERGED_TRAIN_LOSS:g} at the best lambda), ± its standard error; the 95% interval "
    "is a bootstrap over seeds, and the per-seed slopes use each seed's grid alone. For SGD, "
    "Proposition 1 makes the SGDW grid the SGD+L2 grid sheared by lambda = alpha * lambda' (up "
    "to the momentum form under a schedule), so the two slopes differ by about 1 by "
    "construction; the claim is about where the valley lies.\n\n"
  )
  md += C.markdown_table(
    [
      "optimizer",
      "slope d log(best lambda) / d log(alpha)",
      "bootstrap 95%",
      "per seed",
      f"slope of the band's upper edge (within {NEAR_OPTIMAL_PP:g} pp)",
      "paper",
      "log10 alphas fitted",
      "best test error (%)",
      "grid",
    ],
    rows,
  )
  md += "\n## Per learning rate (seed-averaged)\n\n"
  detail = []
  for name, r in results.items():
    for i, a in enumerate(r["log_alphas"]):
      lo, hi = r["near_optimal_band"][i]
      detail.append(
        [
          name,
          f"{a:g}",
          f"{r['best_error'][i]:.2f}",
          f"{r['best_log_lambda'][i]:.2f}" + ("" if r["interior"][i] else " (edge)"),
          f"[{lo:g}, {hi:g}]",
          f"{float(r['train_loss_mean'][i].min()):.3f}",
          "yes" if r["converged"][i] else "no",
        ]
      )
  md += C.markdown_table(
    [
      "optimizer",
      "log10 alpha",
      "best test error (%)",
      "best log10 lambda",
      f"log10 lambda within {NEAR_OPTIMAL_PP:g} pp of the best",
      "lowest final train loss",
      "fitted",
    ],
    detail,
  )
  out.write("Decoupling of the best learning rate and weight decay", md, {"grids": results})

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 9))
  for ax, (name, r) in zip(axes.flat, results.items(), strict=True):
    da = (r["log_alphas"][-1] - r["log_alphas"][0]) / max(1, 2 * (n_alpha - 1))
    dl = (r["log_lambdas"][1] - r["log_lambdas"][0]) / 2
    err = r["test_error_mean"]
    im = ax.imshow(
      err.T,
      origin="lower",
      aspect="auto",
      cmap="viridis_r",
      extent=(
        r["log_alphas"][0] - da,
        r["log_alphas"][-1] + da,
        r["log_lambdas"][0] - dl,
        r["log_lambdas"][-1] + dl,
      ),
      vmax=min(float(np.nanmax(err)), 4 * float(np.nanmin(err)) + 2),
    )
    band = np.array(r["near_optimal_band"])
    ax.vlines(
      r["log_alphas"],
      band[:, 0],
      band[:, 1],
      color="w",
      lw=3,
      alpha=0.6,
      label=f"within {NEAR_OPTIMAL_PP:g} pp of the best",
    )
    c = r["converged"]
    ax.plot(r["log_alphas"][c], r["best_log_lambda"][c], "r.-", label="best lambda (fitted)")
    ax.plot(r["log_alphas"][~c], r["best_log_lambda"][~c], "rx", label="best lambda (not trained)")
    ax.set(
      title=f"{name}: test error (%, seed mean)\nslope {r['slope']:+.2f} ± {r['slope_se']:.2f}"
      f" (band's upper edge {r['band_edge_slope']:+.2f})",
      xlabel="log10 alpha",
      ylabel=f"log10 {r['label']}",
    )
    ax.legend(fontsize=6, loc="lower left", framealpha=0.6)
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(out.figure("repro_decoupling.png"), dpi=110)
  plt.close(fig)
  return {name: (r["slope"], r["slope_se"]) for name, r in results.items()}


if __name__ == "__main__":
  main()
