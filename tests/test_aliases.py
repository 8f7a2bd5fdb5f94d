"""The aliases against their references, step for step, on a pytree with every kind of leaf.

References: torch.optim.AdamW and SGD, the official adamp 0.3.0 AdamP and
SGDP, and a NumPy transcription of the authors' sgd.lua, through the ``peer``
fixture: their recorded trajectories by default, live with ``--extended``
(``_peers.py``; the torch side is ``_peer_runs.py``). See
``_reference.py`` for the test problem: a per-channel scale-invariant conv
kernel, a whole-tensor scale-invariant dense kernel, an ordinary kernel, a
bias and a scale, each side differentiating its own copy of the same loss.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import (
  DECAYED,
  MASK,
  NAMES,
  SHAPES,
  assert_trajectories_match,
  flax_to_torch,
  grad_jax,
  init_params,
  loss_jax,
  make_targets,
  mask_fn,
  max_relative_error,
  run_ours,
  sgdr_table,
  table_schedule,
)

import decoupled_optax as dopt

STEPS = 80  # two SGDR restarts (at 20 and 60) with the default table
ETA = sgdr_table(STEPS + 1)

ADAM_LR = 1e-2
SGD_LR = 0.05
TORCH_WD = 0.5  # PyTorch convention; the paper's lambda is lr * TORCH_WD (< lr, no warning)

MASKS = {"no_mask": None, "tree_mask": MASK, "callable_mask": mask_fn}


def _decayed(mask_name: str):
  return NAMES if MASKS[mask_name] is None else DECAYED


def _groups(optimizer_cls, weight_decay: float, **kwargs):
  """Param groups as run_torch hands them over: the second one is not decayed."""

  def make(groups):
    return optimizer_cls(
      [
        {"params": g["params"], "decay": g["decay"], "weight_decay": weight_decay * g["decay"]}
        for g in groups
      ],
      **kwargs,
    )

  return make


# ---------------------------------------------------------------- the test problem


def test_problem_exercises_every_projection_path():
  """Without this the AdamP/SGDP comparisons could pass without ever projecting."""
  params = jax.tree.map(jnp.asarray, init_params())
  grads = grad_jax(params, make_targets(1)[0])
  projectors, multipliers = dopt.scale_invariance(
    grads, params, dopt.RadialProjection(wd_ratio=0.1)
  )
  conv, dense, kernel = projectors["conv"], projectors["dense"], projectors["kernel"]
  # conv: per output channel (HWIO's last axis).
  assert conv.reduce_axes == (0, 1, 2)
  assert np.all(np.asarray(conv.channel_weight) > 0) and float(conv.whole_weight) == 0
  # dense: only as a whole.
  assert np.all(np.asarray(dense.channel_weight) == 0) and float(dense.whole_weight) > 0
  # kernel: not at all.
  assert np.all(np.asarray(kernel.channel_weight) == 0) and float(kernel.whole_weight) == 0
  assert projectors["bias"] is None and projectors["scale"] is None
  np.testing.assert_allclose(
    [float(multipliers[n]) for n in NAMES], [0.1, 0.1, 1.0, 1.0, 1.0], rtol=1e-7
  )


def test_problem_stays_in_its_regime_along_the_trajectory():
  """The detection holds with a wide margin at every step, so float noise cannot flip it."""
  trajectory = run_ours(dopt.adamp(ADAM_LR, TORCH_WD, weight_decay_convention="torch"), STEPS)
  targets = make_targets(STEPS)

  def cosine(g, w, per_channel):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    axes = tuple(range(g.ndim - 1)) if per_channel else None
    dot = np.abs(np.sum(g * w, axis=axes))
    return np.max(dot / np.sqrt(np.sum(g * g, axis=axes) * np.sum(w * w, axis=axes)))

  def threshold(name, per_channel):
    shape = SHAPES[name]
    return 0.1 / np.sqrt(np.prod(shape[:-1]) if per_channel else np.prod(shape))

  for t in range(STEPS):
    w = trajectory[t]
    g = grad_jax(jax.tree.map(jnp.asarray, w), targets[t])
    ratio = {
      (name, view): cosine(g[name], w[name], view) / threshold(name, view)
      for name in ("conv", "dense", "kernel")
      for view in (True, False)
    }
    assert ratio["conv", True] < 1e-3, t
    assert ratio["dense", True] > 2 and ratio["dense", False] < 1e-3, t
    assert ratio["kernel", True] > 2 and ratio["kernel", False] > 2, t


@pytest.mark.extended
def test_layout_round_trip_matches_torch_modules():
  """The conversions are the ones torch's modules use: conv OIHW, Linear (out, in)."""
  import torch

  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)  # NHWC
  kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  ours = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  theirs = torch.nn.functional.conv2d(
    torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(flax_to_torch("conv", kernel))
  ).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-5, atol=1e-5)
  dense = rng.normal(size=(6, 4)).astype(np.float32)
  v = rng.normal(size=(3, 6)).astype(np.float32)
  theirs = torch.nn.functional.linear(
    torch.from_numpy(v), torch.from_numpy(flax_to_torch("dense", dense))
  )
  np.testing.assert_allclose(v @ dense, theirs.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- AdamW


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("torch_convention", [False, True], ids=["paper", "torch"])
def test_adamw_matches_torch_adamw(torch_convention, mask_name, peer):
  # Paper: theta -= eta_t (alpha * adam + lambda * theta) with lambda = alpha * wd_torch is
  # torch's theta -= lr_t (adam + wd_torch * theta) with lr_t = alpha * eta_t, even as eta_t
  # changes, since both conventions multiply the decay by eta_t.
  weight_decay = TORCH_WD if torch_convention else ADAM_LR * TORCH_WD
  tx = dopt.adamw(
    ADAM_LR,
    weight_decay,
    schedule=table_schedule(ETA),
    mask=MASKS[mask_name],
    weight_decay_convention="torch" if torch_convention else "paper",
  )
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.torch.optim.AdamW, TORCH_WD, lr=ADAM_LR),
      STEPS,
      eta=ETA,
      decayed=_decayed(mask_name),
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_adamw_differs_from_torch_when_the_conversion_is_forgotten(peer):
  """The comparison is sensitive to the convention: the raw torch value in paper mode fails."""
  tx = dopt.adamw(
    ADAM_LR, ADAM_LR * TORCH_WD * 1.5, schedule=table_schedule(ETA), weight_decay_convention="paper"
  )
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.torch.optim.AdamW, TORCH_WD, lr=ADAM_LR), STEPS, eta=ETA
    )
  )
  assert max_relative_error(run_ours(tx, STEPS), reference)[0] > 1e-3


@pytest.mark.parametrize("use_mask", [False, True])
def test_adamw_block_chain_equals_optax_adamw(use_mask):
  mask = MASK if use_mask else None
  ours = optax.chain(
    optax.scale_by_adam(),
    dopt.add_decoupled_weight_decay(TORCH_WD, mask=mask),
    optax.scale_by_learning_rate(ADAM_LR),
  )
  theirs = optax.adamw(ADAM_LR, weight_decay=TORCH_WD, mask=mask)
  assert_trajectories_match(run_ours(ours, STEPS), run_ours(theirs, STEPS))


# ---------------------------------------------------------------- SGDW


@pytest.mark.parametrize("mask_name", ["no_mask", "tree_mask"])
@pytest.mark.parametrize(
  "momentum, nesterov",
  [(0.0, False), (0.9, False), (0.9, True)],
  ids=["plain", "heavy_ball", "nesterov"],
)
def test_sgdw_torch_convention_matches_torch_sgd(momentum, nesterov, mask_name, peer):
  tx = dopt.sgdw(
    SGD_LR,
    momentum,
    TORCH_WD,
    nesterov=nesterov,
    schedule=table_schedule(ETA),
    mask=MASKS[mask_name],
    weight_decay_convention="torch",
  )
  reference = peer(
    lambda live: live.run_torch(
      lambda groups: live.torch.optim.SGD(groups, lr=SGD_LR, momentum=momentum, nesterov=nesterov),
      STEPS,
      eta=ETA,
      decayed=_decayed(mask_name),
      before_step=live.decoupled_decay_hook(TORCH_WD),
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


@pytest.mark.parametrize("mask_name", ["no_mask", "tree_mask"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdw_paper_mode_matches_authors_sgd_lua(nesterov, mask_name, peer):
  momentum, weight_decay = 0.9, SGD_LR * TORCH_WD
  tx = dopt.sgdw(
    SGD_LR,
    momentum,
    weight_decay,
    nesterov=nesterov,
    schedule=table_schedule(ETA),
    mask=MASKS[mask_name],
    weight_decay_convention="paper",
  )
  reference = peer(
    lambda live: live.sgd_lua(
      STEPS, SGD_LR, momentum, weight_decay, ETA, nesterov=nesterov, decayed=_decayed(mask_name)
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


# ---------------------------------------------------------------- AdamP


# Both paths of AdamP/SGDP: the fused CPU kernel and the generic chain (what
# GPUs, TPUs and multi-device CPU runs use), explicitly: the default (None)
# picks the kernel here, where the process has one CPU device.
PATHS = pytest.mark.parametrize("cpu_kernel", [True, False], ids=["kernel", "generic"])


@PATHS
@pytest.mark.parametrize("mask_name", ["no_mask", "tree_mask"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_official_adamp(nesterov, mask_name, cpu_kernel, peer):
  tx = dopt.adamp(
    ADAM_LR,
    TORCH_WD,
    nesterov=nesterov,
    schedule=table_schedule(ETA),
    mask=MASKS[mask_name],
    weight_decay_convention="torch",
    cpu_kernel=cpu_kernel,
  )
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.AdamP, TORCH_WD, lr=ADAM_LR, nesterov=nesterov),
      STEPS,
      eta=ETA,
      decayed=_decayed(mask_name),
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


@PATHS
@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_paper_mode_matches_official_with_converted_decay(nesterov, cpu_kernel, peer):
  tx = dopt.adamp(
    ADAM_LR,
    ADAM_LR * TORCH_WD,
    nesterov=nesterov,
    cpu_kernel=cpu_kernel,
    weight_decay_convention="paper",
  )
  reference = peer(
    lambda live: live.run_torch(_groups(live.AdamP, TORCH_WD, lr=ADAM_LR, nesterov=nesterov), STEPS)
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_adamp_differs_from_adamw():
  """The projection and wd_ratio change the trajectory; otherwise the match above is vacuous."""
  ours = run_ours(dopt.adamp(ADAM_LR, TORCH_WD, weight_decay_convention="torch"), STEPS)
  adamw = run_ours(dopt.adamw(ADAM_LR, TORCH_WD, weight_decay_convention="torch"), STEPS)
  for name in ("conv", "dense"):
    diff = np.linalg.norm(ours[-1][name] - adamw[-1][name]) / np.linalg.norm(adamw[-1][name])
    assert diff > 1e-2, name
  np.testing.assert_allclose(ours[-1]["kernel"], adamw[-1]["kernel"], rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------- SGDP

SGDP_MOMENTUM = 0.9


def _sgdp_reference(live, nesterov, optimizer_cls, mask_name="no_mask", buffer=None):
  """The official SGDP ("official") or timm's fixed copy ("timm") under the SGDR table."""
  return live.run_torch(
    _groups(
      {"official": live.SGDP, "timm": live.TimmSGDP}[optimizer_cls],
      TORCH_WD,
      lr=SGD_LR,
      momentum=SGDP_MOMENTUM,
      nesterov=nesterov,
    ),
    STEPS,
    eta=ETA,
    decayed=_decayed(mask_name),
    buffer=buffer,
  )


@PATHS
@pytest.mark.parametrize("mask_name", ["no_mask", "tree_mask"])
@pytest.mark.parametrize(
  "nesterov, optimizer_cls", [(True, "official"), (False, "timm")], ids=["nesterov", "plain"]
)
def test_sgdp_matches_official_sgdp(nesterov, optimizer_cls, mask_name, cpu_kernel, peer):
  tx = dopt.sgdp(
    SGD_LR,
    SGDP_MOMENTUM,
    TORCH_WD,
    nesterov=nesterov,
    schedule=table_schedule(ETA),
    mask=MASKS[mask_name],
    weight_decay_convention="torch",
    cpu_kernel=cpu_kernel,
  )
  reference = peer(lambda live: _sgdp_reference(live, nesterov, optimizer_cls, mask_name))
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_sgdp_does_not_copy_the_official_momentum_bug(peer):
  tx = dopt.sgdp(
    SGD_LR, SGDP_MOMENTUM, TORCH_WD, schedule=table_schedule(ETA), weight_decay_convention="torch"
  )
  ours, states = run_ours(tx, STEPS, with_states=True)
  buggy, buggy_buffers = peer(
    lambda live: _sgdp_reference(live, False, "official", buffer="momentum"), "official"
  )
  fixed, fixed_buffers = peer(
    lambda live: _sgdp_reference(live, False, "timm", buffer="momentum"), "timm"
  )
  # The bug is real in the reference: it changes the trajectory of the projected leaves.
  assert max_relative_error(buggy, fixed)[0] > 1e-3
  assert max_relative_error(ours, buggy)[0] > 1e-3
  assert_trajectories_match(ours, fixed)

  # Our buffer holds the unprojected momentum, sum_k mu^k g_{t-k}, of the raw gradients
  # at our own params.
  targets = make_targets(STEPS)
  expected = None
  for t in range(STEPS):
    grads = grad_jax(jax.tree.map(jnp.asarray, ours[t]), targets[t])
    grads = {n: np.asarray(g, np.float64) for n, g in grads.items()}
    expected = (
      grads if expected is None else {n: SGDP_MOMENTUM * expected[n] + grads[n] for n in NAMES}
    )
    (trace,) = [
      s
      for s in jax.tree.leaves(states[t + 1], is_leaf=lambda x: isinstance(x, optax.TraceState))
      if isinstance(s, optax.TraceState)
    ]
    for n in NAMES:
      np.testing.assert_allclose(
        trace.trace[n], expected[n], rtol=1e-4, atol=1e-5 * np.abs(expected[n]).max()
      )
  # and equals the fixed reference's buffer, not the buggy one's.
  for name in NAMES:
    fixed_buffer, buggy_buffer = fixed_buffers[name], buggy_buffers[name]
    np.testing.assert_allclose(
      trace.trace[name], fixed_buffer, rtol=2e-4, atol=1e-5 * np.abs(fixed_buffer).max()
    )
    if name in ("conv", "dense"):
      assert np.linalg.norm(trace.trace[name] - buggy_buffer) > 1e-3 * np.linalg.norm(buggy_buffer)


# ---------------------------------------------------------------- the two conventions


ALIASES = {
  "adamw": lambda wd, **kw: dopt.adamw(ADAM_LR, wd, **kw),
  "sgdw": lambda wd, **kw: dopt.sgdw(SGD_LR, 0.9, wd, **kw),
  "adamp": lambda wd, **kw: dopt.adamp(ADAM_LR, wd, **kw),
  "sgdp": lambda wd, **kw: dopt.sgdp(SGD_LR, 0.9, wd, **kw),
}
ALIAS_LR = {"adamw": ADAM_LR, "sgdw": SGD_LR, "adamp": ADAM_LR, "sgdp": SGD_LR}


@pytest.mark.parametrize("schedule", [None, 0.7], ids=["no_schedule", "constant_schedule"])
@pytest.mark.parametrize("alias", list(ALIASES))
def test_the_three_conventions_agree_when_decay_is_converted(alias, schedule):
  # lambda_paper = alpha * lambda_torch; the corrected decay is lambda * eta_t per unit of
  # eta_t, so a constant eta = c needs lambda_corrected = lambda_paper / c (none: equal).
  make, lr = ALIASES[alias], ALIAS_LR[alias]
  paper_wd = lr * TORCH_WD
  eta = 1.0 if schedule is None else schedule
  paper = run_ours(
    make(paper_wd, schedule=schedule, mask=MASK, weight_decay_convention="paper"), STEPS
  )
  torch_style = make(TORCH_WD, schedule=schedule, mask=MASK, weight_decay_convention="torch")
  assert_trajectories_match(paper, run_ours(torch_style, STEPS))
  corrected = make(
    paper_wd / eta, schedule=schedule, mask=MASK, weight_decay_convention="corrected"
  )
  assert_trajectories_match(paper, run_ours(corrected, STEPS))


@pytest.mark.parametrize("alias", list(ALIASES))
def test_corrected_equals_paper_under_a_constant_unit_schedule(alias):
  make, lr = ALIASES[alias], ALIAS_LR[alias]
  paper = run_ours(make(lr * TORCH_WD, mask=MASK, weight_decay_convention="paper"), STEPS)
  for schedule in (None, 1.0, optax.constant_schedule(1.0)):
    corrected = make(
      lr * TORCH_WD, schedule=schedule, mask=MASK, weight_decay_convention="corrected"
    )
    assert_trajectories_match(paper, run_ours(corrected, STEPS), tolerance=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_corrected_sgdw_matches_a_numpy_transcription_under_sgdr(nesterov, peer):
  # SGDC: theta -= eta_t (alpha d + lambda eta_t theta), with eta_t the SGDR table.
  lam = SGD_LR * TORCH_WD
  ours = run_ours(
    dopt.sgdw(
      SGD_LR,
      0.9,
      lam,
      nesterov=nesterov,
      schedule=table_schedule(ETA),
      mask=MASK,
      weight_decay_convention="corrected",
    ),
    STEPS,
  )
  reference = peer(
    lambda live: live.sgd_lua(STEPS, SGD_LR, 0.9, lam, ETA, nesterov, DECAYED, corrected=True),
    "corrected",
  )
  assert_trajectories_match(ours, reference)
  # ...and the schedule changes the decay enough that the paper's convention differs.
  paper = peer(lambda live: live.sgd_lua(STEPS, SGD_LR, 0.9, lam, ETA, nesterov, DECAYED), "paper")
  assert max_relative_error(ours, paper)[0] > 1e-3


@PATHS
def test_corrected_adamw_and_adamp_match_timm_corrected_weight_decay(cpu_kernel, peer):
  # timm PR #2511: p *= 1 - wd * lr_t**2 / max_lr before the Adam step, lr_t = alpha eta_t,
  # max_lr = alpha; here with torch's AdamW / official AdamP, whose own decay is
  # p *= 1 - lr_t * wd, given wd * lr_t / max_lr at each step. lambda_corrected = alpha * wd.
  timm_wd = TORCH_WD

  def corrected_decay(optimizer):
    for group in optimizer.param_groups:
      group["weight_decay"] = timm_wd * group["lr"] / ADAM_LR if group["decay"] else 0.0

  corrected = dict(schedule=table_schedule(ETA), mask=MASK, weight_decay_convention="corrected")
  for ours_tx, peer_name in [
    (dopt.adamw(ADAM_LR, ADAM_LR * timm_wd, **corrected), "AdamW"),
    (dopt.adamp(ADAM_LR, ADAM_LR * timm_wd, **corrected, cpu_kernel=cpu_kernel), "AdamP"),
  ]:

    def produce(live, peer_name=peer_name):
      optimizer_cls = {"AdamW": live.torch.optim.AdamW, "AdamP": live.AdamP}[peer_name]
      return live.run_torch(
        lambda groups: optimizer_cls(groups, lr=ADAM_LR),
        STEPS,
        eta=ETA,
        decayed=DECAYED,
        before_step=corrected_decay,
      )

    reference = peer(produce, peer_name)
    assert_trajectories_match(run_ours(ours_tx, STEPS), reference)


def test_a_learning_rate_schedule_needs_the_torch_convention():
  with pytest.raises(ValueError, match="learning_rate must be a scalar in the 'corrected'"):
    dopt.adamw(optax.constant_schedule(1e-3), 1e-5, weight_decay_convention="corrected")


def test_the_corrected_convention_warns_on_a_pytorch_valued_decay():
  with pytest.warns(dopt.WeightDecayConventionWarning):
    dopt.adamw(1e-3, 1e-2, weight_decay_convention="corrected")


def test_sgdp_judges_the_convention_on_the_decay_it_was_given():
  # sgdp decays by lambda / (1 - momentum) internally; a paper lambda below alpha (a PyTorch
  # decay below 1) must not warn just because the rescaled value is above alpha.
  with warnings.catch_warnings():
    warnings.simplefilter("error", dopt.WeightDecayConventionWarning)
    dopt.sgdp(0.05, 0.9, 0.0375, weight_decay_convention="paper")
  with pytest.warns(dopt.WeightDecayConventionWarning, match=r"weight_decay=0\.0625 "):
    dopt.sgdp(0.05, 0.9, 0.0625, weight_decay_convention="paper")


# ---------------------------------------------------------------- moment dtypes

BF16, F32 = jnp.bfloat16, jnp.float32
# weight_decay < learning_rate in the paper's convention: no convention warning.
ADAM_ALIASES = {
  "adamw": lambda **kw: dopt.adamw(ADAM_LR, 1e-4, weight_decay_convention="paper", **kw),
  "nadamw": lambda **kw: dopt.adamw(
    ADAM_LR, 1e-4, weight_decay_convention="paper", nesterov=True, **kw
  ),
  "adamp": lambda **kw: dopt.adamp(ADAM_LR, 1e-4, weight_decay_convention="paper", **kw),
  "adamp_nesterov": lambda **kw: dopt.adamp(
    ADAM_LR, 1e-4, weight_decay_convention="paper", nesterov=True, **kw
  ),
}
# (params, mu_dtype, nu_dtype): low-precision moments of float32 params (MaxText's case),
# and float32 second moments of bfloat16 params.
MOMENT_DTYPES = {
  "f32_params_bf16_moments": (F32, BF16, BF16),
  "f32_params_bf16_nu": (F32, None, BF16),
  "bf16_params_f32_nu": (BF16, None, F32),
}


def _adam_state(state) -> optax.ScaleByAdamState:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  (adam,) = [x for x in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(x)]
  return adam


def _assert_moment_dtypes(state, mu_dtype, nu_dtype) -> None:
  adam = _adam_state(state)
  assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(mu_dtype)}
  assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(nu_dtype)}
  assert adam.count.dtype == jnp.int32


def _params_in(dtype):
  return jax.tree.map(lambda p: jnp.asarray(p, dtype), init_params())


@pytest.mark.parametrize("dtypes", sorted(MOMENT_DTYPES))
@pytest.mark.parametrize("alias", sorted(ADAM_ALIASES))
def test_adam_aliases_keep_the_moment_dtypes_across_jitted_and_scanned_updates(alias, dtypes):
  param_dtype, mu_dtype, nu_dtype = MOMENT_DTYPES[dtypes]
  tx = ADAM_ALIASES[alias](mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  params = _params_in(param_dtype)
  mu_dtype = mu_dtype or param_dtype
  _assert_moment_dtypes(tx.init(params), mu_dtype, nu_dtype)
  trajectory, states = run_ours(tx, 4, params=params, with_states=True)
  for state in states:
    _assert_moment_dtypes(state, mu_dtype, nu_dtype)
  assert {p.dtype for p in jax.tree.leaves(trajectory[-1])} == {jnp.dtype(param_dtype)}

  targets = make_targets(4)
  grads = jax.grad(loss_jax)(params, targets[0])
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda g: g.dtype, grads)

  def step(carry, step_targets):
    params, state = carry
    updates, state = tx.update(jax.grad(loss_jax)(params, step_targets), state, params)
    return (optax.apply_updates(params, updates), state), None

  stacked = jax.tree.map(lambda *t: jnp.stack(t), *targets)
  (scanned, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, stacked))((params, tx.init(params)))
  _assert_moment_dtypes(state, mu_dtype, nu_dtype)
  tolerance = 1e-5 if param_dtype == F32 else 1e-2
  for name in NAMES:
    assert scanned[name].dtype == param_dtype
    np.testing.assert_allclose(
      np.asarray(scanned[name], np.float32),
      np.asarray(trajectory[-1][name], np.float32),
      rtol=tolerance,
      atol=tolerance,
    )


@pytest.mark.parametrize("dtypes", ["f32_params_bf16_moments", "bf16_params_f32_nu"])
@pytest.mark.parametrize("alias", ["adamw", "adamp_nesterov"])
def test_a_checkpoint_round_trip_keeps_the_moment_dtypes_and_resumes_bit_identically(alias, dtypes):
  from flax import serialization

  param_dtype, mu_dtype, nu_dtype = MOMENT_DTYPES[dtypes]
  tx = ADAM_ALIASES[alias](mu_dtype=mu_dtype, nu_dtype=nu_dtype)
  params = _params_in(param_dtype)
  targets = make_targets(6)

  @jax.jit
  def step(params, state, targets):
    updates, state = tx.update(jax.grad(loss_jax)(params, targets), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for t in range(3):
    params, state = step(params, state, targets[t])
  restored_states = [
    serialization.from_bytes(tx.init(params), serialization.to_bytes(state)),
    jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, state)),
  ]
  for restored in restored_states:
    assert jax.tree.map(lambda x: x.dtype, restored) == jax.tree.map(lambda x: x.dtype, state)
    _assert_moment_dtypes(restored, mu_dtype or param_dtype, nu_dtype)
    resumed, uninterrupted = (params, restored), (params, state)
    for t in range(3, 6):
      resumed, uninterrupted = step(*resumed, targets[t]), step(*uninterrupted, targets[t])
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _calls_the_kernel(tx, params) -> bool:
  grads = jax.grad(loss_jax)(params, make_targets(1)[0])
  lowered = jax.jit(lambda p, s, g: tx.update(g, s, p)).lower(params, tx.init(params), grads)
  return "decoupled_optax_first_pass" in lowered.as_text()


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_low_precision_moments_on_the_fused_path_equal_the_generic_chain(nesterov):
  """The kernel keeps float32 moments: bfloat16 ones run the generic chain, exactly."""
  assert dopt.cpu_kernel_available() and jax.device_count("cpu") == 1
  params = _params_in(F32)
  kw = dict(nesterov=nesterov, weight_decay_convention="paper")
  default = dopt.adamp(ADAM_LR, 1e-4, mu_dtype=BF16, nu_dtype=BF16, **kw)
  generic = dopt.adamp(ADAM_LR, 1e-4, mu_dtype=BF16, nu_dtype=BF16, cpu_kernel=False, **kw)
  assert _calls_the_kernel(dopt.adamp(ADAM_LR, 1e-4, **kw), params)
  assert not _calls_the_kernel(default, params)
  (ours, our_states), (theirs, their_states) = [
    run_ours(tx, 6, params=params, with_states=True) for tx in (default, generic)
  ]
  for state in our_states:
    _assert_moment_dtypes(state, BF16, BF16)
  for a, b in zip(
    jax.tree.leaves((ours, our_states)), jax.tree.leaves((theirs, their_states)), strict=True
  ):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # float32 moments asked for explicitly: the kernel takes the 2-D leaves, and the 1-D ones
  # go through the generic Adam with the kernel's leaves left out.
  fused, generic = [
    dopt.adamp(ADAM_LR, 1e-4, mu_dtype=F32, nu_dtype=F32, cpu_kernel=cpu_kernel, **kw)
    for cpu_kernel in (None, False)
  ]
  assert _calls_the_kernel(fused, params)
  ours, our_states = run_ours(fused, 6, params=params, with_states=True)
  _assert_moment_dtypes(our_states[-1], F32, F32)
  assert_trajectories_match(ours, run_ours(generic, 6, params=params))


def test_inject_hyperparams_keeps_the_dtype_arguments_static():
  params = _params_in(F32)
  grads = jax.grad(loss_jax)(params, make_targets(1)[0])
  cases = [
    (
      dopt.adamw,
      dict(weight_decay_convention="paper", mu_dtype=BF16),
      lambda s: _assert_moment_dtypes(s, BF16, F32),
    ),
    (
      dopt.adamp,
      dict(weight_decay_convention="paper", mu_dtype=BF16, nu_dtype=BF16),
      lambda s: _assert_moment_dtypes(s, BF16, BF16),
    ),
  ]
  for factory, kw, check in cases:
    tx = dopt.inject_hyperparams(factory)(learning_rate=1e-3, weight_decay=1e-4, **kw)
    state = tx.init(params)
    assert not {"mu_dtype", "nu_dtype"} & set(state.hyperparams)
    for _ in range(2):
      updates, state = jax.jit(tx.update)(grads, state, params)
      check(state)
      assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda g: g.dtype, grads)
  for factory in (dopt.sgdw, dopt.sgdp):
    tx = dopt.inject_hyperparams(factory)(
      learning_rate=0.1, momentum=0.9, accumulator_dtype=BF16, weight_decay_convention="paper"
    )
    state = tx.init(params)
    assert "accumulator_dtype" not in state.hyperparams
    _, state = jax.jit(tx.update)(grads, state, params)
    (trace,) = [
      x
      for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.TraceState))
      if isinstance(x, optax.TraceState)
    ]
    assert {x.dtype for x in jax.tree.leaves(trace.trace)} == {jnp.dtype(BF16)}


# --- The corrected decay's per-layer rule (Defazio 2025): lambda eta_t^2 on the normalized
# layers, lambda eta_t on the others.


def _numpy_adamw_per_layer(steps: int, lam: float, corrected: tuple[str, ...]):
  """A float64 AdamW (paper convention) whose leaves in ``corrected`` decay by lambda eta_t^2."""
  params = {k: v.astype(np.float64) for k, v in init_params().items()}
  targets = make_targets(steps)
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  trajectory = [params]
  for t in range(steps):
    grads = grad_jax({k: x.astype(np.float32) for k, x in params.items()}, targets[t])
    new = {}
    for name in NAMES:
      g, w = np.asarray(grads[name], np.float64), params[name]
      m[name] = 0.9 * m[name] + 0.1 * g
      v[name] = 0.999 * v[name] + 0.001 * g * g
      u = (m[name] / (1 - 0.9 ** (t + 1))) / (np.sqrt(v[name] / (1 - 0.999 ** (t + 1))) + 1e-8)
      decay = lam * ETA[t] if name in corrected else lam
      new[name] = w - ETA[t] * (ADAM_LR * u + (decay * w if name in DECAYED else 0.0))
    params = new
    trajectory.append(params)
  return trajectory


@pytest.mark.parametrize("as_function", [False, True])
def test_corrected_decay_on_a_mask_matches_a_numpy_transcription(as_function):
  lam = ADAM_LR * TORCH_WD
  corrected = {name: name in ("conv", "dense") for name in NAMES}
  ours = run_ours(
    dopt.adamw(
      ADAM_LR,
      lam,
      schedule=table_schedule(ETA),
      mask=MASK,
      weight_decay_convention="corrected",
      corrected_decay_leaves=(lambda p: corrected) if as_function else corrected,
    ),
    STEPS,
  )
  reference = _numpy_adamw_per_layer(STEPS, lam, ("conv", "dense"))
  assert_trajectories_match(ours, reference)
  # Both rules are at work: correcting every leaf, or none, gives another trajectory.
  for everywhere in (DECAYED, ()):
    assert max_relative_error(ours, _numpy_adamw_per_layer(STEPS, lam, everywhere))[0] > 1e-4


@PATHS
def test_corrected_decay_on_scale_invariant_leaves_follows_adamps_test(cpu_kernel):
  # AdamP decides per leaf, so each leaf of the per-layer run is the leaf of a run in one
  # convention: "corrected" where the test found it scale invariant (conv, dense), "paper" on
  # the kernel, whose gradient is never orthogonal to it.
  lam = ADAM_LR * TORCH_WD
  common = dict(schedule=table_schedule(ETA), mask=MASK, cpu_kernel=cpu_kernel)
  per_layer, states = run_ours(
    dopt.adamp(
      ADAM_LR,
      lam,
      weight_decay_convention="corrected",
      corrected_decay_leaves="scale_invariant",
      **common,
    ),
    STEPS,
    with_states=True,
  )
  corrected = run_ours(
    dopt.adamp(ADAM_LR, lam, weight_decay_convention="corrected", **common), STEPS
  )
  paper = run_ours(dopt.adamp(ADAM_LR, lam, weight_decay_convention="paper", **common), STEPS)
  for name, same_as in [("conv", corrected), ("dense", corrected), ("kernel", paper)]:
    for ours, theirs in zip(per_layer, same_as, strict=True):
      np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-5, atol=1e-7)
  assert max_relative_error(corrected, paper)[0] > 1e-3  # the rules differ on these leaves
  is_scalars = lambda x: type(x).__name__ == "StepScalarsState"  # noqa: E731
  (kept,) = [x for x in jax.tree.leaves(states[-1], is_leaf=is_scalars) if is_scalars(x)]
  eta = ETA[STEPS - 1]
  np.testing.assert_allclose(float(kept.weight_decay), lam * eta, rtol=1e-5)
  np.testing.assert_allclose(float(kept.corrected_weight_decay), lam * eta**2, rtol=1e-5)


def test_corrected_decay_leaves_is_refused_where_it_cannot_apply():
  with pytest.raises(ValueError, match="unless weight_decay_convention='corrected'"):
    dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper", corrected_decay_leaves={"w": True})
  with pytest.raises(ValueError, match="needs AdamP's test"):
    dopt.adamw(
      1e-3, 1e-4, weight_decay_convention="corrected", corrected_decay_leaves="scale_invariant"
    )
  with pytest.raises(ValueError, match="'scale_invariant', a tree of bools"):
    dopt.adamp(1e-3, 1e-4, weight_decay_convention="corrected", corrected_decay_leaves="normalized")
