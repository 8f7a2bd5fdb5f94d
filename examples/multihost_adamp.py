"""Multi-host AdamP: a sharded model trained by several processes with jax.distributed.

Every process runs this script; together they form one mesh of all their
devices, ``("data", "model")``. The params are sharded over ``model`` (the
first kernel over its output channels, the second over its input dim), the
batch over ``data``; ``jit`` and GSPMD do the rest, so AdamP's cosines and
norms are global and the result equals a single-process run.

On one machine, with 2 processes of 2 fake CPU devices each::

  python examples/multihost_adamp.py --num-processes 2 --process-id 0 --port 12355 &
  python examples/multihost_adamp.py --num-processes 2 --process-id 1 --port 12355

and the single-process run on 4 devices, for comparison::

  python examples/multihost_adamp.py --devices-per-process 4

On a cluster, drop ``--devices-per-process`` and the CPU collectives, and
point ``--coordinator`` at process 0's host.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

IN, HIDDEN, OUT, BATCH = 16, 32, 8, 16


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "w1": rng.standard_normal((IN, HIDDEN)).astype(np.float32),
    "w2": (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32),
    "b2": np.zeros(OUT, np.float32),
  }


def make_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of a step; every process computes it and keeps its part."""
  rng = np.random.default_rng(100 + step)
  x = rng.standard_normal((BATCH, IN)).astype(np.float32)
  return x, np.sin(x[:, :OUT] * 2.0).astype(np.float32)


def train(mesh, steps: int = 5) -> tuple[dict[str, np.ndarray], list[float]]:
  """Trains on ``mesh`` (axes ``data`` and ``model``); returns the full params and the losses."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import decoupled_optax as dopt

  specs = {"w1": P(None, "model"), "w2": P("model", None), "b2": P()}
  shardings = {k: NamedSharding(mesh, spec) for k, spec in specs.items()}
  data_sharding = NamedSharding(mesh, P("data", None))

  def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Each process supplies the shards of its own devices.
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  def loss_fn(params, x, y):
    # w1 is weight-normalized per output channel: scale invariant, so AdamP projects it.
    w1 = params["w1"] / jnp.linalg.norm(params["w1"], axis=0, keepdims=True)
    prediction = jnp.tanh(x @ w1) @ params["w2"] + params["b2"]
    return jnp.mean((prediction - y) ** 2)

  tx = dopt.adamp(1e-2, weight_decay=1e-4, weight_decay_convention="paper")
  params = {k: global_array(v, shardings[k]) for k, v in init_params().items()}
  # The state is sharded like the params, even though init is jitted.
  opt_state = jax.jit(tx.init, out_shardings=dopt.state_shardings(tx, params))(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(steps):
    x, y = (global_array(a, data_sharding) for a in make_batch(i))
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))
  for k, v in params.items():
    assert v.sharding.is_equivalent_to(shardings[k], v.ndim), (k, v.sharding)
  full = multihost_utils.process_allgather(params, tiled=True)
  return {k: np.asarray(v) for k, v in full.items()}, losses


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--coordinator", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=12355)
  parser.add_argument("--devices-per-process", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default=None, help="process 0 saves the final params here (.npz)")
  args = parser.parse_args(argv)

  # Fake CPU devices; must be set before jax starts its backend.
  flag = f"--xla_force_host_platform_device_count={args.devices_per_process}"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  import jax
  from jax.sharding import Mesh

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      f"{args.coordinator}:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  devices = np.array(jax.devices())  # all processes' devices
  model = 2 if devices.size % 2 == 0 else 1
  mesh = Mesh(devices.reshape(devices.size // model, model), ("data", "model"))
  params, losses = train(mesh, args.steps)
  print(
    f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, "
    f"{jax.local_device_count()} local; losses {[round(x, 5) for x in losses]}",
    flush=True,
  )
  if args.out is not None and jax.process_index() == 0:
    np.savez(args.out, **params)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
