"""Reproduction 1: decoupled weight decay separates the best learning rate and decay (Figure 2).

Loshchilov & Hutter (ICLR 2019), Figure 2: on alpha x lambda grids, SGD + L2
and Adam + L2 show a diagonal valley of good settings (the best L2 factor falls
as alpha grows), while for SGDW and AdamW in the paper's convention (the decay
is multiplied by eta_t, not by alpha) the best lambda barely moves with alpha.
The paper's axes are the normalized values: lambda = lambda_norm sqrt(b / (B T))
(``dopt.normalized_weight_decay``), one cosine period of T epochs.

Here (see ``_mnist1d``): MNIST-1D, 10,000 training and 5,000 test examples, a
1-D CNN with BatchNorm (its convolution kernels scale invariant), batch 64,
``--epochs`` epochs of one cosine period, an alpha x lambda_norm grid for each
of Adam + L2, AdamW, SGD + L2 and SGDW (momentum 0.9), several seeds
(initialisation and batch order). Each family's two grids train in one
program: ``chain(add_decayed_weights(l2), adamw(alpha, lambda))`` (or
``sgdw``), built by ``dopt.inject_hyperparams`` from traced values, is
Adam + L2 with lambda = 0 (the L2 gradient goes through Adam's normalisation)
and AdamW with l2 = 0. Biases and BatchNorm parameters are never decayed.

Decay acts on a timescale of about 1 / lambda steps, and the weights behind a
BatchNorm reach their equilibrium norm (and with it their effective step
size) only after several of them; with the normalized decay lambda * steps =
lambda_norm sqrt(steps), so the grid is chosen to put lambda * steps at 1 or
more over most of it. Whether the runs got there is read off the angular
update of the scale-invariant kernels, ||w_{t+1} - w_t|| / ||w_t||, against its
equilibrium value (Kosson et al., 2024, "Rotational equilibrium"; the gradient
is orthogonal to w, and the noise that momentum accumulates grows ||w||^2 by
(step / (1 - mu))^2 per step while the decay removes 2 x its per-step rate):
sqrt(2 lambda eta_t (1 - mu) / (1 + mu)) for SGDW, whose decay bypasses the
momentum, sqrt(2 lambda eta_t (1 - b1) / (1 + b1)) for AdamW, and
sqrt(2 alpha lambda' eta_t / (1 + mu)) for SGD + L2, whose decay goes through
it; none is simple for Adam + L2. None of them depends on alpha for the
decoupled optimizers: at equilibrium alpha only sets the norm of the
scale-invariant weights, not their effective step, which is the mechanism
behind the paper's claim on BatchNorm networks.

The coupling is the slope of log10(best lambda_norm) against log10(alpha), by
least squares over the learning rates whose best lambda is inside the grid
and whose best error is within ``USABLE_ERROR_FACTOR`` of the optimizer's best.
The best lambda of a learning rate minimises the seed-averaged test error,
smoothed by a (1, 2, 1) / 4 average along lambda and refined by a parabola
in log lambda. The 95 % interval is a bootstrap that resamples the learning
rates (pairs) and, within each, the seeds. The paper predicts about -1 for
the L2 variants and about 0 for the decoupled ones.

    python benchmarks/repro_decoupling.py
"""

from __future__ import annotations

import time
from typing import Any

import _common as C
import _mnist1d as M
import numpy as np
import optax

import decoupled_optax as dopt

FEATURES = (16, 32, 32)
NUM_TRAIN, NUM_TEST = 10_000, 5_000
MOMENTUM, B1 = 0.9, 0.9
# log10 ranges of alpha, of the normalized L2 factor lambda'_norm and of the normalized decoupled
# decay lambda_norm, per family; a family's L2 and decoupled grids share alpha and train together.
# A pilot (4 alphas x 8 lambdas, 1 seed, 10 epochs) found Adam failing (19-27 % error) at alpha =
# 10^-3.5 and 10^-0.5 and SGD diverging at 10^0.5; the decoupled valleys near lambda_norm = 10^-1,
# lambda_norm = 10^2 diverging (lambda eta_t > 1); and the L2 valleys moving by about 2.3 (Adam)
# and 1.1 (SGD) decades per decade of alpha, hence their wider grids.
FAMILIES: dict[str, dict[str, Any]] = {
  "Adam": {
    "names": ("Adam+L2", "AdamW"),
    "alpha": (-3.0, -1.0),
    "l2": (-3.0, 2.5),
    "wd": (-2.5, 1.0),
  },
  "SGD": {
    "names": ("SGD+L2", "SGDW"),
    "alpha": (-2.5, -0.5),
    "l2": (-2.5, 2.0),
    "wd": (-2.5, 1.0),
  },
}
USABLE_ERROR_FACTOR = 2.0  # an alpha enters the fit if its best error is within this of the best
TOP_CELLS = 10  # the near-optimal region: the best 10 settings, as the paper's black circles


def family_optimizer(family: str, schedule: optax.Schedule) -> Any:
  """``inject_hyperparams`` factory: L2 (through the direction) then the decoupled optimizer."""
  mask = dopt.weight_decay_mask

  def make(learning_rate: Any, l2: Any, weight_decay: Any) -> optax.GradientTransformation:
    if family == "Adam":
      decoupled = dopt.adamw(
        learning_rate,
        weight_decay,
        b1=B1,
        schedule=schedule,
        mask=mask,
        weight_decay_convention="paper",
      )
    else:
      decoupled = dopt.sgdw(
        learning_rate,
        MOMENTUM,
        weight_decay,
        schedule=schedule,
        mask=mask,
        weight_decay_convention="paper",
      )
    return optax.chain(optax.add_decayed_weights(l2, mask), decoupled)

  return dopt.inject_hyperparams(make)


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


def slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """Least-squares slope of y against x and its standard error (nan with fewer than 2 x)."""
  if len(np.unique(x)) < 2:
    return float("nan"), float("nan")
  s, c = np.polyfit(x, y, 1)
  dof = max(1, len(x) - 2)
  sigma2 = float(np.sum((y - (s * x + c)) ** 2)) / dof
  return float(s), float(np.sqrt(sigma2 / np.sum((x - x.mean()) ** 2)))


def analyse(
  log_alphas: np.ndarray,
  log_lambdas: np.ndarray,
  error: np.ndarray,
  rng: np.random.Generator,
  resamples: int = 2000,
) -> dict[str, Any]:
  """Best lambda per alpha, the fitted alphas, the slope and its bootstrap; error is (seeds, a, l)."""
  mean_error = error.mean(0)
  score = smooth(mean_error)
  best = np.array([best_log_lambda(log_lambdas, row) for row in score])
  best_error = mean_error.min(1)
  interior = np.array([0 < np.argmin(row) < len(row) - 1 for row in score])
  usable = best_error <= USABLE_ERROR_FACTOR * best_error.min()
  fitted = interior & usable
  s, se = slope(log_alphas[fitted], best[fitted])
  rows = np.flatnonzero(fitted)
  n_seeds = error.shape[0]
  boot = []
  for _ in range(resamples):
    pick = rows[rng.integers(0, len(rows), len(rows))] if len(rows) else rows
    b = [
      best_log_lambda(log_lambdas, smooth(error[rng.integers(0, n_seeds, n_seeds), i].mean(0)))
      for i in pick
    ]
    boot.append(slope(log_alphas[pick], np.array(b))[0])
  boot = np.asarray(boot)
  ci = (
    [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))]
    if np.isfinite(boot).any()
    else [float("nan")] * 2
  )
  per_seed = [
    slope(
      log_alphas[fitted],
      np.array([best_log_lambda(log_lambdas, smooth(row)) for row in e[fitted]]),
    )[0]
    for e in error
  ]
  order = np.argsort(mean_error, axis=None)[:TOP_CELLS]
  return {
    "test_error_mean": mean_error,
    "test_error_per_seed": error,
    "best_log_lambda_norm": best,
    "best_error": best_error,
    "interior": interior,
    "fitted": fitted,
    "slope": s,
    "slope_se": se,
    "slope_bootstrap_95": ci,
    "bootstrap_degenerate_fraction": float(np.mean(~np.isfinite(boot))),
    "slope_per_seed": per_seed,
    "top_cells": np.stack(np.unravel_index(order, mean_error.shape), -1),
  }


def verdict(name: str, r: dict[str, Any]) -> str:
  """What the interval says about the paper's prediction and the other hypothesis."""
  lo, hi = r["slope_bootstrap_95"]
  if not np.isfinite(lo):
    return "indeterminate (fewer than 2 learning rates fitted)"
  own, other = (-1.0, 0.0) if "L2" in name else (0.0, -1.0)
  parts = [
    f"{'contains' if lo <= own <= hi else 'excludes'} the paper's {own:+g}",
    f"{'excludes' if not lo <= other <= hi else 'contains'} the other hypothesis {other:+g}",
  ]
  return ", ".join(parts)


def equilibrium(
  name: str,
  alphas: np.ndarray,
  lam: np.ndarray,
  eta: np.ndarray,
  angular: np.ndarray,
) -> np.ndarray | None:
  """Measured / predicted angular update per step (Kosson et al. 2024), or None (Adam + L2).

  ``alphas`` and ``lam`` (per-step lambda = normalized value times sqrt(b / (B T))) broadcast
  against ``angular`` (..., steps) on the last axis but one; ``eta`` is (steps,).
  """
  if name == "AdamW":
    predicted = np.sqrt(2 * lam[..., None] * eta * (1 - B1) / (1 + B1))
  elif name == "SGDW":
    predicted = np.sqrt(2 * lam[..., None] * eta * (1 - MOMENTUM) / (1 + MOMENTUM))
  elif name == "SGD+L2":
    predicted = np.sqrt(2 * alphas[..., None] * lam[..., None] * eta / (1 + MOMENTUM))
  else:
    return None
  with np.errstate(divide="ignore", invalid="ignore"):
    return angular / predicted


def window_mean(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Mean over the steps from fraction ``lo`` to ``hi`` of the run (last axis)."""
  n = x.shape[-1]
  return x[..., int(lo * n) : max(int(lo * n) + 1, int(hi * n))].mean(-1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the slope and its interval per optimizer."""

  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--alphas", type=int, default=6, help="learning rates per grid")
    parser.add_argument("--lambdas", type=int, default=9, help="decays per grid")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-test", type=int, default=NUM_TEST)
    parser.add_argument("--only", default=None, help="one family: Adam or SGD")

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  out = C.Outputs("repro_decoupling", args.out, argv, publish=args.publish)
  if args.smoke:
    args.num_train, args.num_test, args.epochs, args.batch_size = 190, 100, 1, 32
    args.alphas, args.lambdas, args.seeds = 2, 3, 2
  features = (2, 2, 2) if args.smoke else FEATURES
  data = M.load_mnist1d(args.num_train, args.num_test, args.seed)
  steps_per_epoch = args.num_train // args.batch_size
  steps = args.epochs * steps_per_epoch
  seeds = np.arange(args.seed, args.seed + args.seeds)
  batches = np.stack(
    [M.batch_indices(int(s), args.num_train, args.batch_size, steps) for s in seeds]
  )
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=steps)
  eta = np.asarray([float(schedule(t)) for t in range(steps)])
  # lambda = lambda_norm * factor: the paper's normalized decay for one period of the whole run.
  factor = dopt.normalized_weight_decay(1.0, args.batch_size, args.num_train, args.epochs)
  rng = np.random.default_rng(args.seed)
  compiler_options = C.D.SMOKE_COMPILER_OPTIONS if args.smoke else None

  results: dict[str, dict[str, Any]] = {}
  timings: dict[str, float] = {}
  families = FAMILIES if args.only is None else {args.only: FAMILIES[args.only]}
  for family, spec in families.items():
    log_alphas = np.linspace(*spec["alpha"], args.alphas)
    grids = {kind: np.linspace(*spec[kind], args.lambdas) for kind in ("l2", "wd")}
    kk, ss, aa, ll = np.meshgrid(
      np.arange(2),
      np.arange(len(seeds)),
      np.arange(args.alphas),
      np.arange(args.lambdas),
      indexing="ij",
    )
    lam_norm = np.where(kk == 0, 10.0 ** grids["l2"][ll], 10.0 ** grids["wd"][ll])
    lam = lam_norm * factor
    hparams = {
      "learning_rate": 10.0 ** log_alphas[aa].ravel(),
      "l2": np.where(kk == 0, lam, 0.0).ravel(),
      "weight_decay": np.where(kk == 1, lam, 0.0).ravel(),
    }
    start = time.perf_counter()
    run = M.run_grid(
      family_optimizer(family, schedule),
      hparams,
      ss.ravel(),
      seeds,
      batches,
      data,
      features=features,
      compiler_options=compiler_options,
    )
    timings[family] = time.perf_counter() - start
    print(f"{family}: {kk.size} runs of {steps} steps in {timings[family]:.0f} s")
    shape = kk.shape
    error = run["test_error"].reshape(shape)
    train_loss = run["train_loss"].reshape(shape)
    angular = run["angular_update"].reshape(*shape, steps)
    for k, (name, kind) in enumerate(zip(spec["names"], ("l2", "wd"), strict=True)):
      r = analyse(log_alphas, grids[kind], error[k], rng, resamples=50 if args.smoke else 2000)
      lam_k = lam[k, 0]  # (alphas, lambdas)
      ratio = equilibrium(name, 10.0 ** log_alphas[:, None], lam_k, eta, angular[k])
      r |= {
        "label": "lambda'_norm (L2 factor)" if kind == "l2" else "lambda_norm (decoupled)",
        "log_alphas": log_alphas,
        "log_lambda_norms": grids[kind],
        # the per-step decay (before eta_t) times the steps: lambda, alpha lambda' for SGD + L2
        "decay_times_steps": (
          lam_k * steps * (10.0 ** log_alphas[:, None] if name == "SGD+L2" else 1.0)
          if name != "Adam+L2"
          else np.full_like(lam_k, np.nan)
        ),
        "train_loss_mean": train_loss[k].mean(0),
        "train_error_mean": run["train_error"].reshape(shape)[k].mean(0),
        "angular_update_mid_mean": window_mean(angular[k], 0.45, 0.55).mean(0),
        "verdict": verdict(name, r),
      }
      if ratio is not None:
        r["angular_ratio_mid"] = np.nanmean(window_mean(ratio, 0.45, 0.55), 0)
        r["angular_ratio_late"] = np.nanmean(window_mean(ratio, 0.8, 0.9), 0)
      results[name] = r
      lo, hi = r["slope_bootstrap_95"]
      print(
        f"{name:8s} slope {r['slope']:+.2f} (95% {lo:+.2f}..{hi:+.2f}) over log alpha "
        f"{log_alphas[r['fitted']].round(2)}; {r['verdict']}; best error "
        f"{r['best_error'].round(2)}; best log lambda_norm {r['best_log_lambda_norm'].round(2)}"
      )

  write_results(out, args, results, timings, steps, steps_per_epoch, seeds, features)
  plot(out.figure("repro_decoupling.png"), results)
  plot_equilibrium(out.figure("repro_decoupling_equilibrium.png"), results)
  return {name: (r["slope"], r["slope_bootstrap_95"]) for name, r in results.items()}


def write_results(
  out: C.Outputs,
  args: Any,
  results: dict[str, dict[str, Any]],
  timings: dict[str, float],
  steps: int,
  steps_per_epoch: int,
  seeds: np.ndarray,
  features: tuple[int, ...],
) -> None:
  """The Markdown and JSON tables."""
  dataset = M.dataset_parameters(args.num_train, args.num_test, args.seed)
  rows = []
  for name, r in results.items():
    lo, hi = r["slope_bootstrap_95"]
    rows.append(
      [
        name,
        f"{r['slope']:+.2f}",
        f"[{lo:+.2f}, {hi:+.2f}]",
        "-1" if "L2" in name else "0",
        r["verdict"],
        ", ".join(f"{s:+.2f}" for s in r["slope_per_seed"]),
        ", ".join(f"{a:g}" for a in r["log_alphas"][r["fitted"]]),
        f"{r['best_error'].min():.2f}",
      ]
    )
  md = (
    f"MNIST-1D (`mnist1d` {M.mnist1d_version()}, `make_dataset`, generated, nothing downloaded): "
    f"{args.num_train} training and {args.num_test} test examples, generator seed {args.seed}. "
    f"1-D CNN {features} with BatchNorm, batch {args.batch_size}, {args.epochs} epochs = {steps} "
    f"steps ({steps_per_epoch} per epoch), one cosine period; {args.alphas} x {args.lambdas} grid "
    f"per optimizer; seeds {', '.join(map(str, seeds))} (initialisation and batch order). "
    "Normalized decay lambda = lambda_norm sqrt(b / (B T)), so lambda * steps = lambda_norm "
    f"sqrt(steps) = {np.sqrt(steps):.1f} lambda_norm. Decoupled: paper's convention "
    "(`dopt.adamw`/`dopt.sgdw`, decay times eta_t); L2: `optax.add_decayed_weights` before the "
    "direction, the same normalisation of its factor. Kernels decayed, biases and BatchNorm "
    f"not. Library {dopt.__version__}. Wall time: "
    + ", ".join(f"{f} family {t:.0f} s" for f, t in timings.items())
    + ".\n\nThe best lambda of a learning rate minimises the seed-averaged test error "
    "(smoothed by (1, 2, 1)/4 along lambda, refined by a parabola in log lambda); the slope is "
    "a least-squares fit over the learning rates whose best lambda is inside the grid and whose "
    f"best error is within {USABLE_ERROR_FACTOR:g}x the optimizer's best; the 95% interval is a "
    "bootstrap resampling those learning rates and, within each, the seeds (2000 resamples); "
    "the per-seed slopes use each seed's grid alone.\n\n"
  )
  md += C.markdown_table(
    [
      "optimizer",
      "slope d log(best lambda) / d log(alpha)",
      "bootstrap 95%",
      "paper",
      "verdict",
      "per seed",
      "log10 alphas fitted",
      "best test error (%)",
    ],
    rows,
  )
  md += (
    "\n## Per learning rate (seed-averaged)\n\nThe per-step decay (lambda for the decoupled "
    "optimizers, alpha lambda' for SGD + L2) times the steps, and the angular update of the "
    "scale-invariant kernels over its equilibrium value at mid-run (45-55 % of the steps) and "
    "late (80-90 %), both at the grid's lambda nearest the best (the argmin of the smoothed "
    "error): near 1 means the norms had reached equilibrium. "
    "`repro_decoupling_equilibrium.png` shows the ratio over the whole grid.\n\n"
  )
  detail = []
  for name, r in results.items():
    for i, a in enumerate(r["log_alphas"]):
      best = r["best_log_lambda_norm"][i]
      j = int(np.argmin(smooth(r["test_error_mean"][i])))
      ratio = (
        f"{r['angular_ratio_mid'][i, j]:.2f} / {r['angular_ratio_late'][i, j]:.2f}"
        if "angular_ratio_mid" in r
        else "-"
      )
      detail.append(
        [
          name,
          f"{a:.2f}",
          f"{r['best_error'][i]:.2f}",
          f"{best:.2f}" + ("" if r["interior"][i] else " (edge)"),
          f"{r['decay_times_steps'][i, j]:.3g}" if name != "Adam+L2" else "-",
          f"{float(r['train_loss_mean'][i].min()):.3f}",
          ratio,
          "yes" if r["fitted"][i] else "no",
        ]
      )
  md += C.markdown_table(
    [
      "optimizer",
      "log10 alpha",
      "best test error (%)",
      "best log10 lambda_norm",
      "decay x steps there",
      "lowest final train loss",
      "angular / equilibrium there (mid / late)",
      "fitted",
    ],
    detail,
  )
  md += "\n## Test error (%, seed mean): rows log10 alpha, columns log10 lambda_norm\n"
  for name, r in results.items():
    md += f"\n### {name}\n\n"
    md += C.markdown_table(
      ["log10 alpha", *[f"{v:.2f}" for v in r["log_lambda_norms"]]],
      [
        [f"{a:.2f}", *[f"{e:.2f}" for e in row]]
        for a, row in zip(r["log_alphas"], r["test_error_mean"], strict=True)
      ],
    )
  out.write(
    "Decoupling of the best learning rate and weight decay (MNIST-1D)",
    md,
    {
      "dataset": {"name": "MNIST-1D", "mnist1d_version": M.mnist1d_version(), **dataset},
      "library_version": dopt.__version__,
      "seed": args.seed,
      "seeds": seeds,
      "steps": steps,
      "epochs": args.epochs,
      "batch_size": args.batch_size,
      "features": features,
      "family_seconds": timings,
      "grids": {
        n: {k: v for k, v in r.items() if k != "test_error_per_seed"} for n, r in results.items()
      },
      "test_error_per_seed": {n: r["test_error_per_seed"] for n, r in results.items()},
    },
  )


def plot(path: Any, results: dict[str, dict[str, Any]]) -> None:
  """Fig. 2's layout: test error heatmaps, the 10 best settings circled, the best lambda per alpha."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 9), squeeze=False)
  for ax, (name, r) in zip(axes.flat, results.items(), strict=False):
    la, ll = r["log_alphas"], r["log_lambda_norms"]
    da = (la[-1] - la[0]) / max(1, 2 * (len(la) - 1))
    dl = (ll[-1] - ll[0]) / max(1, 2 * (len(ll) - 1))
    err = r["test_error_mean"]
    im = ax.imshow(
      err.T,
      origin="lower",
      aspect="auto",
      cmap="viridis_r",
      extent=(la[0] - da, la[-1] + da, ll[0] - dl, ll[-1] + dl),
      norm=matplotlib.colors.LogNorm(
        vmin=float(np.nanmin(err)), vmax=min(float(np.nanmax(err)), 5 * float(np.nanmin(err)))
      ),
    )
    top = r["top_cells"]
    ax.plot(
      la[top[:, 0]],
      ll[top[:, 1]],
      "o",
      mfc="none",
      mec="k",
      ms=11,
      mew=1.5,
      label=f"the {TOP_CELLS} best settings",
    )
    f = r["fitted"]
    ax.plot(la[f], r["best_log_lambda_norm"][f], "r.-", label="best lambda (fitted)")
    ax.plot(la[~f], r["best_log_lambda_norm"][~f], "rx", label="best lambda (not fitted)")
    lo, hi = r["slope_bootstrap_95"]
    ax.set(
      title=f"{name}: test error (%, seed mean)\nslope {r['slope']:+.2f}, 95% [{lo:+.2f}, "
      f"{hi:+.2f}] (paper {'-1' if 'L2' in name else '0'})",
      xlabel="log10 alpha",
      ylabel=f"log10 {r['label']}",
    )
    ax.legend(fontsize=7, loc="lower left", framealpha=0.6)
    fig.colorbar(im, ax=ax)
  C.D.save_figure(fig, path)


def plot_equilibrium(path: Any, results: dict[str, dict[str, Any]]) -> None:
  """Measured / equilibrium angular update at mid-run against lambda * steps, one line per alpha."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [n for n, r in results.items() if "angular_ratio_mid" in r]
  fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 4))
  for ax, name in zip(np.atleast_1d(axes), names, strict=False):
    r = results[name]
    for i, a in enumerate(r["log_alphas"]):
      x = r["decay_times_steps"][i]
      ax.plot(x, r["angular_ratio_mid"][i], ".-", label=f"log10 alpha {a:.2f}")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(
      xscale="log",
      yscale="log",
      title=f"{name}: angular update / equilibrium, mid-run",
      xlabel="per-step decay (before eta_t) x steps",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  C.D.save_figure(fig, path)


if __name__ == "__main__":
  main()
