"""Reproduction 4: Adam + L2 barely depends on lambda' for a weight with no loss gradient.

The deterministic witness of Proposition 2 (Loshchilov & Hutter, 2019): one
weight theta whose loss gradient is 0, theta_0 = 1, alpha = 1e-3, 500 steps.

* **Adam + L2**: the gradient is lambda' * theta, and Adam divides it by its
  own running magnitude, so every step is about alpha, whatever lambda'.
  theta ends near 1 - 500 alpha = 0.5 for lambda' = 1e-4, 1e-2 and 1.
* **AdamW**: the decay is not normalised: theta_500 = (1 - alpha lambda')^500
  with the PyTorch-convention lambda' (the paper's lambda = alpha * lambda'),
  which moves with lambda' by orders of magnitude.
* **SGD + L2 vs SGDW** (Proposition 1): equal, with lambda_SGDW = alpha * lambda'.

    python benchmarks/repro_l2_insensitivity.py
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

ALPHA = 1e-3
THETA0 = 1.0
HEADLINE = (1e-4, 1e-2, 1.0)


def trajectory(tx: optax.GradientTransformation, steps: int) -> np.ndarray:
  """theta over ``steps`` updates with a zero loss gradient, (steps + 1,)."""
  params = jnp.full((), THETA0, jnp.float32)

  def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
    theta, state = carry
    updates, state = tx.update(jnp.zeros_like(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
    return (theta, state), theta

  _, thetas = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return np.concatenate([[THETA0], np.asarray(thetas)])


def optimizers(l2: float) -> dict[str, optax.GradientTransformation]:
  """The four optimizers at the L2 / PyTorch-convention coefficient ``l2`` (lambda')."""
  with warnings.catch_warnings():
    # SGDW's paper lambda = alpha * lambda' reaches alpha on purpose in the sweep.
    warnings.simplefilter("ignore", dopt.WeightDecayConventionWarning)
    sgdw = dopt.sgdw(ALPHA, 0.0, ALPHA * l2, weight_decay_convention="paper")
  return {
    "Adam+L2": optax.chain(optax.add_decayed_weights(l2), optax.adam(ALPHA)),
    # The paper's lambda = alpha * lambda'; written in PyTorch's convention to say so.
    "AdamW": dopt.adamw(ALPHA, l2, weight_decay_convention="torch"),
    "SGD+L2": optax.chain(optax.add_decayed_weights(l2), optax.sgd(ALPHA)),
    "SGDW": sgdw,
  }


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns theta_T per optimizer and lambda'."""

  def extra(parser: Any) -> None:
    parser.add_argument("--steps", type=int, default=500)

  args = C.parse_args(__doc__.splitlines()[0], argv, extra)
  steps = 20 if args.smoke else args.steps
  out = C.Outputs("repro_l2_insensitivity", args.out, argv, publish=args.publish)
  sweep = np.logspace(-6, 2, 2 if args.smoke else 33)  # smoke: 5 lambda' in all
  lambdas = np.unique(np.concatenate([sweep, HEADLINE]))
  finals: dict[str, list[float]] = {name: [] for name in optimizers(1.0)}
  trajectories: dict[str, dict[float, np.ndarray]] = {name: {} for name in finals}
  for l2 in lambdas:
    for name, tx in optimizers(float(l2)).items():
      theta = trajectory(tx, steps)
      finals[name].append(float(theta[-1]))
      if float(l2) in HEADLINE:
        trajectories[name][float(l2)] = theta

  rows = []
  for l2 in HEADLINE:
    i = int(np.flatnonzero(lambdas == l2)[0])
    rows.append([f"{l2:g}", *(finals[name][i] for name in finals)])
  closed_form = [(1 - ALPHA * l2) ** steps for l2 in HEADLINE]
  md = C.markdown_table(["lambda'", *[f"theta_{steps}, {n}" for n in finals]], rows)
  md += (
    f"\ntheta_0 = {THETA0}, alpha = {ALPHA:g}, zero loss gradient, {steps} steps. "
    "AdamW uses the PyTorch-convention lambda' (the paper's lambda = alpha * lambda'); "
    "SGDW uses the paper's lambda = alpha * lambda'. "
    f"AdamW in closed form: {', '.join(f'{v:.5g}' for v in closed_form)}.\n\n"
  )
  spread = {
    n: max(r[k + 1] for r in rows) - min(r[k + 1] for r in rows) for k, n in enumerate(finals)
  }
  md += (
    "Range of theta_T over the three lambda': "
    + ", ".join(f"{n} {v:.3g}" for n, v in spread.items())
    + ".\n"
  )
  out.write(
    "Adam+L2 vs AdamW on a weight with zero loss gradient",
    md,
    {
      "alpha": ALPHA,
      "theta0": THETA0,
      "steps": steps,
      "headline": {
        f"{l2:g}": {n: r[k + 1] for k, n in enumerate(finals)}
        for l2, r in zip(HEADLINE, rows, strict=True)
      },
      "sweep_lambda": lambdas,
      "sweep_theta_final": finals,
      "range_over_headline": spread,
    },
  )

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = {"Adam+L2": "tab:red", "AdamW": "tab:blue"}
  styles = {1e-4: ":", 1e-2: "--", 1.0: "-"}
  for name in ("Adam+L2", "AdamW"):
    for l2, theta in trajectories[name].items():
      ax_t.plot(theta, color=colors[name], ls=styles[l2], label=f"{name}, lambda'={l2:g}")
  ax_t.set(xlabel="step", ylabel="theta", title="theta_t with zero loss gradient (theta_0 = 1)")
  ax_t.legend(fontsize=7)
  colors |= {"SGD+L2": "tab:green", "SGDW": "black"}
  for name, style in (("Adam+L2", "o-"), ("AdamW", "s-"), ("SGD+L2", "x--"), ("SGDW", "+:")):
    ax_s.semilogx(lambdas, finals[name], style, label=name, ms=4, color=colors[name])
  ax_s.set(
    xlabel="lambda' (L2 coefficient; AdamW: PyTorch convention)",
    ylabel=f"theta after {steps} steps",
    title=f"alpha = {ALPHA:g}, {steps} steps",
  )
  ax_s.legend(fontsize=8)
  for ax in (ax_t, ax_s):
    ax.grid(alpha=0.3)
  C.D.save_figure(fig, out.figure("repro_l2_insensitivity.png"))
  for row in rows:
    print("lambda'", row[0], " ".join(f"{n}={v:.5f}" for n, v in zip(finals, row[1:], strict=True)))
  return {"headline": rows, "sweep": finals}


if __name__ == "__main__":
  main()
