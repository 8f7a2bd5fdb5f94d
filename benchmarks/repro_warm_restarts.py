"""Reproduction 3: warm restarts (AdamWR, SGDWR) against one cosine period of the same budget.

Loshchilov & Hutter (ICLR 2019, Section 4.3 and Figure 4; SGDR, ICLR 2017):
with warm restarts the schedule anneals to 0 at the end of every period
T_i = T_0 T_mult^i, so a good model is available at each of these ends
("anytime performance"), while one cosine period of the whole budget only
anneals at the very end. The weight decay is the paper's normalized decay,
lambda_t = lambda_norm sqrt(b / (B T_i)), which follows the restarts
(``dopt.normalized_weight_decay_schedule``); the single cosine uses T = the
whole budget. The test error is measured after every epoch, for several
seeds trained at once (``jax.vmap`` over the seed).

    python benchmarks/repro_warm_restarts.py
"""

from __future__ import annotations

from typing import Any

import _common as C
import jax
import jax.numpy as jnp
import numpy as np

import decoupled_optax as dopt

LAMBDA_NORM = 0.05


def optimizers(
  steps_per_epoch: int, first_epochs: int, total_epochs: int, batch_size: int, num_train: int
) -> dict[str, tuple[Any, Any, Any]]:
  """name -> (tx, eta schedule, lambda schedule); restarts with T_0 = ``first_epochs``, T_mult 2."""
  t0 = first_epochs * steps_per_epoch
  total = total_epochs * steps_per_epoch
  eta_wr = dopt.cosine_warm_restart_schedule(1.0, first_period=t0, period_mult=2)
  eta_cos = dopt.cosine_warm_restart_schedule(1.0, first_period=total)
  common = dict(batch_size=batch_size, num_train_points=num_train, steps_per_epoch=steps_per_epoch)
  lam_wr = dopt.normalized_weight_decay_schedule(
    LAMBDA_NORM, first_period=t0, period_mult=2, **common
  )
  lam_cos = dopt.normalized_weight_decay_schedule(LAMBDA_NORM, first_period=total, **common)
  mask = dopt.weight_decay_mask
  adam_lr, sgd_lr = 1e-2, 0.1
  return {
    "AdamWR": (dopt.adamw(adam_lr, lam_wr, schedule=eta_wr, mask=mask), eta_wr, lam_wr),
    "AdamW (cosine)": (dopt.adamw(adam_lr, lam_cos, schedule=eta_cos, mask=mask), eta_cos, lam_cos),
    "SGDWR": (dopt.sgdw(sgd_lr, 0.9, lam_wr, schedule=eta_wr, mask=mask), eta_wr, lam_wr),
    "SGDW (cosine)": (
      dopt.sgdw(sgd_lr, 0.9, lam_cos, schedule=eta_cos, mask=mask),
      eta_cos,
      lam_cos,
    ),
  }


def plot(
  path: Any,
  mean: dict[str, np.ndarray],
  std: dict[str, np.ndarray],
  schedules: dict[str, tuple[np.ndarray, np.ndarray]],
  period_ends: np.ndarray,
  steps_per_epoch: int,
) -> None:
  """Test error (%, mean ± std per epoch) and, below, eta_t and the per-step decay lambda_t eta_t."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
  for col, pair in enumerate((("AdamWR", "AdamW (cosine)"), ("SGDWR", "SGDW (cosine)"))):
    ax_decay = axes[1, col].twinx()
    for name in pair:
      epochs_axis = np.arange(1, len(mean[name]) + 1)
      (line,) = axes[0, col].plot(epochs_axis, mean[name], marker=".", label=name)
      axes[0, col].fill_between(
        epochs_axis,
        mean[name] - std[name],
        mean[name] + std[name],
        alpha=0.2,
        color=line.get_color(),
      )
      eta, lam = schedules[name]
      t_epochs = np.arange(len(eta)) / steps_per_epoch
      axes[1, col].plot(t_epochs, eta, color=line.get_color(), label=f"{name}: eta_t (left)")
      ax_decay.plot(
        t_epochs,
        lam * eta,
        ls="--",
        color=line.get_color(),
        label=f"{name}: lambda_t * eta_t (right)",
      )
    for e in period_ends:
      axes[0, col].axvline(e, color="gray", lw=0.6, ls=":")
    axes[0, col].set(ylabel="test error (%)", yscale="log", title=f"{pair[0]} vs {pair[1]}")
    axes[1, col].set(
      xlabel="epoch",
      ylabel="eta_t",
      title="eta_t (solid) and decay per step lambda_t * eta_t (dashed)",
    )
    ax_decay.set_ylabel("fraction of the weight removed per step")
    ax_decay.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lines = axes[1, col].get_lines() + ax_decay.get_lines()
    axes[1, col].legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper right")
    axes[0, col].legend(fontsize=7)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the test error after every epoch per optimizer."""

  def extra(parser: Any) -> None:
    parser.add_argument("--first-period", type=int, default=2, help="T_0 in epochs")
    parser.add_argument("--restarts", type=int, default=4, help="number of periods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  out = C.Outputs("repro_warm_restarts", args.out, argv, publish=args.publish)
  data = C.D.load_digits(args.seed, smoke=args.smoke)
  num_train = len(data.x_train)
  batch_size = args.batch_size
  steps_per_epoch = 3 if args.smoke else num_train // batch_size
  first, restarts = (1, 2) if args.smoke else (args.first_period, args.restarts)
  epochs = first * (2**restarts - 1)  # T_0 + 2 T_0 + ... : the periods fill the budget
  steps = epochs * steps_per_epoch
  seeds = np.arange(args.seed, args.seed + (2 if args.smoke else args.seeds))
  batches = np.stack([C.D.batch_indices(int(s), num_train, batch_size, steps) for s in seeds])
  period_ends = np.cumsum([first * 2**i for i in range(restarts)])

  features = (4, 4) if args.smoke else (16, 32)  # smoke: --smoke's O0 code runs slow convolutions
  curves: dict[str, np.ndarray] = {}
  schedules: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for name, (tx, eta, lam) in optimizers(
    steps_per_epoch, first, epochs, batch_size, num_train
  ).items():

    def run(seed: Any, batches: Any, data: Any, tx: Any = tx) -> Any:
      def record(params: Any, stats: Any) -> Any:
        return 1.0 - C.evaluate_linen_cnn(params, stats, data.x_test, data.y_test, features)[0]

      return C.train_linen_cnn(
        tx, data, batches, seed, record=record, record_every=steps_per_epoch, features=features
      )["record"]

    # The data is an argument, not a constant folded into the program: faster to compile.
    errors = C.D.jit(jax.vmap(run, in_axes=(0, 0, None)), smoke=args.smoke)(
      jnp.asarray(seeds), jnp.asarray(batches), jax.tree.map(jnp.asarray, data)
    )
    curves[name] = np.asarray(errors)[:, steps_per_epoch - 1 :: steps_per_epoch]  # (seeds, epochs)
    t = np.arange(steps)
    schedules[name] = (np.asarray(jax.vmap(eta)(t)), np.asarray(jax.vmap(lam)(t)))
    mean = curves[name].mean(0)
    print(f"{name:15s} " + " ".join(f"ep{e}:{100 * mean[e - 1]:.2f}%" for e in period_ends))

  header = ["optimizer", *[f"test error (%) after epoch {e}" for e in period_ends]]
  rows = []
  for name, c in curves.items():
    cells = []
    for e in period_ends:
      v = 100 * c[:, e - 1]
      cells.append(f"{v.mean():.2f} ± {v.std():.2f}")
    rows.append([name, *cells])
  md = (
    f"Digits CNN, {len(seeds)} seeds (mean ± std), batch {batch_size}, {epochs} epochs = "
    f"{steps} steps. Restarts: T_0 = {first} epochs, T_mult = 2, so the periods end at epochs "
    f"{', '.join(map(str, period_ends))}. Adam lr 1e-2, SGD lr 0.1 momentum 0.9; normalized "
    f"weight decay lambda_norm = {LAMBDA_NORM} (following the restarts for the WR runs, "
    "T = the whole budget for the cosine runs), kernels only.\n\n"
  )
  md += C.markdown_table(header, rows)
  out.write(
    "Warm restarts vs one cosine period: anytime test error",
    md,
    {
      "period_ends_epochs": period_ends,
      "seeds": seeds,
      "test_error_per_epoch_mean": {n: c.mean(0) for n, c in curves.items()},
      "test_error_per_epoch_std": {n: c.std(0) for n, c in curves.items()},
    },
  )

  plot(
    out.figure("repro_warm_restarts.png"),
    {n: 100 * c.mean(0) for n, c in curves.items()},
    {n: 100 * c.std(0) for n, c in curves.items()},
    schedules,
    period_ends,
    steps_per_epoch,
  )
  return {"curves": curves, "period_ends": period_ends}


if __name__ == "__main__":
  main()
