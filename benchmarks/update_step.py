"""One optimizer update step: decoupled_optax against optax, PyTorch and the official AdamP.

What is timed is one jitted update ``(params, state) -> (params, state)`` with
the params and the optimizer state donated, on fixed gradients. All the
candidates of a tree live in one process and are timed round-robin (one step
of each per round, the starting candidate rotating), so machine noise hits
them alike; the report gives medians over the rounds.

Candidates:

* ours: ``decoupled_optax.adamw``, ``sgdw``, ``adamp``, ``sgdp`` (PyTorch's
  convention, ``weight_decay_convention="torch"``, so that every candidate
  computes the same update);
* optax: ``optax.adamw``, ``optax.sgd(momentum=0.9)`` and
  ``optax.sgd(momentum=0.9)`` with decoupled decay (``add_decayed_weights``
  between the momentum and the rate: optax's SGDW);
* PyTorch (if installed): ``torch.optim.AdamW`` (foreach and fused),
  ``torch.optim.SGD`` (foreach), and the official ``adamp.AdamP`` / ``adamp.SGDP``
  (PyPI ``adamp`` 0.3.0), on the same tree in PyTorch's layout, with
  ``torch.set_num_threads`` set to the number of cores XLA uses.

Trees (Flax layout: conv kernels HWIO, dense kernels ``(in, out)``):

* ``resnet50``: 161 leaves, 25.6M fp32 params (53 conv kernels, 53 BatchNorm
  scale/bias pairs, the classifier). Every conv is followed by BatchNorm, so
  its gradient is made orthogonal to each output channel of its kernel, as in
  a real network: the official AdamP then projects those kernels.
* ``gpt2``: GPT-2 small (124M params, 148 leaves, tied embedding).
* ``tiny`` (``--smoke``): a few small layers, for a seconds-long smoke test.

Reported per candidate: median step time and interquartile range, the ratio
to its baseline, the compile time (trace + lower + compile, median of
``--compile-reps`` fresh compilations), the peak memory of the step, and the
bytes it must move per second against a copy bandwidth measured in the same
run (and on a GPU, against the nominal HBM bandwidth).

Peak memory. For JAX candidates: XLA's own accounting of the compiled step,
``arguments + outputs - aliased (donated) + temporaries``, from
``compiled.memory_analysis()``. For every candidate on the CPU, also the
resident-set growth during one step (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus ``VmRSS`` before the step): what the step
allocates on top of its inputs.

Device time (``--device-time K``). In training the update runs inside the
same jit as the backward pass, so the per-call dispatch of hundreds of
buffers (which dominates a GPU's per-call timing) is not what users pay. With
``K > 1`` every JAX candidate runs K updates inside one jitted
``lax.fori_loop``, the gradient scaled by a step-dependent factor so that XLA
cannot hoist work out of the loop, and the time per call is divided by K; the
copy reference runs K copies the same way. PyTorch candidates run K
``optimizer.step()`` calls per call (still per-call dispatch: compare them
with care).

Usage::

  python benchmarks/update_step.py                       # CPU, both trees
  python benchmarks/update_step.py --device-time 20      # GPU: K updates per jit call
  python benchmarks/update_step.py --trees resnet50      # one tree
  python benchmarks/update_step.py --smoke --out /tmp/x  # seconds-long check
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import decoupled_optax as dopt  # noqa: E402

try:  # PyTorch and the official AdamP are optional (e.g. on a GPU machine without them).
  import torch
except ImportError:  # pragma: no cover
  torch = None
try:
  import adamp as official_adamp
except ImportError:  # pragma: no cover
  official_adamp = None

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
MOMENTUM = 0.9

# Nominal HBM bandwidths (bytes/s) by device_kind substring, for the GPU report.
HBM_BANDWIDTH = {
  "H200": 4.8e12,
  "H100 PCIe": 2.0e12,
  "H100": 3.35e12,
  "A100-SXM4-80GB": 2.039e12,
  "A100": 1.555e12,
}

# Param-sized arrays that an update must read or write at the least (the
# memory-traffic floor): AdamW reads params, grads and two moments and writes
# three; momentum SGD reads params, grads and the buffer and writes two. AdamP
# needs its per-channel statistics (g.w, |g|^2, |w|^2, w.perturb) before it
# can project, so two passes: read g, w, m, v and write m, v; then read w, m, v
# and write w: 10. SGDP (without Nesterov): read g, w, buf and write buf; then
# read w, buf and write w: 7.
PASSES = {"adamw": 7, "sgd": 5, "adamp": 10, "sgdp": 7}

# ---------------------------------------------------------------------------
# Trees.


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """One parameter: its Flax shape, and whether its gradient is orthogonal to each channel."""

  shape: tuple[int, ...]
  channel_invariant: bool = False


def resnet50_tree() -> dict[str, Any]:
  """ResNet-50 (Flax layout, no conv biases): 161 leaves, 25,557,032 params."""
  tree: dict[str, Any] = {}

  def conv_bn(name: str, k: int, cin: int, cout: int) -> None:
    tree[f"{name}_conv"] = {"kernel": LeafSpec((k, k, cin, cout), channel_invariant=True)}
    tree[f"{name}_bn"] = {"scale": LeafSpec((cout,)), "bias": LeafSpec((cout,))}

  conv_bn("stem", 7, 3, 64)
  cin = 64
  for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
    for block in range(blocks):
      prefix = f"stage{stage + 1}_block{block + 1}"
      conv_bn(f"{prefix}_a", 1, cin, width)
      conv_bn(f"{prefix}_b", 3, width, width)
      conv_bn(f"{prefix}_c", 1, width, 4 * width)
      if block == 0:
        conv_bn(f"{prefix}_proj", 1, cin, 4 * width)
      cin = 4 * width
  tree["head"] = {"kernel": LeafSpec((2048, 1000)), "bias": LeafSpec((1000,))}
  return tree


def gpt2_tree(
  layers: int = 12, width: int = 768, vocab: int = 50257, context: int = 1024
) -> dict[str, Any]:
  """GPT-2 small (tied embedding): 148 leaves, 124,439,808 params."""
  norm = lambda: {"scale": LeafSpec((width,)), "bias": LeafSpec((width,))}  # noqa: E731
  dense = lambda i, o: {"kernel": LeafSpec((i, o)), "bias": LeafSpec((o,))}  # noqa: E731
  tree: dict[str, Any] = {
    "wte": {"embedding": LeafSpec((vocab, width))},
    "wpe": {"embedding": LeafSpec((context, width))},
  }
  for i in range(layers):
    tree[f"h{i}"] = {
      "ln_1": norm(),
      "attn_qkv": dense(width, 3 * width),
      "attn_proj": dense(width, width),
      "ln_2": norm(),
      "mlp_fc": dense(width, 4 * width),
      "mlp_proj": dense(4 * width, width),
    }
  tree["ln_f"] = norm()
  return tree


def tiny_tree() -> dict[str, Any]:
  """A small conv net and a dense layer, for the smoke test."""
  return {
    "conv1": {"kernel": LeafSpec((3, 3, 3, 16), channel_invariant=True)},
    "bn1": {"scale": LeafSpec((16,)), "bias": LeafSpec((16,))},
    "conv2": {"kernel": LeafSpec((3, 3, 16, 32), channel_invariant=True)},
    "bn2": {"scale": LeafSpec((32,)), "bias": LeafSpec((32,))},
    "dense": {"kernel": LeafSpec((32, 10)), "bias": LeafSpec((10,))},
  }


TREES: dict[str, Callable[[], dict[str, Any]]] = {
  "resnet50": resnet50_tree,
  "gpt2": gpt2_tree,
  "tiny": tiny_tree,
}

is_spec = lambda x: isinstance(x, LeafSpec)  # noqa: E731


def make_arrays(specs: Any, seed: int = 0) -> tuple[Any, Any]:
  """Numpy float32 params and grads for a tree of LeafSpecs (Flax layout)."""
  rng = np.random.default_rng(seed)

  def leaf(spec: LeafSpec) -> tuple[np.ndarray, np.ndarray]:
    shape = spec.shape
    if len(shape) == 1:
      param = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    else:
      fan_in = math.prod(shape[:-1])
      param = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    grad = rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-3)
    if spec.channel_invariant:  # the gradient of a conv followed by BatchNorm
      axes = tuple(range(len(shape) - 1))
      grad -= param * (np.sum(grad * param, axes) / np.sum(param * param, axes))
    return param, grad

  pairs = jax.tree.map(leaf, specs, is_leaf=is_spec)
  params = jax.tree.map(lambda s, pair: pair[0], specs, pairs, is_leaf=is_spec)
  grads = jax.tree.map(lambda s, pair: pair[1], specs, pairs, is_leaf=is_spec)
  return params, grads


def to_torch_layout(array: np.ndarray) -> np.ndarray:
  """Flax layout to PyTorch's: HWIO -> OIHW, (in, out) -> (out, in)."""
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


# ---------------------------------------------------------------------------
# Candidates.


@dataclasses.dataclass
class Candidate:
  """One optimizer set up on one tree; ``step()`` runs one update and waits for it."""

  name: str
  framework: str
  kind: str  # adamw, sgd, adamp or sgdp: the traffic floor
  step: Callable[[], None]
  compile_s: float | None = None
  xla_peak_bytes: int | None = None
  xla_temp_bytes: int | None = None
  hlo_fusions: int | None = None
  times: list[float] = dataclasses.field(default_factory=list)
  rss_step_bytes: int | None = None
  steps_per_call: int = 1  # --device-time: the time of one step is the call's / this


def jax_optimizers() -> dict[str, tuple[str, Callable[[], optax.GradientTransformation]]]:
  """name -> (kind, factory)."""
  torch_conv = {"weight_decay_convention": "torch"}
  return {
    "ours adamw": ("adamw", lambda: dopt.adamw(LEARNING_RATE, WEIGHT_DECAY, **torch_conv)),
    "optax.adamw": ("adamw", lambda: optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)),
    "ours sgdw": (
      "sgd",
      lambda: dopt.sgdw(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, **torch_conv),
    ),
    "optax sgd+decay": (
      "sgd",
      lambda: optax.chain(
        optax.trace(MOMENTUM),
        optax.add_decayed_weights(WEIGHT_DECAY),
        optax.scale_by_learning_rate(LEARNING_RATE),
      ),
    ),
    "optax.sgd": ("sgd", lambda: optax.sgd(LEARNING_RATE, momentum=MOMENTUM)),
    "ours adamp": ("adamp", lambda: dopt.adamp(LEARNING_RATE, WEIGHT_DECAY, **torch_conv)),
    "ours sgdp": (
      "sgdp",
      lambda: dopt.sgdp(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, **torch_conv),
    ),
    # The diagnostics' cost: the same steps under dopt.with_diagnostics.
    "ours adamw + diagnostics": (
      "adamw",
      lambda: dopt.with_diagnostics(dopt.adamw(LEARNING_RATE, WEIGHT_DECAY, **torch_conv)),
    ),
    "ours adamp + diagnostics": (
      "adamp",
      lambda: dopt.with_diagnostics(dopt.adamp(LEARNING_RATE, WEIGHT_DECAY, **torch_conv)),
    ),
    # Logging every 10th step: the median step is a step that does not log.
    "ours adamw + diagnostics every 10": (
      "adamw",
      lambda: dopt.with_diagnostics(
        dopt.adamw(LEARNING_RATE, WEIGHT_DECAY, **torch_conv), every=10
      ),
    ),
    "ours adamp + diagnostics every 10": (
      "adamp",
      lambda: dopt.with_diagnostics(
        dopt.adamp(LEARNING_RATE, WEIGHT_DECAY, **torch_conv), every=10
      ),
    ),
    # The same without the fused CPU pass (what runs on GPUs and TPUs).
    "ours adamp generic": (
      "adamp",
      lambda: dopt.adamp(LEARNING_RATE, WEIGHT_DECAY, **torch_conv, cpu_kernel=False),
    ),
    "ours sgdp generic": (
      "sgdp",
      lambda: dopt.sgdp(LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, **torch_conv, cpu_kernel=False),
    ),
  }


def _count_fusions(hlo_text: str) -> int:
  return sum(
    1
    for line in hlo_text.splitlines()
    if " fusion(" in line and "ENTRY" not in line and "=" in line
  )


def compile_jax(
  factory: Callable[[], optax.GradientTransformation],
  params: Any,
  grads: Any,
  reps: int,
  steps_per_call: int = 1,
) -> tuple[Callable[..., Any], Any, float, Any]:
  """Builds and compiles the donated update; returns (jitted fn, state, median compile s, compiled).

  With ``steps_per_call > 1`` the function runs that many updates in a
  ``lax.fori_loop``, on gradients scaled by ``1 + 1e-6 i`` at step ``i``.
  """
  seconds = []
  for _ in range(reps):
    tx = factory()

    def update(params: Any, state: Any, grads: Any, tx: Any = tx) -> tuple[Any, Any]:
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    def updates_in_a_loop(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
      def body(i: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        scale = 1.0 + 1e-6 * i.astype(jnp.float32)
        return update(*carry, jax.tree.map(lambda g: g * scale, grads))

      return jax.lax.fori_loop(0, steps_per_call, body, (params, state))

    step_fn = update if steps_per_call == 1 else updates_in_a_loop
    fn = jax.jit(step_fn, donate_argnums=(0, 1))
    state = jax.jit(tx.init)(params)
    start = time.perf_counter()
    compiled = fn.lower(params, state, grads).compile()
    seconds.append(time.perf_counter() - start)
  return fn, state, statistics.median(seconds), compiled


def setup_jax(
  name: str,
  kind: str,
  factory: Callable[[], Any],
  np_params: Any,
  grads: Any,
  compile_reps: int,
  steps_per_call: int = 1,
) -> Candidate:
  params = jax.tree.map(jnp.array, np_params)  # fresh buffers: they are donated
  fn, state, compile_s, compiled = compile_jax(factory, params, grads, compile_reps, steps_per_call)
  memory = compiled.memory_analysis()
  peak = temp = None
  if memory is not None:
    temp = int(memory.temp_size_in_bytes)
    peak = int(
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      - memory.alias_size_in_bytes
      + memory.temp_size_in_bytes
    )
  holder = {"params": params, "state": state}

  def step() -> None:
    holder["params"], holder["state"] = fn(holder["params"], holder["state"], grads)
    jax.block_until_ready(holder["params"])

  return Candidate(
    name,
    "jax",
    kind,
    step,
    compile_s=compile_s,
    xla_peak_bytes=peak,
    xla_temp_bytes=temp,
    hlo_fusions=_count_fusions(compiled.as_text()),
    steps_per_call=steps_per_call,
  )


def torch_optimizers() -> dict[str, tuple[str, Callable[[list[Any]], Any]]]:
  if torch is None:
    return {}
  out: dict[str, tuple[str, Callable[[list[Any]], Any]]] = {
    "torch AdamW foreach": (
      "adamw",
      lambda ps: torch.optim.AdamW(ps, LEARNING_RATE, weight_decay=WEIGHT_DECAY, foreach=True),
    ),
    "torch AdamW fused": (
      "adamw",
      lambda ps: torch.optim.AdamW(ps, LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True),
    ),
    "torch SGD foreach": (
      "sgd",
      lambda ps: torch.optim.SGD(ps, LEARNING_RATE, momentum=MOMENTUM, foreach=True),
    ),
  }
  if official_adamp is not None:
    out["official AdamP"] = (
      "adamp",
      lambda ps: official_adamp.AdamP(ps, LEARNING_RATE, weight_decay=WEIGHT_DECAY),
    )
    out["official SGDP"] = (
      "sgdp",
      lambda ps: official_adamp.SGDP(
        ps, LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
      ),
    )
  return out


def setup_torch(
  name: str,
  kind: str,
  factory: Callable[[list[Any]], Any],
  np_params: Any,
  torch_grads: list[Any],
  steps_per_call: int = 1,
) -> Candidate:
  device = torch_grads[0].device
  leaves = [torch.tensor(to_torch_layout(p), device=device) for p in jax.tree.leaves(np_params)]
  for leaf, grad in zip(leaves, torch_grads, strict=True):
    leaf.requires_grad_(True)
    leaf.grad = grad  # shared by the torch candidates: no optimizer writes to it
  optimizer = factory(leaves)

  def step() -> None:
    for _ in range(steps_per_call):
      optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()

  return Candidate(name, "torch", kind, step, steps_per_call=steps_per_call)


# ---------------------------------------------------------------------------
# Copy bandwidth and memory.


def copy_candidates(num_floats: int, with_torch: bool, steps_per_call: int = 1) -> list[Candidate]:
  """Copies of a param-sized array; bytes moved = 2 x its size (read + write)."""
  x = jnp.ones([num_floats], jnp.float32)
  add = jax.jit(
    lambda a: jax.lax.fori_loop(0, steps_per_call, lambda i, b: b + 1.0, a), donate_argnums=0
  )
  holder = {"x": add(x)}

  def jax_copy() -> None:
    holder["x"] = add(holder["x"])
    holder["x"].block_until_ready()

  out = [Candidate("copy (jax, a + 1)", "jax", "copy", jax_copy, steps_per_call=steps_per_call)]
  if with_torch and jax.default_backend() == "cpu":
    tsrc, tdst = torch.ones(num_floats), torch.empty(num_floats)
    out.append(Candidate("copy (torch)", "torch", "copy", lambda: tdst.copy_(tsrc)))
  return out


def _status_kib(field: str) -> int | None:
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1])
  except OSError:
    return None
  return None


def rss_growth_of_step(step: Callable[[], None]) -> int | None:
  """Peak resident-set growth during one call of ``step`` (Linux only), in bytes."""
  try:
    Path("/proc/self/clear_refs").write_text("5")
  except OSError:
    return None
  gc.collect()
  before = _status_kib("VmRSS")
  step()
  peak = _status_kib("VmHWM")
  if before is None or peak is None:
    return None
  return max(peak - before, 0) * 1024


# ---------------------------------------------------------------------------
# The run.


def machine_info() -> dict[str, Any]:
  info: dict[str, Any] = {
    "platform": platform.platform(),
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "jaxlib_backend": jax.default_backend(),
    "devices": [str(d.device_kind) for d in jax.devices()],
    "optax": optax.__version__,
    "torch": None if torch is None else torch.__version__,
    "torch_threads": None if torch is None else torch.get_num_threads(),
    "adamp": None if official_adamp is None else getattr(official_adamp, "__version__", "0.3.0"),
    "decoupled_optax": dopt.__version__,
    "cpu_kernel": dopt.cpu_kernel_available(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        info["cpu_model"] = line.split(":", 1)[1].strip()
        break
    for line in Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemTotal"):
        info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  try:
    info["git_commit"] = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
      cwd=Path(__file__).parent,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    info["git_commit"] = None
  return info


def run_tree(
  tree_name: str,
  *,
  rounds: int,
  warmup: int,
  compile_reps: int,
  with_torch: bool,
  only: set[str] | None,
  steps_per_call: int = 1,
) -> dict[str, Any]:
  specs = TREES[tree_name]()
  np_params, np_grads = make_arrays(specs)
  leaves = jax.tree.leaves(np_params)
  num_params = sum(leaf.size for leaf in leaves)
  param_bytes = sum(leaf.nbytes for leaf in leaves)
  print(
    f"\n== {tree_name}: {len(leaves)} leaves, {num_params / 1e6:.2f}M params "
    f"({param_bytes / 2**20:.0f} MiB)",
    flush=True,
  )
  grads = jax.tree.map(jnp.asarray, np_grads)
  candidates: list[Candidate] = []
  for name, (kind, factory) in jax_optimizers().items():
    if only and name not in only:
      continue
    # The compile-time target compares these two: repeat them; compile the rest once.
    reps = compile_reps if name in ("ours adamp", "optax.adamw") else 1
    candidate = setup_jax(name, kind, factory, np_params, grads, reps, steps_per_call)
    print(
      f"  compiled {name:24s} {candidate.compile_s:6.2f} s  {candidate.hlo_fusions} fusions",
      flush=True,
    )
    candidates.append(candidate)
  if with_torch:
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch_grads = [
      torch.tensor(to_torch_layout(g), device=device) for g in jax.tree.leaves(np_grads)
    ]
    for name, (kind, factory) in torch_optimizers().items():
      if only and name not in only:
        continue
      candidates.append(setup_torch(name, kind, factory, np_params, torch_grads, steps_per_call))
  del np_grads
  candidates += copy_candidates(num_params, with_torch, steps_per_call)

  for candidate in candidates:  # warm up, and the memory growth of one step
    for _ in range(warmup):
      candidate.step()
    if jax.default_backend() == "cpu":
      candidate.rss_step_bytes = rss_growth_of_step(candidate.step)

  start = time.perf_counter()
  for round_index in range(rounds):
    shift = round_index % len(candidates)
    for candidate in candidates[shift:] + candidates[:shift]:
      t0 = time.perf_counter()
      candidate.step()
      candidate.times.append((time.perf_counter() - t0) / candidate.steps_per_call)
  print(f"  timed {rounds} rounds in {time.perf_counter() - start:.1f} s", flush=True)

  copy_bw = max(
    2 * param_bytes / statistics.median(c.times) for c in candidates if c.kind == "copy"
  )
  rows = []
  for c in candidates:
    median = statistics.median(c.times)
    q = statistics.quantiles(c.times, n=4) if len(c.times) >= 2 else [median, median, median]
    row: dict[str, Any] = {
      "name": c.name,
      "framework": c.framework,
      "kind": c.kind,
      "median_ms": 1e3 * median,
      "q1_ms": 1e3 * q[0],
      "q3_ms": 1e3 * q[2],
      "min_ms": 1e3 * min(c.times),
      "compile_s": c.compile_s,
      "xla_peak_bytes": c.xla_peak_bytes,
      "xla_temp_bytes": c.xla_temp_bytes,
      "hlo_fusions": c.hlo_fusions,
      "rss_step_bytes": c.rss_step_bytes,
    }
    passes = 2 if c.kind == "copy" else PASSES[c.kind]
    row["floor_passes"] = passes
    row["bytes_per_step"] = passes * param_bytes
    row["gb_per_s"] = passes * param_bytes / median / 1e9
    row["fraction_of_copy_bw"] = passes * param_bytes / median / copy_bw
    row["floor_ms"] = 1e3 * passes * param_bytes / copy_bw
    rows.append(row)
    print(
      f"  {c.name:24s} {row['median_ms']:9.2f} ms  {row['gb_per_s']:7.2f} GB/s "
      f"({100 * row['fraction_of_copy_bw']:5.1f}% of copy)",
      flush=True,
    )
  result = {
    "tree": tree_name,
    "leaves": len(leaves),
    "params": num_params,
    "param_bytes": param_bytes,
    "rounds": rounds,
    "steps_per_call": steps_per_call,
    "copy_bandwidth_gb_per_s": copy_bw / 1e9,
    "candidates": rows,
    "targets": targets(rows, param_bytes),
  }
  kind = jax.devices()[0].device_kind
  nominal = next((bw for key, bw in HBM_BANDWIDTH.items() if key in kind), None)
  if jax.default_backend() == "gpu" and nominal:
    result["nominal_hbm_bandwidth_gb_per_s"] = nominal / 1e9
    for row in rows:
      row["fraction_of_hbm"] = row["gb_per_s"] * 1e9 / nominal
  del candidates
  gc.collect()
  return result


def targets(rows: list[dict[str, Any]], param_bytes: int) -> list[dict[str, Any]]:
  """The issue's targets, where both sides were measured."""
  by_name = {row["name"]: row for row in rows}
  out = []

  def add(label: str, value: float | None, limit: float, lower_is_better: bool = True) -> None:
    if value is None:
      return
    met = value <= limit if lower_is_better else value >= limit
    bound = f"<= {limit:g}" if lower_is_better else f">= {limit:g}"
    out.append({"target": label, "value": value, "bound": bound, "met": bool(met)})

  def ratio(a: str, b: str, key: str = "median_ms") -> float | None:
    if a in by_name and b in by_name and by_name[a][key] and by_name[b][key]:
      return by_name[a][key] / by_name[b][key]
    return None

  add("ours adamw / optax.adamw (time)", ratio("ours adamw", "optax.adamw"), 1.0)
  add("ours sgdw / optax sgd+decay (time)", ratio("ours sgdw", "optax sgd+decay"), 1.0)
  add("ours adamp / optax.adamw (time)", ratio("ours adamp", "optax.adamw"), 1.5)
  add("ours sgdp / optax.sgd (time)", ratio("ours sgdp", "optax.sgd"), 1.6)
  add(
    "ours adamp + diagnostics every 10 / ours adamp (time, a step that does not log)",
    ratio("ours adamp + diagnostics every 10", "ours adamp"),
    1.05,
  )
  add(
    "ours adamp + diagnostics / ours adamp (time, a logging step)",
    ratio("ours adamp + diagnostics", "ours adamp"),
    1.2,
  )

  add(
    "official AdamP / ours adamp (speed-up)",
    ratio("official AdamP", "ours adamp"),
    4.0,
    lower_is_better=False,
  )
  add(
    "ours adamp / optax.adamw (compile time)",
    ratio("ours adamp", "optax.adamw", "compile_s"),
    2.0,
  )
  if "ours adamp" in by_name and "optax.adamw" in by_name:
    ours, theirs = by_name["ours adamp"]["xla_peak_bytes"], by_name["optax.adamw"]["xla_peak_bytes"]
    if ours is not None and theirs is not None:
      add(
        "ours adamp peak - optax.adamw peak (param-sized buffers)",
        (ours - theirs) / param_bytes,
        1.0,
      )
  return out


def _fmt(value: Any, spec: str) -> str:
  return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
  info = report["machine"]
  lines = [
    "# Update-step benchmark",
    "",
    f"Generated {report['date']} by `{report['command']}`.",
    "",
    "## Machine",
    "",
  ]
  for key, value in info.items():
    lines.append(f"- {key}: {value}")
  for tree in report["trees"]:
    lines += [
      "",
      f"## {tree['tree']}: {tree['leaves']} leaves, {tree['params'] / 1e6:.2f}M params, "
      f"{tree['rounds']} interleaved rounds",
      "",
      f"Copy bandwidth measured in the same run: {tree['copy_bandwidth_gb_per_s']:.2f} GB/s "
      "(read + write).",
    ]
    hbm = "nominal_hbm_bandwidth_gb_per_s" in tree
    if hbm:
      lines.append(f"Nominal HBM bandwidth: {tree['nominal_hbm_bandwidth_gb_per_s']:.0f} GB/s.")
    lines += [
      "",
      "| candidate | median ms | IQR ms | floor ms | GB/s | % of copy BW"
      + (" | % of HBM" if hbm else "")
      + " | compile s | fusions | XLA peak MiB | XLA temp MiB | RSS growth MiB |",
      "|---|---:|---:|---:|---:|---:|" + ("---:|" if hbm else "") + "---:|---:|---:|---:|---:|",
    ]
    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    for row in tree["candidates"]:
      lines.append(
        f"| {row['name']} | {row['median_ms']:.2f} | {row['q1_ms']:.2f}–{row['q3_ms']:.2f} "
        f"| {row['floor_ms']:.2f} | {row['gb_per_s']:.2f} | {100 * row['fraction_of_copy_bw']:.0f}"
        + (f" | {100 * row['fraction_of_hbm']:.0f}" if hbm else "")
        + f" | {_fmt(row['compile_s'], '.2f')} | {_fmt(row['hlo_fusions'], 'd')} "
        f"| {_fmt(mib(row['xla_peak_bytes']), '.0f')} | {_fmt(mib(row['xla_temp_bytes']), '.0f')} "
        f"| {_fmt(mib(row['rss_step_bytes']), '.0f')} |"
      )
    if tree["targets"]:
      lines += ["", "| target | measured | bound | met |", "|---|---:|---:|---|"]
      for t in tree["targets"]:
        lines.append(
          f"| {t['target']} | {t['value']:.2f} | {t['bound']} | {'yes' if t['met'] else 'NO'} |"
        )
  lines += [
    "",
    "Floor: the param-sized arrays the update must move (AdamW 7, SGD 5, AdamP 10, SGDP 7)",
    "divided by the copy bandwidth. XLA peak: arguments + outputs - donated + temporaries of",
    "the compiled step. RSS growth: resident-set growth during one step on the CPU.",
    "",
  ]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--trees", default="resnet50,gpt2", help="comma-separated: resnet50,gpt2,tiny"
  )
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per tree")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument(
    "--compile-reps", type=int, default=3, help="compilations of ours adamp and optax.adamw"
  )
  parser.add_argument("--smoke", action="store_true", help="tiny tree, few rounds: seconds")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--only", default="", help="comma-separated candidate names")
  parser.add_argument(
    "--out",
    default=str(Path(__file__).resolve().parent.parent / "outputs"),
    help="output folder (default outputs/, ignored by git; the committed runs used "
    "--out benchmarks/results)",
  )
  parser.add_argument("--name", default=None, help="file stem (default update_step_<backend>)")
  parser.add_argument(
    "--device-time",
    type=int,
    default=1,
    metavar="K",
    help="K updates per jitted call (lax.fori_loop), timed per update: device time, not dispatch",
  )
  args = parser.parse_args(argv)

  if args.smoke:
    args.trees, args.warmup, args.compile_reps = "tiny", 1, 1
    rounds_default = {"tiny": 5}
  else:
    rounds_default = {"resnet50": 15, "gpt2": 5, "tiny": 51}
  with_torch = torch is not None and not args.no_torch
  if with_torch:
    torch.set_num_threads(os.cpu_count() or 1)  # XLA's CPU backend uses every core
  only = {name.strip() for name in args.only.split(",") if name.strip()} or None

  report: dict[str, Any] = {
    "command": " ".join(["python", *([sys.argv[0]] if argv is None else ["update_step.py"])])
    + " "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": machine_info(),
    "settings": {
      "learning_rate": LEARNING_RATE,
      "weight_decay": WEIGHT_DECAY,
      "momentum": MOMENTUM,
      "warmup": args.warmup,
      "compile_reps": args.compile_reps,
      "steps_per_call": args.device_time,
    },
    "trees": [],
  }
  report["command"] = report["command"].strip()
  for tree_name in args.trees.split(","):
    rounds = args.rounds or rounds_default[tree_name]
    report["trees"].append(
      run_tree(
        tree_name,
        rounds=rounds,
        warmup=args.warmup,
        compile_reps=args.compile_reps,
        with_torch=with_torch,
        only=only,
        steps_per_call=args.device_time,
      )
    )
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = args.name or f"update_step_{jax.default_backend()}" + ("_smoke" if args.smoke else "")
  (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / f"{stem}.md").write_text(markdown(report))
  print(f"\nwrote {out / stem}.json and .md")
  return report


if __name__ == "__main__":
  main()
