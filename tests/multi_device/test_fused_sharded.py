"""The fused CPU kernel with several CPU devices: the default, and sharded leaves.

Moved from tests/test_fused.py, whose process has one CPU device; its trees
and helpers are imported from there (tests/ is on the path, see conftest.py).
"""

from __future__ import annotations

import jax
import numpy as np
from _trees import assert_trees_close
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from test_fused import _compiled_text, _tree

import decoupled_optax as dopt
from decoupled_optax import fused


def test_several_cpu_devices_default_to_the_generic_chain():
  params, grads = _tree()
  assert jax.device_count("cpu") > 1
  assert "decoupled_optax_first_pass" not in _compiled_text(
    dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper"), params, grads
  )
  assert "decoupled_optax_first_pass" not in _compiled_text(dopt.sgdp(0.1, 0.9), params, grads)
  if fused.cpu_kernel_available():
    # Forced, it still runs on unsharded params.
    forced = _compiled_text(
      dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper"), params, grads
    )
    assert "decoupled_optax_first_pass_adam" in forced


def test_sharded_leaves_take_the_generic_chain_even_when_forced():
  """Sharded jit inputs carry their mesh in their types: the kernel never sees them."""
  params, grads = _tree()
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))
  specs = {"conv_hwio": P(None, None, "x", "y"), "wide": P("x", "y"), "dense": P("x")}
  shard = lambda tree: {  # noqa: E731
    k: jax.device_put(v, NamedSharding(mesh, specs.get(k, P()))) for k, v in tree.items()
  }
  tx = dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  args = (shard(params), tx.init(shard(params)), shard(grads))
  assert "decoupled_optax_first_pass" not in step.lower(*args).as_text()
  sharded, _ = step(*args)
  single, _ = step(params, tx.init(params), grads)
  assert_trees_close(sharded, single, rtol=2e-6, leaf_scale=True)
