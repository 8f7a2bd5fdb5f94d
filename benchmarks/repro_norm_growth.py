"""Reproduction 2: momentum inflates the norm of scale-invariant weights; SGDP/AdamP do not.

Heo et al., "AdamP", ICLR 2021, Sections 2-3. For a scale-invariant weight w
(a conv kernel followed by BatchNorm) the gradient is orthogonal to w, so
plain GD grows ||w|| only at second order, but momentum carries past
gradients that are no longer orthogonal to the current w and grows it at
first order. A larger ||w|| shrinks the effective step size, about
alpha / ||w||^2 for SGD and alpha / ||w|| for Adam. SGDP/AdamP remove the
radial component of every update, so ||w|| grows only at second order.

Two parts:

* **The 2-D toy** of the project page: L(w) = ||w / ||w|| - w*||^2 on R^2,
  w_0 of norm 1. The setup is inferred (the page does not give it): see
  ``TOY`` and the results table.
* **The digits CNN**: the norms of the two BatchNorm-preceded conv kernels and
  their effective step sizes over training, for SGD-momentum vs SGDP and
  Adam vs AdamP, without weight decay so only the optimizers differ. Both
  come from ``dopt.with_diagnostics``: ``weight_norm`` and the effective step
  measured as ``angular_update``, the angle each update turns the kernel by.

    python benchmarks/repro_norm_growth.py
"""

from __future__ import annotations

from typing import Any

import _common as C
import jax
import jax.numpy as jnp
import numpy as np
import optax

import decoupled_optax as dopt

# The toy's setup, inferred: with these, momentum 0.9 and 0.99 give ||w_T|| of
# 2.93 and 27.9, the project page's 2.93 and 27.87 (see the results table).
TOY = {"lr": 0.01, "steps": 500, "angle_deg": 175.0}


def toy_run(tx: optax.GradientTransformation, steps: int, angle_deg: float) -> np.ndarray:
  """The 2-D toy: w as a (2, 1) kernel (one output channel), w* = (1, 0); w_t for t = 0..T."""
  target = jnp.array([1.0, 0.0])
  angle = np.deg2rad(angle_deg)
  w0 = jnp.array([[np.cos(angle)], [np.sin(angle)]], jnp.float32)

  def loss(w: jax.Array) -> jax.Array:
    u = w[:, 0] / jnp.linalg.norm(w)
    return jnp.sum((u - target) ** 2)

  def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
    w, state = carry
    updates, state = tx.update(jax.grad(loss)(w), state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), w[:, 0]

  _, ws = jax.lax.scan(step, (w0, tx.init(w0)), None, length=steps)
  return np.concatenate([np.asarray(w0[:, 0])[None], np.asarray(ws)])


def toy(steps: int) -> dict[str, np.ndarray]:
  """Trajectories of GD, GD+momentum 0.9/0.99 and SGDP 0.9/0.99 on the toy."""
  lr = TOY["lr"]
  runs = {
    "GD": optax.sgd(lr),
    "GD, momentum 0.9": optax.sgd(lr, momentum=0.9),
    "GD, momentum 0.99": optax.sgd(lr, momentum=0.99),
    "SGDP, momentum 0.9": dopt.sgdp(lr, momentum=0.9),
    "SGDP, momentum 0.99": dopt.sgdp(lr, momentum=0.99),
  }
  return {name: toy_run(tx, steps, TOY["angle_deg"]) for name, tx in runs.items()}


def conv_kernels(params: Any) -> dict[str, jax.Array]:
  """The BatchNorm-preceded (scale-invariant) conv kernels of ``D.LinenCNN``."""
  return {name: p["kernel"] for name, p in params.items() if name.startswith("Conv")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the reproduction; returns the final norms."""

  args = C.parse_args(__doc__.splitlines()[0], argv, C.digits_training_flags(20))
  out = C.Outputs("repro_norm_growth", args.out, argv, publish=args.publish)

  # --- the 2-D toy
  toy_steps = 30 if args.smoke else TOY["steps"]
  toys = toy(toy_steps)
  toy_norms = {name: np.linalg.norm(w, axis=1) for name, w in toys.items()}
  target = np.array([1.0, 0.0])
  toy_rows = [
    [
      name,
      float(n[-1]),
      float(np.rad2deg(np.arccos(np.clip(toys[name][-1] @ target / n[-1], -1, 1)))),
    ]
    for name, n in toy_norms.items()
  ]

  # --- the digits CNN
  data, steps, batches = C.digits_batches(args)
  sgd_lr, adam_lr = 0.1, 1e-2
  optimizers = {
    "SGD (momentum 0.9)": optax.sgd(sgd_lr, momentum=0.9),
    "SGDP (momentum 0.9)": dopt.sgdp(sgd_lr, momentum=0.9),
    "Adam": optax.adam(adam_lr),
    "AdamP": dopt.adamp(adam_lr, 0.0),
  }
  features = (4, 4) if args.smoke else (16, 32)  # smoke: --smoke's O0 code runs slow convolutions

  def record(params: Any, batch_stats: Any, opt_state: Any) -> dict[str, Any]:
    del params, batch_stats
    d = dopt.read_diagnostics(opt_state)
    return {
      quantity: {k: d[f"{quantity}/{k}/kernel"] for k in kernels}
      for quantity in ("weight_norm", "angular_update")
    }

  runs: dict[str, dict[str, Any]] = {}
  init_params = C.D.jit(lambda x: C.init_linen_cnn(args.seed, x, features)[0], smoke=args.smoke)(
    jnp.asarray(data.x_train[:1])
  )
  kernels = sorted(conv_kernels(init_params))
  init = {k: float(jnp.linalg.norm(w)) for k, w in conv_kernels(init_params).items()}
  for name, tx in optimizers.items():
    result = C.D.jit(
      lambda data, tx=tx: C.train_linen_cnn(
        dopt.with_diagnostics(tx), data, batches, args.seed, record=record, features=features
      ),
      smoke=args.smoke,
    )(jax.tree.map(jnp.asarray, data))
    final = {k: float(jnp.linalg.norm(w)) for k, w in conv_kernels(result["params"]).items()}
    # weight_norm of step t is ||w_t||, before its update; the last entry is the final norm.
    norms = {
      k: np.append(np.asarray(v), final[k]) for k, v in result["record"]["weight_norm"].items()
    }
    runs[name] = {
      "norms": norms,
      "init": init,
      "effective_step": {k: np.asarray(v) for k, v in result["record"]["angular_update"].items()},
      "test_accuracy": float(result["test_accuracy"]),
    }
    print(
      f"{name:22s} test acc {runs[name]['test_accuracy']:.4f}  "
      + "  ".join(f"{k} {init[k]:.2f}->{v[-1]:.2f}" for k, v in norms.items())
    )

  md = "## 2-D toy\n\n"
  md += (
    f"L(w) = ‖w/‖w‖ - w*‖², w* = (1, 0), w_0 = (cos {TOY['angle_deg']:g} deg, "
    f"sin {TOY['angle_deg']:g} deg) (norm 1), learning rate {TOY['lr']:g}, {toy_steps} steps, "
    "heavy-ball momentum as in torch.optim.SGD / optax.sgd; SGDP is `dopt.sgdp` without decay. "
    "The project page reports 1 -> 2.93 (momentum 0.9) and 1 -> 27.87 (momentum 0.99) without "
    "giving the setup; this one is inferred by a search over learning rate, start angle and "
    "steps (the learning rate is pinned by the pair; the start angle and step count only move "
    "the third digit).\n\n"
  )
  md += C.markdown_table(["optimizer", "final ‖w‖", "final angle to w* (deg)"], toy_rows)
  md += f"\n## Digits CNN, no weight decay ({steps} steps, batch {args.batch_size})\n\n"
  md += (
    f"SGD/SGDP: lr {sgd_lr:g}, momentum 0.9; Adam/AdamP: lr {adam_lr:g}. Norms and effective "
    "steps (the angle each update turns a kernel by) from `dopt.with_diagnostics`.\n\n"
  )
  header = [
    "optimizer",
    *[f"{k} ‖w‖ init -> final" for k in kernels],
    *[f"{k} mean angular update (rad)" for k in kernels],
    "test accuracy",
  ]
  rows = [
    [
      name,
      *[f"{r['init'][k]:.3f} -> {r['norms'][k][-1]:.3f}" for k in kernels],
      *[f"{float(np.mean(r['effective_step'][k])):.3g}" for k in kernels],
      r["test_accuracy"],
    ]
    for name, r in runs.items()
  ]
  md += C.markdown_table(header, rows)
  out.write(
    "Weight-norm growth on scale-invariant weights (AdamP)",
    md,
    {
      "toy_setup": {**TOY, "steps": toy_steps},
      "toy_final_norm": {name: float(n[-1]) for name, n in toy_norms.items()},
      "cnn": {
        name: {
          "init_norm": r["init"],
          "final_norm": {k: float(v[-1]) for k, v in r["norms"].items()},
          "mean_angular_update": {k: float(np.mean(v)) for k, v in r["effective_step"].items()},
          "test_accuracy": r["test_accuracy"],
        }
        for name, r in runs.items()
      },
    },
  )

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_path, ax_norm) = plt.subplots(1, 2, figsize=(11, 4.5))
  for name, w in toys.items():
    (line,) = ax_norm.plot(toy_norms[name], label=name)
    ax_path.plot(w[:, 0], w[:, 1], label=name, color=line.get_color(), lw=1)
  theta = np.linspace(0, 2 * np.pi, 200)
  ax_path.plot(np.cos(theta), np.sin(theta), "k:", lw=0.8)
  ax_path.plot([1], [0], "k*", ms=10, label="w*")
  ax_path.set(aspect="equal", title="2-D toy: trajectories of w", xlabel="w1", ylabel="w2")
  ax_norm.set(title="2-D toy: ||w_t||", xlabel="step", yscale="log")
  for ax in (ax_path, ax_norm):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  C.D.save_figure(fig, out.figure("repro_norm_growth_toy.png"))

  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  for col, pair in enumerate((("SGD (momentum 0.9)", "SGDP (momentum 0.9)"), ("Adam", "AdamP"))):
    for name in pair:
      r = runs[name]
      for k, ls in zip(kernels, ("-", "--"), strict=False):
        axes[0, col].plot(r["norms"][k], ls=ls, label=f"{name}, {k}")
        axes[1, col].plot(r["effective_step"][k], ls=ls, label=f"{name}, {k}")
    axes[0, col].set(title=f"{pair[0].split()[0]} vs {pair[1].split()[0]}: kernel norm ||w||")
    axes[1, col].set(
      title="effective step: angular update (rad, from read_diagnostics)",
      yscale="log",
      xlabel="step",
    )
  for ax in axes.flat:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("BatchNorm-preceded conv kernels of the digits CNN, no weight decay")
  C.D.save_figure(fig, out.figure("repro_norm_growth_cnn.png"))
  return {"toy": {n: float(v[-1]) for n, v in toy_norms.items()}, "cnn": runs}


if __name__ == "__main__":
  main()
