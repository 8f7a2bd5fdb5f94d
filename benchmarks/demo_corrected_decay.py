"""Demonstration: ||g|| / ||w|| of a BatchNorm-preceded kernel under a cosine schedule, paper vs corrected decay.

Defazio (2025), "Why Gradients Rapidly Increase Near the End of Training"
(arXiv 2506.02285): for a weight followed by normalization, SGD with decay
reaches a steady state where ||g|| / ||w|| = sqrt(2 lambda_torch / gamma_t),
with gamma_t the learning rate. In the paper's convention (per-step decay
lambda eta_t, learning rate alpha eta_t, so lambda_torch = lambda / alpha) that
is sqrt(2 lambda / (alpha^2 eta_t)): it rises as the cosine eta_t decays. The
corrected convention (``weight_decay_convention="corrected"``, per-step decay
lambda eta_t^2) gives sqrt(2 lambda) / alpha, flat.

The digits CNN with SGD (momentum 0.9) and with Adam, one cosine period, each
in both conventions with the same lambda. ``||g|| / ||w||`` of the second conv
kernel comes from ``dopt.with_diagnostics`` (``gradient_norm``,
``weight_norm``). The prediction can fail: the steady state takes about
1 / (lambda eta_t) steps to reach, and Adam's ratio is not the one derived
for SGD.

    python benchmarks/demo_corrected_decay.py
"""

from __future__ import annotations

from typing import Any

import _common as C
import jax
import jax.numpy as jnp
import numpy as np

import decoupled_optax as dopt

KERNEL = "Conv_1/kernel"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the demonstration; returns the ratio at a few points of the schedule per run."""

  args = C.parse_args(__doc__.splitlines()[0], argv, C.digits_training_flags(60))
  out = C.Outputs("demo_corrected_decay", args.out, argv, publish=args.publish)
  data, steps, batches = C.digits_batches(args)
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=steps)
  features = (4, 4) if args.smoke else (16, 32)
  settings = {  # alpha, lambda (paper units): lambda * steps of order 10 over the run
    "SGD": (0.1, 5e-3),
    "Adam": (3e-3, 2e-3),
  }

  def make(optimizer: str, convention: str) -> Any:
    alpha, lam = settings[optimizer]
    kwargs = dict(
      schedule=schedule, mask=dopt.weight_decay_mask, weight_decay_convention=convention
    )
    if optimizer == "SGD":
      return dopt.sgdw(alpha, 0.9, lam, **kwargs)
    return dopt.adamw(alpha, lam, **kwargs)

  def record(params: Any, batch_stats: Any, opt_state: Any) -> dict[str, Any]:
    del params, batch_stats
    d = dopt.read_diagnostics(opt_state)
    return {
      "ratio": d[f"gradient_norm/{KERNEL}"] / d[f"weight_norm/{KERNEL}"],
      "eta": d["schedule"],
      "weight_decay": d["weight_decay"],
    }

  runs: dict[str, dict[str, np.ndarray]] = {}
  for optimizer in settings:
    for convention in ("paper", "corrected"):
      name = f"{optimizer}, {convention}"
      tx = make(optimizer, convention)
      result = C.D.jit(
        lambda data, tx=tx: C.train_linen_cnn(
          dopt.with_diagnostics(tx), data, batches, args.seed, record=record, features=features
        ),
        smoke=args.smoke,
      )(jax.tree.map(jnp.asarray, data))
      runs[name] = {k: np.asarray(v) for k, v in result["record"].items()}
      runs[name]["test_accuracy"] = np.asarray(result["test_accuracy"])
      print(f"{name:18s} test acc {float(result['test_accuracy']):.4f}")

  # The ratio, smoothed over 5% of the run, at fractions of the schedule.
  window = max(1, steps // 20)
  fractions = (0.25, 0.5, 0.75, 0.9, 0.98)

  def smoothed(x: np.ndarray) -> np.ndarray:
    """A centred moving average; at the ends, over the part of the window that exists."""
    kernel = np.ones(window)
    return np.convolve(x, kernel, mode="same") / np.convolve(np.ones_like(x), kernel, mode="same")

  table = {
    name: {f: float(smoothed(r["ratio"])[min(steps - 1, int(f * steps))]) for f in fractions}
    for name, r in runs.items()
  }
  rows = [
    [
      name,
      *[f"{table[name][f]:.3g}" for f in fractions],
      f"{table[name][0.98] / table[name][0.5]:.2f}",
      float(runs[name]["test_accuracy"]),
    ]
    for name in runs
  ]
  md = (
    f"Digits CNN (BatchNorm), {steps} steps ({args.epochs} epochs, batch {args.batch_size}), one "
    "cosine period eta_t, decay on kernels only. SGD: alpha 0.1, momentum 0.9, lambda 5e-3; "
    "Adam: alpha 3e-3, lambda 2e-3 (paper units, the same in both conventions). "
    f"||g|| / ||w|| of `{KERNEL}` (BatchNorm follows it) from `dopt.with_diagnostics`, "
    "averaged over 5% of the run. Prediction (SGD, steady state): the paper's convention rises "
    "as eta_t decays, the corrected one stays flat.\n\n"
  )
  md += C.markdown_table(
    [
      "run",
      *[f"at {int(100 * f)}%" for f in fractions],
      "98% / 50%",
      "test accuracy",
    ],
    rows,
  )
  out.write(
    "Corrected weight decay: ||g|| / ||w|| under a cosine schedule",
    md,
    {"steps": steps, "kernel": KERNEL, "ratio_at_fraction": table, "settings": settings},
  )

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_ratio, ax_wd) = plt.subplots(1, 2, figsize=(11, 4.5))
  for name, r in runs.items():
    style = "-" if "paper" in name else "--"
    (line,) = ax_ratio.plot(smoothed(r["ratio"]), style, label=name)
    ax_wd.plot(r["weight_decay"], style, color=line.get_color(), label=name)
  ax_ratio.set(title=f"||g|| / ||w|| of {KERNEL} (moving average)", xlabel="step", yscale="log")
  ax_wd.set(title="weight decay as applied per step", xlabel="step", yscale="log")
  for ax in (ax_ratio, ax_wd):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  C.D.save_figure(fig, out.figure("demo_corrected_decay.png"))
  return table


if __name__ == "__main__":
  main()
