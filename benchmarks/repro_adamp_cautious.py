"""Reproductions 5 and 6: AdamP's accuracy gain over Adam (and SGDP's over SGD), and cautious decay's.

Heo et al. (ICLR 2021) report AdamP 0.3-1.0 points of accuracy above AdamW on
ImageNet and other tasks, and SGDP above SGD; Chen et al. (2025) report gains
for cautious weight decay with AdamW and Lion. ``repro_norm_growth`` trained
one seed on digits and could not tell a gain from a loss; here each claim gets
paired seeds and an interval, on a task that does not saturate.

The task (see ``_mnist1d``): MNIST-1D with only 2,000 training examples (test
error stays far above zero), 1,000 more generated examples as a validation
split, 5,000 test examples; the 1-D CNN with BatchNorm (its kernels scale
invariant), batch 64, ``--epochs`` epochs, one cosine period.

Fairness. The decays are the official code's, in PyTorch's convention:
AdamW/AdamP ``weight_decay=1e-2`` (clovaai/AdamP's README), SGD/SGDP
``weight_decay=1e-5``, momentum 0.9, Nesterov (its SGDP example); every
parameter decayed, as the official optimizers do. Each optimizer takes its own
learning rate from a 4-point grid, chosen on the validation split (mean over
``--select-seeds`` seeds); the test error is then measured at that rate on
``--seeds`` seeds, paired with its rival (the same initialisation and batch
order). Cautious decay against plain decay: AdamW at one learning rate, each
variant at its own best lambda from a 4-point grid, chosen the same way.

Reported: per optimizer the test error (mean, 95 % t-interval over seeds), and
per pair the paired difference with its 95 % t-interval. A difference whose
interval contains 0 is "not resolved at this scale".

    python benchmarks/repro_adamp_cautious.py
"""

from __future__ import annotations

from typing import Any

import _common as C
import _mnist1d as M
import numpy as np

import decoupled_optax as dopt

FEATURES = (16, 32, 32)
ADAM_LRS = (3e-3, 1e-2, 3e-2, 1e-1)
SGD_LRS = (0.03, 0.1, 0.3, 1.0)
CAUTIOUS_LR = 3e-3
CAUTIOUS_WDS = (1.0, 3.0, 10.0, 30.0)  # PyTorch's convention: lambda * lr removed per step
TORCH = dict(weight_decay_convention="torch")


def factories(steps: int) -> dict[str, Any]:
  """Per optimizer, a ``dopt.inject_hyperparams`` factory of its tuned hyperparameter."""
  eta = dopt.cosine_warm_restart_schedule(1.0, first_period=steps, cycle_limit=1)

  def adam(learning_rate: Any, projected: bool = False) -> Any:
    alias = dopt.adamp if projected else dopt.adamw
    return alias(learning_rate, 1e-2, schedule=eta, **TORCH)

  def sgd(learning_rate: Any, projected: bool = False) -> Any:
    alias = dopt.sgdp if projected else dopt.sgdw
    return alias(learning_rate, 0.9, 1e-5, nesterov=True, schedule=eta, **TORCH)

  def adamw_decay(weight_decay: Any, cautious: bool = False) -> Any:
    return dopt.adamw(
      CAUTIOUS_LR, weight_decay, schedule=eta, cautious_weight_decay=cautious, **TORCH
    )

  inject = dopt.inject_hyperparams
  return {
    "AdamW": (inject(adam), "learning_rate", ADAM_LRS),
    "AdamP": (inject(lambda learning_rate: adam(learning_rate, True)), "learning_rate", ADAM_LRS),
    "SGD": (inject(sgd), "learning_rate", SGD_LRS),
    "SGDP": (inject(lambda learning_rate: sgd(learning_rate, True)), "learning_rate", SGD_LRS),
    "AdamW, plain decay": (inject(adamw_decay), "weight_decay", CAUTIOUS_WDS),
    "AdamW, cautious decay": (
      inject(lambda weight_decay: adamw_decay(weight_decay, True)),
      "weight_decay",
      CAUTIOUS_WDS,
    ),
  }


PAIRS = (
  ("AdamP", "AdamW"),
  ("SGDP", "SGD"),
  ("AdamW, cautious decay", "AdamW, plain decay"),
)


def _grid(make_tx: Any, name: str, values: np.ndarray, seeds: np.ndarray, batches, data, chunk):
  """Test errors (%) of every ``values x seeds`` run, shaped (values, seeds)."""
  index = np.repeat(np.arange(len(values)), len(seeds))
  seed_index = np.tile(np.arange(len(seeds)), len(values))
  out = M.run_grid(
    make_tx,
    {name: np.asarray(values)[index]},
    seed_index,
    seeds,
    batches,
    data,
    features=FEATURES,
    chunk=chunk,
  )
  return out["test_error"].reshape(len(values), len(seeds))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  def extra(parser: Any) -> None:
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--select-seeds", type=int, default=3)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  outputs = C.Outputs("repro_adamp_cautious", args.out, argv, publish=args.publish)
  validation, test = M.small_splits(args.smoke)
  steps = 4 if args.smoke else args.epochs * (len(test.x_train) // 64)
  num_seeds, select_seeds = (2, 2) if args.smoke else (args.seeds, args.select_seeds)
  seeds = np.arange(num_seeds) + 100 * args.seed
  batches = np.stack([M.batch_indices(int(s), len(test.x_train), 64, steps) for s in seeds])
  chunk = 2 if args.smoke else 8
  results: dict[str, Any] = {}
  for name, (make_tx, hparam, values) in factories(steps).items():
    values = values[:2] if args.smoke else values
    chosen_errors = _grid(
      make_tx, hparam, values, seeds[:select_seeds], batches[:select_seeds], validation, chunk
    )
    best = int(np.argmin(chosen_errors.mean(-1)))
    errors = _grid(make_tx, hparam, [values[best]], seeds, batches, test, chunk)[0]
    mean, low, high = C.mean_interval(errors)
    results[name] = dict(
      hparam=hparam,
      grid=list(values),
      validation_error=chosen_errors.mean(-1),
      chosen=values[best],
      test_error=errors,
      mean=mean,
      interval=(low, high),
    )
    print(f"{name:24s} {hparam}={values[best]:g}: test error {mean:.2f} % [{low:.2f}, {high:.2f}]")
  comparisons = []
  for first, second in PAIRS:
    mean, low, high = C.mean_interval(results[first]["test_error"] - results[second]["test_error"])
    verdict = (
      f"{first} lower"
      if high < 0
      else f"{second} lower"
      if low > 0
      else "not resolved at this scale"
    )
    comparisons.append(
      dict(pair=f"{first} - {second}", mean=mean, interval=(low, high), verdict=verdict)
    )
  _report(outputs, args, steps, seeds, results, comparisons)
  _figure(outputs.figure("repro_adamp_cautious.png"), results)
  return dict(results=results, comparisons=comparisons)


def _report(
  outputs: Any, args: Any, steps: int, seeds: Any, results: dict, comparisons: list
) -> None:
  rows = [
    [
      n,
      r["hparam"],
      f"{r['chosen']:g}" + (" (grid edge)" if r["chosen"] in (r["grid"][0], r["grid"][-1]) else ""),
      r["mean"],
      f"[{r['interval'][0]:.3g}, {r['interval'][1]:.3g}]",
    ]
    for n, r in results.items()
  ]
  table = C.markdown_table(
    ["optimizer", "tuned", "chosen (validation)", "test error %", "95 % t-interval"], rows
  )
  pairs = C.markdown_table(
    ["paired difference (points)", "mean", "95 % t-interval", "outcome"],
    [
      [c["pair"], c["mean"], f"[{c['interval'][0]:.3g}, {c['interval'][1]:.3g}]", c["verdict"]]
      for c in comparisons
    ],
  )
  setup = (
    f"MNIST-1D (`mnist1d` {M.mnist1d_version()}, generated): {M.SMALL_SPLITS[0]} training, "
    f"{M.SMALL_SPLITS[1]} validation, {M.SMALL_SPLITS[2]} test examples (smaller with `--smoke`). 1-D CNN "
    f"{FEATURES} with BatchNorm, batch 64, {steps} steps in one cosine period. Official decays "
    "in PyTorch's convention (AdamW/AdamP 1e-2; SGD/SGDP 1e-5, momentum 0.9, Nesterov). Each "
    f"optimizer's setting chosen on the validation split over {args.select_seeds} seeds; test "
    f"error over {len(seeds)} paired seeds ({', '.join(str(int(s)) for s in seeds)}).\n\n"
  )
  outputs.write(
    "AdamP vs Adam, SGDP vs SGD, cautious vs plain decay (MNIST-1D, paired seeds)",
    setup + table + "\n" + pairs,
    dict(steps=steps, seeds=seeds, results=results, comparisons=comparisons),
  )


def _figure(path: Any, results: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4))
  for i, r in enumerate(results.values()):
    errors = np.asarray(r["test_error"])
    ax.scatter(np.full(len(errors), i), errors, s=12, alpha=0.6)
    ax.errorbar(
      i + 0.2,
      r["mean"],
      yerr=[[r["mean"] - r["interval"][0]], [r["interval"][1] - r["mean"]]],
      fmt="o",
      color="k",
      capsize=4,
    )
  ax.set_xticks(range(len(results)), list(results), rotation=20, fontsize=8)
  ax.set(ylabel="test error (%)", title="each seed, and the mean with its 95 % t-interval")
  ax.grid(alpha=0.3)
  C.D.save_figure(fig, path)


if __name__ == "__main__":
  main()
