"""Compile time of one update step, split into trace, lower and XLA compile, and its slope per leaf.

For the ResNet-50 and GPT-2 trees of ``update_step.py`` and for deep MLPs of
100 to 1,000 leaves, times ``jax.jit(update).trace``, ``.lower()`` and
``.compile()`` separately (median of ``--reps`` fresh optimizers) for
``optax.adamw``, ``adamw``, ``adamp`` (the default path: the fused CPU kernel
on one CPU device) and ``adamp(cpu_kernel=False)``, and fits seconds per leaf
on the MLPs. ``resnet18_step`` times a whole train step instead (forward,
backward and update of a Flax ResNet-18 with GroupNorm on a batch of eight
32x32 images; needs flax). Writes ``compile_time_<backend>.md``/``.json`` to ``--out``
(default ``outputs/``; the committed run used ``--out benchmarks/results``).

  python benchmarks/compile_time.py --out benchmarks/results
  python benchmarks/compile_time.py --smoke --out /tmp/x   # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import update_step as U  # noqa: E402

import decoupled_optax as dopt  # noqa: E402

CANDIDATES: dict[str, Callable[[], optax.GradientTransformation]] = {
  "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
  "ours adamw": lambda: dopt.adamw(1e-3, 1e-2, weight_decay_convention="torch"),
  "ours adamp": lambda: dopt.adamp(1e-3, 1e-2, weight_decay_convention="torch"),
  "ours adamp generic": lambda: dopt.adamp(
    1e-3, 1e-2, weight_decay_convention="torch", cpu_kernel=False
  ),
}


def mlp_tree(leaves: int) -> dict[str, Any]:
  """A deep MLP with ``leaves`` leaves: 256-wide dense kernels and biases."""
  layers = leaves // 2
  return {
    f"dense_{i}": {"kernel": U.LeafSpec((256, 256)), "bias": U.LeafSpec((256,))}
    for i in range(layers)
  }


def resnet18_step() -> tuple[Any, Any, Callable[[Any, Any], Any]]:
  """A Flax ResNet-18 (GroupNorm, CIFAR stem): ``(params, batch, loss(params, batch))``."""
  import flax.linen as nn

  class Block(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
      y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False)(x)
      y = nn.relu(nn.GroupNorm(num_groups=32)(y))
      y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
      y = nn.GroupNorm(num_groups=32)(y)
      if self.stride != 1 or x.shape[-1] != self.features:
        x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x)
        x = nn.GroupNorm(num_groups=32)(x)
      return nn.relu(x + y)

  class ResNet18(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
      x = nn.relu(nn.GroupNorm(num_groups=32)(nn.Conv(64, (3, 3), use_bias=False)(x)))
      for features, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = Block(features, stride)(x)
        x = Block(features, 1)(x)
      return nn.Dense(10)(x.mean(axis=(1, 2)))

  model = ResNet18()
  images = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype(np.float32)
  batch = (images, np.arange(8) % 10)
  params = model.init(jax.random.key(0), images)["params"]

  def loss(params: Any, batch: Any) -> Any:
    logits = model.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  return params, batch, loss


def time_phases(
  factory: Callable[[], Any],
  params: Any,
  grads: Any,
  reps: int,
  loss: Callable[[Any, Any], Any] | None = None,
) -> dict[str, float]:
  """Trace, lower and compile times of one update, or of a whole train step given ``loss``.

  With ``loss``, ``grads`` is the batch and the step takes the gradient itself.
  """
  phases: dict[str, list[float]] = {"trace": [], "lower": [], "compile": []}
  for _ in range(reps):
    tx = factory()

    def update(params: Any, state: Any, grads: Any, tx: Any = tx) -> Any:
      if loss is not None:
        grads = jax.grad(loss)(params, grads)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    state = jax.jit(tx.init)(params)
    fn = jax.jit(update, donate_argnums=(0, 1))
    start = time.perf_counter()
    traced = fn.trace(params, state, grads)
    after_trace = time.perf_counter()
    lowered = traced.lower()
    after_lower = time.perf_counter()
    lowered.compile()
    end = time.perf_counter()
    phases["trace"].append(after_trace - start)
    phases["lower"].append(after_lower - after_trace)
    phases["compile"].append(end - after_lower)
  result = {k: statistics.median(v) for k, v in phases.items()}
  result["total"] = sum(result.values())
  return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--smoke", action="store_true", help="tiny trees, one rep")
  parser.add_argument("--trees", default="", help="comma-separated tree names (default: all)")
  parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "outputs"))
  args = parser.parse_args(argv)
  if args.smoke:
    trees = {"tiny": U.tiny_tree(), "mlp_20": mlp_tree(20), "mlp_40": mlp_tree(40)}
    reps = 1
  else:
    trees: dict[str, Any] = {"resnet50": U.resnet50_tree(), "gpt2": U.gpt2_tree()}
    trees |= {f"mlp_{n}": mlp_tree(n) for n in (100, 300, 1000)}
    reps = args.reps
    trees["resnet18_step"] = None
  if args.trees:
    trees = {name: trees[name] for name in args.trees.split(",")}
  rows = []
  for tree_name, specs in trees.items():
    loss = None
    if specs is None:
      params, grads, loss = resnet18_step()
    else:
      params, grads = U.make_arrays(specs)
    leaves = len(jax.tree.leaves(params))
    for name, factory in CANDIDATES.items():
      phases = time_phases(factory, params, grads, reps, loss)
      rows.append(dict(tree=tree_name, leaves=leaves, candidate=name, **phases))
      print(
        f"{tree_name:9s} {leaves:5d} leaves  {name:20s} trace {phases['trace']:.2f}  "
        f"lower {phases['lower']:.2f}  compile {phases['compile']:.2f}  total {phases['total']:.2f} s",
        flush=True,
      )
  slopes = {}
  for name in CANDIDATES:
    points = [
      (r["leaves"], r["total"]) for r in rows if r["candidate"] == name and "mlp" in r["tree"]
    ]
    if len(points) >= 2:
      x, y = np.array(points, float).T
      slopes[name] = float(np.polyfit(x, y, 1)[0])
  report = dict(
    backend=jax.default_backend(),
    cpu_kernel=dopt.cpu_kernel_available(),
    reps=reps,
    rows=rows,
    seconds_per_leaf=slopes,
    command=" ".join(["python", "benchmarks/compile_time.py", *(argv or sys.argv[1:])]),
  )
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"compile_time_{jax.default_backend()}"
  (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
  lines = [
    f"# Compile time of one update step ({jax.default_backend()})",
    "",
    f"Generated by `{report['command']}`; median of {reps} fresh optimizers; seconds.",
    "",
    "| tree | leaves | candidate | trace | lower | XLA compile | total | / optax.adamw |",
    "|---|---:|---|---:|---:|---:|---:|---:|",
  ]
  baseline = {r["tree"]: r["total"] for r in rows if r["candidate"] == "optax.adamw"}
  for r in rows:
    lines.append(
      f"| {r['tree']} | {r['leaves']} | {r['candidate']} | {r['trace']:.2f} | {r['lower']:.2f} "
      f"| {r['compile']:.2f} | {r['total']:.2f} | {r['total'] / baseline[r['tree']]:.2f} |"
    )
  lines += ["", "Seconds per leaf (least squares over the MLPs):", ""]
  lines += [f"- {name}: {1000 * slope:.2f} ms" for name, slope in slopes.items()]
  (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  return report


if __name__ == "__main__":
  main()
