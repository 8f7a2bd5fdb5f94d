"""Compile time of one update step, split into trace, lower and XLA compile, and its slope per leaf.

For the ResNet-50 and GPT-2 trees of ``update_step.py`` and for deep MLPs of
100 to 1,000 leaves, times ``jax.jit(update).trace``, ``.lower()`` and
``.compile()`` separately (median of ``--reps`` fresh optimizers) for
``optax.adamw``, ``adamw``, ``adamp`` (the default path: the fused CPU kernel
on one CPU device) and ``adamp(cpu_kernel=False)``, and fits seconds per leaf
on the MLPs. Writes ``compile_time_<backend>.md``/``.json`` to ``--out``
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


def time_phases(factory: Callable[[], Any], params: Any, grads: Any, reps: int) -> dict[str, float]:
  phases: dict[str, list[float]] = {"trace": [], "lower": [], "compile": []}
  for _ in range(reps):
    tx = factory()

    def update(params: Any, state: Any, grads: Any, tx: Any = tx) -> Any:
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
    trees = {"resnet50": U.resnet50_tree(), "gpt2": U.gpt2_tree()}
    trees |= {f"mlp_{n}": mlp_tree(n) for n in (100, 300, 1000)}
    reps = args.reps
  if args.trees:
    trees = {name: trees[name] for name in args.trees.split(",")}
  rows = []
  for tree_name, specs in trees.items():
    params, grads = U.make_arrays(specs)
    leaves = len(jax.tree.leaves(params))
    for name, factory in CANDIDATES.items():
      phases = time_phases(factory, params, grads, reps)
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
