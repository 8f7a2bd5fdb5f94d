"""Reproduction 7: the corrected decay keeps ||g|| / ||w|| of normalized layers flat as eta_t anneals.

Defazio (2025), "Why Gradients Rapidly Increase Near the End of Training":
under the paper's (or PyTorch's) convention the steady-state ||g|| / ||w|| of
a layer followed by normalization is about sqrt(2 lambda / gamma_t)-like in the
learning rate, so it rises as a schedule anneals; scaling the decay by the
schedule once more (``weight_decay_convention="corrected"``, lambda eta_t^2
per step) keeps it flat. ``demo_corrected_decay`` saw no rise on digits, where
the loss goes to nearly zero; here the task does not saturate.

The task: MNIST-1D with 2,000 training examples (``_mnist1d.small_splits``),
the 1-D CNN with BatchNorm, batch 64, ``--epochs`` epochs: eta_t = 1 for the
first ``1 - ANNEAL`` of the run, then one cosine from 1 to 0 (a stable phase,
so that the paper's convention reaches its equilibrium before the anneal). AdamW (b1 = 0.9) in the paper's convention and in the
corrected one, with the same alpha and lambda (they coincide at eta_t = 1), the
kernels decayed (``dopt.weight_decay_mask``: not biases or BatchNorm), on
``--seeds`` paired seeds. Whether the runs reached their rotational
equilibrium before the anneal is read off the measured angular update of the
kernels against the prediction sqrt(2 lambda eta_t (1 - b1) / (1 + b1))
(Kosson et al. 2024; ``dopt.angular_equilibrium_factor``) where the anneal starts.

Reported, per convention: ||g|| / ||w|| of the kernels (mean over the three)
over the run; the ratio at 95 % of the run to its value where the anneal
starts, with a 95 % t-interval
over seeds, and its paired difference between the conventions; the test
error; and the angular update where the anneal starts against its prediction.

    python benchmarks/repro_corrected_decay.py
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import _common as C
import _mnist1d as M
import numpy as np
import optax

import decoupled_optax as dopt

FEATURES = (16, 32, 32)
ALPHA, LAMBDA, B1 = 3e-3, 5e-3, 0.9
ANNEAL = 0.4  # the last 40 % of the run anneals
CONVENTIONS = ("paper", "corrected")


def _anneal_start(steps: int) -> int:
  return int(round((1 - ANNEAL) * steps))


def _eta(t: np.ndarray, steps: int) -> np.ndarray:
  """1, then one cosine from 1 to 0 over the last ``ANNEAL`` of the run (NumPy, for the plots)."""
  start = _anneal_start(steps)
  phase = np.clip((np.asarray(t) - start) / (steps - start), 0.0, 1.0)
  return 0.5 * (1 + np.cos(np.pi * phase))


def _schedule(steps: int) -> Any:
  start = _anneal_start(steps)
  return optax.join_schedules(
    [optax.constant_schedule(1.0), optax.cosine_decay_schedule(1.0, steps - start)], [start]
  )


def main(argv: list[str] | None = None) -> dict[str, Any]:
  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=8)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  outputs = C.Outputs("repro_corrected_decay", args.out, argv, publish=args.publish)
  _, test = M.small_splits(args.smoke)
  steps = 8 if args.smoke else args.epochs * (len(test.x_train) // 64)
  seeds = np.arange(2 if args.smoke else args.seeds) + 100 * args.seed
  batches = np.stack([M.batch_indices(int(s), len(test.x_train), 64, steps) for s in seeds])
  eta = _schedule(steps)
  # lambda > alpha on purpose (the paper's units, at equilibrium early): not a PyTorch value.
  warnings.filterwarnings("ignore", category=dopt.WeightDecayConventionWarning)
  runs: dict[str, dict[str, np.ndarray]] = {}
  for convention in CONVENTIONS:

    def make(weight_decay: Any, convention: str = convention) -> Any:
      return dopt.adamw(
        ALPHA,
        weight_decay,
        b1=B1,
        schedule=eta,
        mask=dopt.weight_decay_mask,
        weight_decay_convention=convention,
      )

    runs[convention] = M.run_grid(
      dopt.inject_hyperparams(make),
      {"weight_decay": np.full(len(seeds), LAMBDA)},
      np.arange(len(seeds)),
      seeds,
      batches,
      test,
      features=FEATURES,
      chunk=2 if args.smoke else 8,
    )
  mid, late = _anneal_start(steps), int(0.95 * steps)
  window = max(1, steps // 50)

  def around(x: np.ndarray, t: int) -> np.ndarray:
    return x[:, max(0, t - window) : t + window + 1].mean(-1)

  predicted_mid = math.sqrt(
    2 * LAMBDA * float(_eta(np.asarray(mid), steps)) * dopt.angular_equilibrium_factor(B1, False)
  )
  summary: dict[str, Any] = {}
  for convention, out in runs.items():
    ratio = out["gradient_ratio"]
    rise = around(ratio, late) / around(ratio, mid)
    summary[convention] = dict(
      rise=C.mean_interval(rise),
      rise_per_seed=rise,
      test_error=C.mean_interval(out["test_error"]),
      test_error_per_seed=out["test_error"],
      equilibrium_ratio_mid=C.mean_interval(around(out["angular_update"], mid) / predicted_mid),
    )
  rise_difference = C.mean_interval(
    summary["paper"]["rise_per_seed"] - summary["corrected"]["rise_per_seed"]
  )
  error_difference = C.mean_interval(
    summary["corrected"]["test_error_per_seed"] - summary["paper"]["test_error_per_seed"]
  )
  for name, s in summary.items():
    print(f"{name:9s} rise {s['rise'][0]:.3f} [{s['rise'][1]:.3f}, {s['rise'][2]:.3f}]  "
          f"test {s['test_error'][0]:.2f} %  eq. ratio mid {s['equilibrium_ratio_mid'][0]:.2f}")  # fmt: skip
  _report(outputs, steps, seeds, summary, rise_difference, error_difference)
  _figure(outputs.figure("repro_corrected_decay.png"), runs, steps)
  return dict(summary=summary, rise_difference=rise_difference, error_difference=error_difference)


def _interval(x: tuple[float, float, float]) -> str:
  return f"{x[0]:.3g} [{x[1]:.3g}, {x[2]:.3g}]"


def _verdict(difference: tuple[float, float, float], what: str) -> str:
  if difference[1] > 0:
    return f"{what}: resolved, paper > corrected"
  if difference[2] < 0:
    return f"{what}: resolved, paper < corrected"
  return f"{what}: not resolved at this scale"


def _report(outputs: Any, steps: int, seeds: Any, summary: dict, rise: Any, error: Any) -> None:
  rows = [
    [
      name,
      _interval(s["rise"]),
      _interval(s["equilibrium_ratio_mid"]),
      _interval(s["test_error"]),
    ]
    for name, s in summary.items()
  ]
  table = C.markdown_table(
    [
      "convention",
      "‖g‖/‖w‖ at 95 % of the run / where the anneal starts",
      "angular update / equilibrium where the anneal starts",
      "test error %",
    ],
    rows,
  )
  setup = (
    f"MNIST-1D (`mnist1d` {M.mnist1d_version()}, generated), {M.SMALL_SPLITS[0]} training and "
    f"{M.SMALL_SPLITS[2]} test examples; 1-D CNN {FEATURES} with BatchNorm; batch 64; {steps} "
    f"steps, eta_t = 1 then one cosine over the last {ANNEAL:.0%}; AdamW alpha = {ALPHA}, lambda = {LAMBDA} (the paper's units), "
    f"b1 = {B1}; seeds {', '.join(str(int(s)) for s in seeds)}, paired. Means with 95 % "
    "t-intervals over seeds; ‖g‖/‖w‖ is averaged over a window of 2 % of the run "
    "around each point.\n\n"
  )
  verdicts = (
    f"\nPaired, paper - corrected, ‖g‖/‖w‖ at 95 % / at the anneal's start: {_interval(rise)} "
    f"({_verdict(rise, 'the rise')}).\n\nPaired, corrected - paper, test error (points): "
    f"{_interval(error)} ({_verdict((-error[0], -error[2], -error[1]), 'the test error')}).\n"
  )
  outputs.write(
    "The corrected decay and ||g|| / ||w|| at the end of a cosine schedule (MNIST-1D)",
    setup + table + verdicts,
    dict(steps=steps, seeds=seeds, summary=summary, rise_difference=rise, error_difference=error),
  )


def _figure(path: Any, runs: dict, steps: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_ratio, ax_angle) = plt.subplots(1, 2, figsize=(11, 4))
  t = np.arange(1, steps + 1)
  predicted = np.sqrt(2 * LAMBDA * _eta(t - 1, steps) * dopt.angular_equilibrium_factor(B1, False))
  for convention, out in runs.items():
    (line,) = ax_ratio.plot(t, out["gradient_ratio"].mean(0), label=convention)
    ax_angle.plot(t, out["angular_update"].mean(0), color=line.get_color(), label=convention)
  ax_angle.plot(t, predicted, "k--", lw=1, label="paper's equilibrium prediction")
  ax_ratio.set(title="||g|| / ||w|| of the BatchNorm'd kernels", xlabel="step", yscale="log")
  ax_angle.set(title="angular update per step", xlabel="step", yscale="log")
  for ax in (ax_ratio, ax_angle):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  C.D.save_figure(fig, path)


if __name__ == "__main__":
  main()
