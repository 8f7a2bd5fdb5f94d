"""Reproduction 3: warm restarts (AdamWR, SGDWR) against one cosine period of the same budget.

Loshchilov & Hutter (ICLR 2019, Section 4.3 and Figure 4; SGDR, ICLR 2017):
with warm restarts the schedule anneals to 0 at the end of every period
T_i = T_0 T_mult^i, so a good model is available at each of these ends
("anytime performance"), while one cosine period of the whole budget only
anneals at the very end. The weight decay is the paper's normalized decay,
lambda_t = lambda_norm sqrt(b / (B T_i)), which follows the restarts
(``dopt.normalized_weight_decay_schedule``); the single cosine uses T = the
whole budget (``dopt.normalized_weight_decay``).

Here (see ``_mnist1d``): MNIST-1D, 10,000 training and 5,000 test examples,
the 1-D CNN with BatchNorm of the decoupling reproduction, batch 64,
T_0 = ``--first-period`` epochs, T_mult = 2, ``--periods`` periods (3
restarts by default: 2 + 4 + 8 + 16 = 30 epochs), several lambda_norm and
seeds (initialisation and batch order; the restart and the cosine run of a
seed share both, so their difference is paired). The test error is measured
after every epoch; the claim is read at the end of every period, against
the single cosine at the same step. Each optimizer's runs (lambda_norm x
seeds) train in one program through ``dopt.inject_hyperparams``.

    python benchmarks/repro_warm_restarts.py
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
ALPHAS = {"Adam": 1e-2, "SGD": 0.1}
LAMBDA_NORMS = (0.03, 0.1, 0.3)  # around the decoupling pilot's best lambda_norm (about 0.1)
MOMENTUM = 0.9
PAIRS = (("AdamWR", "AdamW (cosine)"), ("SGDWR", "SGDW (cosine)"))


def schedules(
  steps_per_epoch: int, first_epochs: int, total_epochs: int, batch_size: int, num_train: int
) -> dict[str, tuple[optax.Schedule, optax.Schedule]]:
  """'WR' and 'cosine' -> (eta_t, lambda_t for lambda_norm = 1)."""
  t0 = first_epochs * steps_per_epoch
  total = total_epochs * steps_per_epoch
  unit_wr = dopt.normalized_weight_decay_schedule(
    1.0,
    batch_size=batch_size,
    num_train_points=num_train,
    first_period=t0,
    period_mult=2,
    steps_per_epoch=steps_per_epoch,
  )
  unit_cos = dopt.normalized_weight_decay(1.0, batch_size, num_train, total_epochs)
  return {
    "WR": (dopt.cosine_warm_restart_schedule(1.0, first_period=t0, period_mult=2), unit_wr),
    "cosine": (
      dopt.cosine_warm_restart_schedule(1.0, first_period=total),
      lambda count: np.float32(unit_cos) + 0 * count,
    ),
  }


def optimizer(family: str, eta: optax.Schedule, unit_lambda: optax.Schedule) -> Any:
  """``inject_hyperparams`` factory of (learning_rate, lambda_norm): AdamW or SGDW, kernels only."""
  mask = dopt.weight_decay_mask

  def make(learning_rate: Any, lambda_norm: Any) -> optax.GradientTransformation:
    def lam(count: Any) -> Any:
      return lambda_norm * unit_lambda(count)

    if family == "Adam":
      return dopt.adamw(
        learning_rate, lam, schedule=eta, mask=mask, weight_decay_convention="paper"
      )
    return dopt.sgdw(
      learning_rate, MOMENTUM, lam, schedule=eta, mask=mask, weight_decay_convention="paper"
    )

  return dopt.inject_hyperparams(make)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the test error after every epoch per optimizer."""

  def extra(parser: Any) -> None:
    parser.add_argument("--first-period", type=int, default=2, help="T_0 in epochs")
    parser.add_argument("--periods", type=int, default=4, help="number of periods (restarts + 1)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-test", type=int, default=NUM_TEST)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  out = C.Outputs("repro_warm_restarts", args.out, argv, publish=args.publish)
  lambda_norms = np.asarray(LAMBDA_NORMS)
  if args.smoke:
    args.num_train, args.num_test, args.batch_size = 190, 100, 32
    args.first_period, args.periods, args.seeds = 1, 3, 2
    lambda_norms = lambda_norms[:2]
  features = (2, 2, 2) if args.smoke else FEATURES
  data = M.load_mnist1d(args.num_train, args.num_test, args.seed)
  steps_per_epoch = args.num_train // args.batch_size
  first, periods = args.first_period, args.periods
  epochs = first * (2**periods - 1)  # T_0 + 2 T_0 + ...: the periods fill the budget
  steps = epochs * steps_per_epoch
  period_ends = np.cumsum([first * 2**i for i in range(periods)])
  seeds = np.arange(args.seed, args.seed + args.seeds)
  batches = np.stack(
    [M.batch_indices(int(s), args.num_train, args.batch_size, steps) for s in seeds]
  )
  ll, ss = np.meshgrid(np.arange(len(lambda_norms)), np.arange(len(seeds)), indexing="ij")
  compiler_options = C.D.SMOKE_COMPILER_OPTIONS if args.smoke else None
  scheds = schedules(steps_per_epoch, first, epochs, args.batch_size, args.num_train)

  curves: dict[str, np.ndarray] = {}  # name -> (lambda_norms, seeds, epochs), test error in %
  timings: dict[str, float] = {}
  for family, (wr_name, cos_name) in zip(ALPHAS, PAIRS, strict=True):
    for name, kind in ((wr_name, "WR"), (cos_name, "cosine")):
      eta, unit = scheds[kind]
      start = time.perf_counter()
      run = M.run_grid(
        optimizer(family, eta, unit),
        {
          "learning_rate": np.full(ll.size, ALPHAS[family]),
          "lambda_norm": lambda_norms[ll].ravel(),
        },
        ss.ravel(),
        seeds,
        batches,
        data,
        features=features,
        eval_every=steps_per_epoch,
        compiler_options=compiler_options,
      )
      timings[name] = time.perf_counter() - start
      curves[name] = run["test_error_curve"].reshape(*ll.shape, epochs)
      mean = curves[name].mean(1)
      print(
        f"{name:15s} {timings[name]:.0f} s; "
        + "; ".join(
          f"lambda_norm {v:g}: " + " ".join(f"ep{e}:{mean[i, e - 1]:.2f}%" for e in period_ends)
          for i, v in enumerate(lambda_norms)
        )
      )

  comparisons = []
  for wr_name, cos_name in PAIRS:
    for i, v in enumerate(lambda_norms):
      for e in period_ends:
        wr, cos = curves[wr_name][i, :, e - 1], curves[cos_name][i, :, e - 1]
        d, lo, hi = C.mean_interval(wr - cos)
        comparisons.append(
          {
            "pair": f"{wr_name} - {cos_name}",
            "lambda_norm": float(v),
            "epoch": int(e),
            "step": int(e * steps_per_epoch),
            "wr_mean": float(wr.mean()),
            "wr_std": float(wr.std(ddof=1)) if len(wr) > 1 else 0.0,
            "cosine_mean": float(cos.mean()),
            "cosine_std": float(cos.std(ddof=1)) if len(cos) > 1 else 0.0,
            "difference": d,
            "difference_95": [lo, hi],
            "wr_better": bool(hi < 0),
            "wr_worse": bool(lo > 0),
          }
        )
  write_results(out, args, curves, comparisons, timings, period_ends, seeds, lambda_norms, steps)
  plot(
    out.figure("repro_warm_restarts.png"),
    curves,
    comparisons,
    scheds,
    period_ends,
    steps_per_epoch,
    steps,
    lambda_norms,
  )
  return {"curves": curves, "period_ends": period_ends, "comparisons": comparisons}


def write_results(
  out: C.Outputs,
  args: Any,
  curves: dict[str, np.ndarray],
  comparisons: list[dict[str, Any]],
  timings: dict[str, float],
  period_ends: np.ndarray,
  seeds: np.ndarray,
  lambda_norms: np.ndarray,
  steps: int,
) -> None:
  """The Markdown and JSON tables."""
  epochs = int(period_ends[-1])
  md = (
    f"MNIST-1D (`mnist1d` {M.mnist1d_version()}, `make_dataset`, generated, nothing downloaded): "
    f"{args.num_train} training and {args.num_test} test examples, generator seed {args.seed}. "
    f"1-D CNN {FEATURES if not args.smoke else (2, 2, 2)} with BatchNorm, batch {args.batch_size}, "
    f"{epochs} epochs = {steps} steps. Restarts: T_0 = {args.first_period} epochs, T_mult = 2, "
    f"periods ending at epochs {', '.join(map(str, period_ends))}; the single cosine spans all "
    f"{epochs} epochs. Adam alpha {ALPHAS['Adam']:g}, SGD alpha {ALPHAS['SGD']:g} (momentum "
    f"{MOMENTUM:g}); normalized decay lambda_norm in {', '.join(f'{v:g}' for v in lambda_norms)} "
    "(T = the current period for the WR runs, T = the whole budget for the cosine runs), kernels "
    f"only; seeds {', '.join(map(str, seeds))} (initialisation and batch order, shared by the two "
    f"schedules). Library {dopt.__version__}. Wall time: "
    + ", ".join(f"{n} {t:.0f} s" for n, t in timings.items())
    + ".\n\nTest error (%) at the end of every period, mean ± std over seeds, and the paired "
    "difference WR - cosine at the same step with its 95% t-interval over seeds (negative: the "
    "restarts are better).\n\n"
  )
  rows = [
    [
      c["pair"],
      f"{c['lambda_norm']:g}",
      c["epoch"],
      f"{c['wr_mean']:.2f} ± {c['wr_std']:.2f}",
      f"{c['cosine_mean']:.2f} ± {c['cosine_std']:.2f}",
      f"{c['difference']:+.2f} [{c['difference_95'][0]:+.2f}, {c['difference_95'][1]:+.2f}]",
      "WR better" if c["wr_better"] else "WR worse" if c["wr_worse"] else "no difference resolved",
    ]
    for c in comparisons
  ]
  md += C.markdown_table(
    [
      "pair",
      "lambda_norm",
      "period end (epoch)",
      "WR test error (%)",
      "cosine test error (%)",
      "WR - cosine (pp), 95%",
      "reading",
    ],
    rows,
  )
  out.write(
    "Warm restarts vs one cosine period: anytime test error (MNIST-1D)",
    md,
    {
      "dataset": {
        "name": "MNIST-1D",
        "mnist1d_version": M.mnist1d_version(),
        **M.dataset_parameters(args.num_train, args.num_test, args.seed),
      },
      "library_version": dopt.__version__,
      "seed": args.seed,
      "seeds": seeds,
      "lambda_norms": lambda_norms,
      "alphas": ALPHAS,
      "period_ends_epochs": period_ends,
      "steps": steps,
      "seconds_per_optimizer": timings,
      "comparisons": comparisons,
      "test_error_per_epoch": curves,
    },
  )


def plot(
  path: Any,
  curves: dict[str, np.ndarray],
  comparisons: list[dict[str, Any]],
  scheds: dict[str, tuple[optax.Schedule, optax.Schedule]],
  period_ends: np.ndarray,
  steps_per_epoch: int,
  steps: int,
  lambda_norms: np.ndarray,
) -> None:
  """Top: test error per epoch (middle lambda_norm, mean ± std) with eta_t; bottom: WR - cosine."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  mid = len(lambda_norms) // 2
  t = np.arange(steps)
  etas = {k: np.asarray([float(eta(s)) for s in t]) for k, (eta, _) in scheds.items()}
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for col, pair in enumerate(PAIRS):
    ax = axes[0, col]
    ax_eta = ax.twinx()
    for name, kind in zip(pair, ("WR", "cosine"), strict=True):
      c = curves[name][mid]
      x = np.arange(1, c.shape[-1] + 1)
      (line,) = ax.plot(x, c.mean(0), marker=".", ms=3, label=name)
      ax.fill_between(
        x, c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.2, color=line.get_color()
      )
      ax_eta.plot(t / steps_per_epoch, etas[kind], color=line.get_color(), lw=0.7, alpha=0.5)
    for e in period_ends:
      ax.axvline(e, color="gray", lw=0.6, ls=":")
    ax.set(
      yscale="log",
      xlabel="epoch",
      ylabel="test error (%)",
      title=f"{pair[0]} vs {pair[1]}, lambda_norm {lambda_norms[mid]:g}",
    )
    ax_eta.set_ylabel("eta_t (thin lines)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1, col]
    label = f"{pair[0]} - {pair[1]}"
    for i, v in enumerate(lambda_norms):
      rows = [c for c in comparisons if c["pair"] == label and c["lambda_norm"] == float(v)]
      x = np.arange(len(rows)) + (i - (len(lambda_norms) - 1) / 2) * 0.12
      d = np.array([c["difference"] for c in rows])
      ci = np.array([c["difference_95"] for c in rows])
      ax.errorbar(
        x, d, yerr=[d - ci[:, 0], ci[:, 1] - d], fmt="o", capsize=3, label=f"lambda_norm {v:g}"
      )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(period_ends)), [f"epoch {e}" for e in period_ends])
    ax.set(
      ylabel="WR - cosine test error (pp), 95% CI",
      title="at the end of every restart period (negative: WR better)",
      yscale="symlog",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  C.D.save_figure(fig, path)


if __name__ == "__main__":
  main()
