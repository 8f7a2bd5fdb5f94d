"""The fused CPU first pass of AdamP/SGDP against the generic chain and NumPy.

The reference tests in test_aliases.py (torch, the official adamp) run the
aliases with ``cpu_kernel=True`` and ``False``, so on the CPU they test both
paths against the peers; these tests pin the kernel against the generic
chain on every layout it handles, and against float64 NumPy directly.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _trees import assert_trees_close

import decoupled_optax as dopt
from decoupled_optax import fused


def test_the_kernel_is_built():
  # The project's install builds it (setup.py); without it the CPU numbers of
  # benchmarks/ and docs/performance.md do not hold.
  assert fused.cpu_kernel_available(), "decoupled_optax._cpu_kernels was not built"


def _tree(seed: int = 0) -> tuple[dict, dict]:
  """Every layout the kernel sees, plus leaves it must leave to the generic chain."""
  rng = np.random.default_rng(seed)
  shapes = {
    "conv_hwio": (3, 3, 8, 16),  # channel last: the row-vectorized loop
    "wide": (512, 1024),  # above the two-thread threshold
    "dense": (32, 10),
    "bias": (16,),
    "empty": (0, 4),
    "half": (4, 8),  # bfloat16: generic chain
  }
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  # A conv followed by BatchNorm: the gradient is orthogonal to each output channel.
  w, g = params["conv_hwio"], grads["conv_hwio"]
  grads["conv_hwio"] = g - w * ((g * w).sum((0, 1, 2)) / (w * w).sum((0, 1, 2)))
  # A whole-tensor scale-invariant dense kernel.
  w, g = params["wide"], grads["wide"]
  grads["wide"] = g - w * ((g * w).sum() / (w * w).sum())
  params = jax.tree.map(jnp.asarray, params)
  grads = jax.tree.map(jnp.asarray, grads)
  params["half"] = params["half"].astype(jnp.bfloat16)
  grads["half"] = grads["half"].astype(jnp.bfloat16)
  return params, grads


def _torch_layout_tree(seed: int = 1) -> tuple[dict, dict]:
  """Channel first (OIHW, (out, in)) for channel_axis=0: the inner-run loop."""
  rng = np.random.default_rng(seed)
  params = {
    "conv_oihw": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
    "dense": rng.standard_normal((10, 32)).astype(np.float32),
  }
  grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
  w, g = params["conv_oihw"], grads["conv_oihw"]
  grads["conv_oihw"] = g - w * (
    (g * w).sum((1, 2, 3), keepdims=True) / (w * w).sum((1, 2, 3), keepdims=True)
  )
  return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads)


def _trajectory(tx, params, grads, steps=6):
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  updates_seen = []
  for i in range(steps):
    scaled = jax.tree.map(lambda g, i=i: g * (1 + 0.1 * i), grads)
    updates, state = step(params, state, scaled)
    updates_seen.append(updates)
    params = optax.apply_updates(params, updates)
  return params, state, updates_seen


# cpu_kernel=True and False are passed explicitly, so each test names the path
# it pins (the default is pinned in tests/test_single_device_default.py).
FACTORIES = {
  "adamp": lambda **kw: dopt.adamp(1e-3, 1e-2, weight_decay_convention="torch", **kw),
  "adamp_nesterov": lambda **kw: dopt.adamp(
    1e-3, 1e-4, nesterov=True, weight_decay_convention="paper", **kw
  ),
  "sgdp": lambda **kw: dopt.sgdp(0.1, 0.9, 1e-4, weight_decay_convention="paper", **kw),
  "sgdp_nesterov": lambda **kw: dopt.sgdp(
    0.1, 0.9, 1e-2, nesterov=True, weight_decay_convention="torch", **kw
  ),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_fused_equals_generic_chain(name, layout):
  if layout == "flax":
    params, grads = _tree()
    channel_axis = -1
  else:
    params, grads = _torch_layout_tree()
    channel_axis = 0
  fused_run = _trajectory(
    FACTORIES[name](channel_axis=channel_axis, cpu_kernel=True), params, grads
  )
  generic_run = _trajectory(
    FACTORIES[name](channel_axis=channel_axis, cpu_kernel=False), params, grads
  )
  assert_trees_close(fused_run, generic_run, rtol=2e-6, leaf_scale=True)


def test_middle_channel_axis():
  """outer > 1 and inner > 1: channel_axis=2 of an HWOI-like kernel."""
  rng = np.random.default_rng(2)
  params = {"k": jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32)}
  grads = {"k": jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32)}
  runs = [
    _trajectory(
      dopt.adamp(1e-3, 1e-4, channel_axis=2, cpu_kernel=k, weight_decay_convention="paper"),
      params,
      grads,
    )
    for k in (True, False)
  ]
  assert_trees_close(*runs, rtol=2e-6, leaf_scale=True)


def _compiled_text(tx, params, grads) -> str:
  return jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(params, tx.init(params), grads).as_text()


def test_kernel_runs_exactly_where_it_should():
  params, grads = _tree()
  text = _compiled_text(
    dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper"), params, grads
  )
  # conv_hwio, wide and dense; not bias, empty, or the bfloat16 leaf.
  assert text.count("decoupled_optax_first_pass_adam") == 3
  assert "decoupled_optax_first_pass" not in _compiled_text(
    dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper"), params, grads
  )
  assert (
    _compiled_text(dopt.sgdp(0.1, 0.9, cpu_kernel=True), params, grads).count(
      "decoupled_optax_first_pass_momentum"
    )
    == 3
  )
  # Without momentum SGDP has no buffer: the generic chain.
  assert "decoupled_optax_first_pass" not in _compiled_text(
    dopt.sgdp(0.1, cpu_kernel=True), params, grads
  )


@pytest.mark.parametrize("nesterov", [False, True])
def test_kernel_statistics_against_float64(nesterov):
  rng = np.random.default_rng(3)
  shape = (3, 3, 8, 16)
  g, w, m, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
  v = np.abs(v)
  b1, b2, eps, count = 0.9, 0.999, 1e-8, 3
  direction = fused.AdamDirection(b1, b2, eps, nesterov)
  (mu, nu), update, statistics = jax.jit(
    lambda *a: fused._kernel_call(
      direction,
      direction.kernel_scalars(optax.ScaleByAdamState(jnp.int32(count), None, None)),
      *a[:2],
      a[2:],
      -1,
    )
  )(g, w, m, v)
  g64, w64, m64, v64 = (x.astype(np.float64) for x in (g, w, m, v))
  mu64 = (1 - b1) * g64 + b1 * m64
  nu64 = (1 - b2) * g64**2 + b2 * v64
  numerator = b1 * mu64 + (1 - b1) * g64 if nesterov else mu64
  # The bias corrections in float32, as optax computes them (1 - 0.999^3 loses
  # digits to cancellation there, for optax and the kernel alike).
  correction1, correction2 = (np.float64(1 - np.float32(b) ** count) for b in (b1, b2))
  u64 = numerator / correction1 / (np.sqrt(nu64 / correction2) + eps)
  np.testing.assert_allclose(mu, mu64, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(nu, nu64, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(update, u64, rtol=1e-5, atol=1e-6)
  axes = (0, 1, 2)
  expected = np.stack(
    [(g64 * w64).sum(axes), (g64 * g64).sum(axes), (w64 * w64).sum(axes), (w64 * u64).sum(axes)]
  )
  np.testing.assert_allclose(statistics, expected, rtol=1e-5, atol=1e-5)


def test_moments_are_updated_in_place_when_donated():
  params, grads = _tree()
  tx = dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
  # No param-sized temporaries: the kernel writes the donated moments.
  assert compiled.memory_analysis().temp_size_in_bytes < params["wide"].nbytes


def test_vmap_over_models():
  params, grads = _torch_layout_tree()
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tree)  # noqa: E731
  tx = dopt.adamp(1e-3, 1e-4, channel_axis=0, cpu_kernel=True, weight_decay_convention="paper")
  updates, _ = jax.vmap(lambda p, g: tx.update(g, tx.init(p), p))(stack(params), stack(grads))
  for index, scale in enumerate([1, 2]):
    p = jax.tree.map(lambda x, scale=scale: scale * x, params)
    g = jax.tree.map(lambda x, scale=scale: scale * x, grads)
    expected, _ = dopt.adamp(
      1e-3, 1e-4, channel_axis=0, cpu_kernel=False, weight_decay_convention="paper"
    ).update(g, tx.init(p), p)
    assert_trees_close(
      jax.tree.map(lambda x, index=index: x[index], updates), expected, rtol=2e-6, leaf_scale=True
    )


def test_injected_hyperparameters_reach_the_kernel():
  params, grads = _tree()
  kwargs = dict(
    learning_rate=1e-3, weight_decay=1e-4, b1=0.8, b2=0.99, weight_decay_convention="paper"
  )
  runs = [
    _trajectory(dopt.inject_hyperparams(dopt.adamp)(**kwargs, cpu_kernel=k), params, grads)
    for k in (True, False)
  ]
  assert_trees_close(*runs, rtol=2e-6, leaf_scale=True)


def test_checkpoints_move_between_the_paths():
  params, grads = _tree()
  fused_state = _trajectory(
    dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper"), params, grads
  )[1]
  generic = dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper")
  assert jax.tree.structure(fused_state) == jax.tree.structure(generic.init(params))
  generic.update(grads, fused_state, params)  # a fused state resumes on the generic path


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_accelerators_get_the_generic_chain(platform, monkeypatch):
  """The kernel is registered for the CPU only; lowering elsewhere must not reference it.

  In a process with an accelerator (simulated: its default backend is not the
  CPU) the step chooses per platform; in a CPU-only process it traces the
  fused step alone, and cpu_kernel=False keeps it off every platform.
  """
  params, grads = _tree()
  monkeypatch.setattr(fused, "_default_backend_is_cpu", lambda: False)
  tx = dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
  traced = jax.jit(lambda p, s, g: tx.update(g, s, p)).trace(params, tx.init(params), grads)
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  assert "decoupled_optax_first_pass" not in text
  assert "decoupled_optax_first_pass" in traced.lower(lowering_platforms=("cpu",)).as_text()
  monkeypatch.undo()
  generic = dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper")
  traced = jax.jit(lambda p, s, g: generic.update(g, s, p)).trace(params, tx.init(params), grads)
  assert "decoupled_optax_first_pass" not in traced.lower(lowering_platforms=(platform,)).as_text()


def test_a_cpu_only_process_traces_the_fused_step_alone():
  params, grads = _tree()
  tx = dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
  jaxpr = jax.make_jaxpr(lambda p, s, g: tx.update(g, s, p))(params, tx.init(params), grads)
  assert "platform_index" not in str(jaxpr) and "decoupled_optax_first_pass" in str(jaxpr)


def test_a_kernel_that_cannot_run_falls_back_with_a_warning(monkeypatch):
  """E.g. a jaxlib whose FFI cannot call the handler: warn, run the generic chain by default."""

  def broken(*args, **kwargs):
    raise RuntimeError("simulated FFI failure")

  fused._kernel_status.cache_clear()
  monkeypatch.setattr(fused, "_ffi_first_pass", broken)
  try:
    with pytest.warns(RuntimeWarning, match="generic chain"):
      assert not fused.cpu_kernel_available()
    params, grads = _tree()
    monkeypatch.setattr(fused, "_single_cpu_device", lambda: True)
    with pytest.warns(dopt.CPUKernelWarning, match="does not run with this jaxlib"):
      tx = dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper")
    assert "decoupled_optax_first_pass" not in _compiled_text(tx, params, grads)
    with pytest.raises(RuntimeError, match="cpu_kernel=True, but the fused CPU kernel"):
      dopt.adamp(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
  finally:
    fused._kernel_status.cache_clear()
    fused._warn_missing_kernel.cache_clear()
  monkeypatch.undo()
  assert fused.cpu_kernel_available()


def test_a_missing_kernel_is_reported_once_and_forcing_it_raises(monkeypatch):
  """Installed without a compiler: one warning on a lone CPU device, and cpu_kernel=True raises."""
  monkeypatch.setattr(fused, "_kernel_status", lambda: (frozenset(), "simulated: not built"))
  monkeypatch.setattr(fused, "_single_cpu_device", lambda: True)
  fused._warn_missing_kernel.cache_clear()
  try:
    with pytest.warns(dopt.CPUKernelWarning, match="2.5x slower.*simulated: not built"):
      dopt.adamp(1e-3, 1e-4, weight_decay_convention="paper")
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      dopt.sgdp(0.1, 0.9)  # once per process, not per optimizer
      dopt.adamp(1e-3, 1e-4, cpu_kernel=False, weight_decay_convention="paper")
    for make in (dopt.adamp, lambda lr, wd, **k: dopt.sgdp(lr, 0.9, wd, **k)):
      with pytest.raises(RuntimeError, match="not available: simulated: not built"):
        make(1e-3, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
  finally:
    fused._warn_missing_kernel.cache_clear()


def _small_tree():
  """Kernel leaves of both layouts and a bias, small enough to differentiate quickly."""
  rng = np.random.default_rng(1)
  shapes = {"conv": (3, 3, 4, 8), "dense": (6, 5), "bias": (5,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _unrolled_loss(params, tx, steps=2):
  """A function of the update that meta-learning differentiates: the loss after a few steps."""
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree.map(jnp.sin, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return sum(jnp.sum(x**2) for x in jax.tree.leaves(params))


DIFFERENTIATED = [
  (
    "adamp",
    lambda kernel: dopt.adamp(1e-2, 1e-3, cpu_kernel=kernel, weight_decay_convention="paper"),
  ),
  (
    "adamp-nesterov",
    lambda kernel: dopt.adamp(
      1e-2, 1e-3, nesterov=True, cpu_kernel=kernel, weight_decay_convention="paper"
    ),
  ),
  (
    "sgdp",
    lambda kernel: dopt.sgdp(0.1, 0.9, 1e-3, cpu_kernel=kernel, weight_decay_convention="paper"),
  ),
  (
    "sgdp-nesterov",
    lambda kernel: dopt.sgdp(
      0.1, 0.9, 1e-3, nesterov=True, cpu_kernel=kernel, weight_decay_convention="paper"
    ),
  ),
]


@pytest.mark.parametrize("make", [m for _, m in DIFFERENTIATED], ids=[n for n, _ in DIFFERENTIATED])
def test_grad_and_jvp_through_the_fused_update_equal_the_generic_chains(make):
  params = _small_tree()
  fused_tx, generic_tx = make(True), make(False)
  assert "decoupled_optax_first_pass" in _compiled_text(fused_tx, params, params)
  grads = [
    jax.jit(jax.grad(_unrolled_loss), static_argnums=1)(params, tx) for tx in (fused_tx, generic_tx)
  ]
  assert_trees_close(grads[0], grads[1], rtol=2e-6, leaf_scale=True)
  tangents = jax.tree.map(jnp.ones_like, params)
  jvps = [
    jax.jvp(lambda p, tx=tx: _unrolled_loss(p, tx), (params,), (tangents,))
    for tx in (fused_tx, generic_tx)
  ]
  np.testing.assert_allclose(jvps[0][0], jvps[1][0], rtol=1e-5)
  np.testing.assert_allclose(jvps[0][1], jvps[1][1], rtol=1e-4)


def test_hypergradients_of_injected_hyperparameters_through_the_fused_update():
  """d loss / d learning_rate, with the rate traced by inject_hyperparams and closed over."""
  params = _small_tree()
  grads = jax.tree.map(jnp.cos, params)

  def loss_after_one_step(learning_rate, weight_decay, kernel):
    tx = dopt.inject_hyperparams(dopt.adamp)(
      learning_rate, weight_decay, cpu_kernel=kernel, weight_decay_convention="paper"
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(optax.apply_updates(params, updates)))

  hypergradients = [
    jax.jit(jax.grad(loss_after_one_step, argnums=(0, 1)), static_argnums=2)(1e-2, 1e-1, kernel)
    for kernel in (True, False)
  ]
  np.testing.assert_allclose(hypergradients[0], hypergradients[1], rtol=1e-5)
  assert all(abs(float(h)) > 0 for h in hypergradients[0])


def test_the_kernel_registers_when_the_first_optimizer_is_built_inside_jit():
  """Its self-test used to run on tracers there, and disabled the kernel for the process."""
  params = _small_tree()
  grads = jax.tree.map(jnp.cos, params)

  @jax.jit
  def step(learning_rate):
    tx = dopt.adamp(learning_rate, 1e-4, cpu_kernel=True, weight_decay_convention="paper")
    return tx.update(grads, tx.init(params), params)

  fused._kernel_status.cache_clear()
  try:
    step(1e-3)
    assert fused.cpu_kernel_available()
  finally:
    fused._kernel_status.cache_clear()


def test_one_wide_leaf_does_not_pad_the_statistics_of_all_others():
  """The batched per-channel math groups leaves by width: padding stays within 2x each leaf's own."""
  rng = np.random.default_rng(0)
  params = {f"narrow_{i}": rng.standard_normal((16, 16)).astype(np.float32) for i in range(40)}
  params["wide"] = rng.standard_normal((4, 2**16)).astype(np.float32)
  grads = jax.tree.map(lambda x: x * 0.5, params)

  def temporaries(cpu_kernel):
    tx = dopt.adamp(1e-3, 1e-4, cpu_kernel=cpu_kernel, weight_decay_convention="paper")
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    compiled = step.lower(params, tx.init(params), grads).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  leaf_bytes = 4 * 2**16 * 4
  # Padded to the widest, the 40 narrow leaves' (4, channels) statistics alone would
  # take 40 * 4 * 2^16 * 4 bytes = 40 wide leaves.
  assert temporaries(True) <= temporaries(False) + 8 * leaf_bytes


@pytest.mark.skipif(not dopt.cpu_kernel_available(), reason="the kernel was not built here")
def test_the_kernel_self_test_passes_when_the_first_optimizer_is_built_under_vmap():
  # inject_hyperparams builds the alias inside the update: under vmap (a grid of runs) the
  # self-test, run once per process on first use, must not take the vmap's tracers.
  script = """
import warnings, jax, jax.numpy as jnp
warnings.simplefilter("error")
import decoupled_optax as dopt
make = dopt.inject_hyperparams(
  lambda learning_rate: dopt.adamp(learning_rate, 1e-2, weight_decay_convention="torch"))
params = {"w": jnp.ones((4, 3))}
def step(lr):
  tx = make(learning_rate=lr)
  return tx.update(params, tx.init(params), params)[0]
jax.jit(jax.vmap(step))(jnp.array([1e-3, 1e-2]))
assert dopt.cpu_kernel_available()
"""
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
