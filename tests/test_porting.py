"""Every row of the porting guide (docs/porting.md), run against its peer.

Peers that install here run as they are: torch (``torch.optim.AdamW``,
``SGD``, ``CosineAnnealingWarmRestarts``), the official ``adamp`` 0.3.0 and
optax. The others are faithful transcriptions of the named source file:

* timm 1.0.31 (PyPI ``timm`` imports torchvision at ``import timm``, and
  PyPI's torchvision does not load beside this torch): the factory's
  defaults and parameter groups from ``timm/optim/_optim_factory.py`` and
  ``timm/optim/_param_groups.py``, its SGDP fix from ``timm/optim/sgdp.py``
  (the momentum buffer is cloned before the projection), and
  ``CosineLRScheduler._get_lr`` from ``timm/scheduler/cosine_lr.py``. timm's
  ``AdamP``/``SGDP`` are copies of the official ones (``timm/optim/adamp.py``
  says so), which run here.
* Keras 3.16.0 ``CosineDecayRestarts.__call__``,
  ``keras/src/optimizers/schedules/learning_rate_schedule.py``.
* MosaicML Composer ``DecoupledAdamW.adamw``,
  ``composer/optim/decoupled_weight_decay.py`` (commit 6405188).
* big_vision ``make``, ``big_vision/optax.py`` (commit 0127fb6), and axlearn
  ``adamw_decoupled_optimizer``, ``axlearn/common/optimizers.py`` (commit
  34aed43): both are optax chains, rebuilt here from optax's own transforms.

Everything on torch's side (torch, the official ``adamp``, timm's factory and
SGDP fix, Composer's DecoupledAdamW, torch's schedulers) lives in
``_peer_runs.py`` and is asked for through the ``peer`` fixture: by default
the comparisons read what it returned from ``tests/fixtures/peers.npz``,
recorded by ``scripts/record_peer_fixtures.sh``, and need neither torch nor
``adamp``; under ``--extended`` and when recording (``--record-peers``) the
peers run live (the ``peers`` extra: ``torch>=2.5,<2.16``, ``adamp``), and
under ``--extended`` must reproduce their fixture. The transcriptions that
need no torch (timm's ``CosineLRScheduler``, Keras, big_vision, axlearn) are
here and run live in every run, as optax does.

Trajectories are compared with ``_reference.assert_trajectories_match``
(2e-5 relative, per leaf and step) on the test problem of ``_reference.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import (
  DECAYED,
  MASK,
  assert_trajectories_match,
  flax_to_torch,
  init_params,
  loss_jax,
  make_targets,
  max_relative_error,
  run_ours,
  sgdr_table,
  table_schedule,
  torch_to_flax,
)

import decoupled_optax as dopt

STEPS = 40
ETA = sgdr_table(STEPS + 1, first_period=10, period_mult=2)
LR = 1e-2
SGD_LR = 0.05
WD = 0.5  # a PyTorch-convention decay; the paper's lambda is LR * WD


def _groups(optimizer_cls, weight_decay: float, **kwargs):
  """run_torch's two param groups (decayed, not decayed) for ``optimizer_cls``."""

  def make(groups):
    return optimizer_cls(
      [
        {"params": g["params"], "decay": g["decay"], "weight_decay": weight_decay * g["decay"]}
        for g in groups
      ],
      **kwargs,
    )

  return make


# ---------------------------------------------------------------- transcriptions that need no torch


def timm_cosine_lr(t: int, *, base, t_initial, lr_min=0.0, cycle_mul=1.0, cycle_decay=1.0,
                   cycle_limit=1, warmup_t=0, warmup_lr_init=0.0, warmup_prefix=False):  # fmt: skip
  """timm/scheduler/cosine_lr.py ``CosineLRScheduler._get_lr`` (k_decay=1, no noise)."""
  if t < warmup_t:
    return warmup_lr_init + t * (base - warmup_lr_init) / warmup_t
  if warmup_prefix:
    t = t - warmup_t
  if cycle_mul != 1:
    i = math.floor(math.log(1 - t / t_initial * (1 - cycle_mul), cycle_mul))
    t_i = cycle_mul**i * t_initial
    t_curr = t - (1 - cycle_mul**i) / (1 - cycle_mul) * t_initial
  else:
    i = t // t_initial
    t_i = t_initial
    t_curr = t - (t_initial * i)
  lr_max = base * cycle_decay**i
  if i < cycle_limit:
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_curr / t_i))
  return lr_min


def keras_cosine_decay_restarts(step, *, initial_learning_rate, first_decay_steps, t_mul=2.0,
                                m_mul=1.0, alpha=0.0):  # fmt: skip
  """Keras 3.16.0 ``CosineDecayRestarts.__call__`` in NumPy float64."""
  completed_fraction = step / first_decay_steps
  if t_mul == 1.0:
    i_restart = np.floor(completed_fraction)
    completed_fraction -= i_restart
  else:
    i_restart = np.floor(np.log(1.0 - completed_fraction * (1.0 - t_mul)) / np.log(t_mul))
    sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
    completed_fraction = (completed_fraction - sum_r) / t_mul**i_restart
  m_fac = m_mul**i_restart
  cosine_decayed = 0.5 * m_fac * (1.0 + np.cos(np.pi * completed_fraction))
  decayed = (1 - alpha) * cosine_decayed + alpha
  return initial_learning_rate * decayed


# ---------------------------------------------------------------- runners


def _to_torch_layout(params):
  return {n: jnp.asarray(flax_to_torch(n, np.asarray(p))) for n, p in params.items()}


def _loss_on_torch_layout(params_t, targets):
  flax = {
    "conv": jnp.transpose(params_t["conv"], (2, 3, 1, 0)),  # OIHW -> HWIO
    "dense": params_t["dense"].T,
    "kernel": params_t["kernel"].T,
    "bias": params_t["bias"],
    "scale": params_t["scale"],
  }
  return loss_jax(flax, targets)


def run_ours_torch_layout(tx, steps: int):
  """Our trajectory with the params kept in PyTorch layout, returned in Flax layout."""
  params = _to_torch_layout(init_params())
  targets = make_targets(steps)

  @jax.jit
  def step(params, state, targets):
    grads = jax.grad(_loss_on_torch_layout)(params, targets)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  back = lambda p: {n: torch_to_flax(n, np.asarray(x)) for n, x in p.items()}
  trajectory = [back(params)]
  for t in range(steps):
    params, state = step(params, state, targets[t])
    trajectory.append(back(params))
  return trajectory


# ---------------------------------------------------------------- torch.optim


@pytest.mark.parametrize("form", ["torch_convention", "converted"])
def test_torch_adamw(form, peer):
  """``torch.optim.AdamW(p, lr, betas, eps, weight_decay=wd)``."""
  if form == "torch_convention":
    tx = dopt.adamw(LR, WD, b1=0.8, b2=0.99, eps=1e-7, mask=MASK, weight_decay_convention="torch")
  else:
    tx = dopt.adamw(
      LR, LR * WD, b1=0.8, b2=0.99, eps=1e-7, mask=MASK, weight_decay_convention="paper"
    )
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.torch.optim.AdamW, WD, lr=LR, betas=(0.8, 0.99), eps=1e-7),
      STEPS,
      decayed=DECAYED,
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_with_decoupled_decay(nesterov, peer):
  """``torch.optim.SGD(p, lr, momentum=mu, nesterov=n)`` + decoupled ``wd`` (p *= 1 - lr * wd)."""
  tx = dopt.sgdw(SGD_LR, 0.9, WD, nesterov=nesterov, mask=MASK, weight_decay_convention="torch")
  reference = peer(
    lambda live: live.run_torch(
      lambda groups: live.torch.optim.SGD(groups, lr=SGD_LR, momentum=0.9, nesterov=nesterov),
      STEPS,
      decayed=DECAYED,
      before_step=live.decoupled_decay_hook(WD),
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


# ---------------------------------------------------------------- torch schedulers


T_0, T_MULT, ETA_MIN = 3, 2, 1e-3  # ETA_MIN is torch's absolute floor


def _torch_warm_restarts(eta_min=ETA_MIN, steps_per_scheduler_step=1):
  """The producer: torch.optim.AdamW with ``CosineAnnealingWarmRestarts(T_0, T_MULT, eta_min)``."""
  return lambda live: live.run_torch(
    _groups(live.torch.optim.AdamW, WD, lr=LR),
    STEPS,
    decayed=DECAYED,
    make_scheduler=live.warm_restarts(T_0, T_MULT, eta_min),
    steps_per_scheduler_step=steps_per_scheduler_step,
  )


def test_cosine_annealing_warm_restarts_stepped_per_batch(peer):
  """``scheduler.step()`` after every batch: T_0 counts updates, as ``first_period`` does."""
  sched = dopt.cosine_warm_restart_schedule(
    1.0, first_period=T_0, period_mult=T_MULT, min_value=ETA_MIN / LR
  )
  tx = dopt.adamw(LR, LR * WD, schedule=sched, mask=MASK, weight_decay_convention="paper")
  reference = peer(_torch_warm_restarts())
  assert_trajectories_match(run_ours(tx, STEPS), reference)


STEPS_PER_EPOCH = 4


def per_epoch(schedule, steps_per_epoch: int):
  """A schedule of the epoch, ``count // steps_per_epoch``: torch's per-epoch ``step()``."""
  return lambda count: schedule(count // steps_per_epoch)


def test_cosine_annealing_warm_restarts_stepped_per_epoch(peer):
  """``scheduler.step()`` after every epoch: the count must be divided by the steps per epoch."""
  sched = dopt.cosine_warm_restart_schedule(
    1.0, first_period=T_0, period_mult=T_MULT, min_value=ETA_MIN / LR
  )
  tx = dopt.adamw(
    LR,
    LR * WD,
    schedule=per_epoch(sched, STEPS_PER_EPOCH),
    mask=MASK,
    weight_decay_convention="paper",
  )
  reference = peer(_torch_warm_restarts(steps_per_scheduler_step=STEPS_PER_EPOCH))
  assert_trajectories_match(run_ours(tx, STEPS), reference)

  # first_period=T_0 taken literally counts updates, not epochs: the restarts come 4x too early.
  literal = dopt.adamw(LR, LR * WD, schedule=sched, mask=MASK, weight_decay_convention="paper")
  assert max_relative_error(run_ours(literal, STEPS), reference)[0] > 1e-3
  # T_0 * steps_per_epoch gives SGDR with T_cur updated every batch: also not torch's per-epoch.
  per_batch = dopt.cosine_warm_restart_schedule(
    1.0, first_period=T_0 * STEPS_PER_EPOCH, period_mult=T_MULT, min_value=ETA_MIN / LR
  )
  smooth = dopt.adamw(LR, LR * WD, schedule=per_batch, mask=MASK, weight_decay_convention="paper")
  assert max_relative_error(run_ours(smooth, STEPS), reference)[0] > 1e-4


def test_learning_rate_as_schedule_warns_and_multiplies_by_lr_twice(peer):
  """The trap: ``cosine_warm_restart_schedule(lr, ...)`` passed as ``schedule=``."""
  with pytest.warns(dopt.ScheduleConventionWarning, match="equals learning_rate"):
    wrong = dopt.adamw(
      LR,
      LR * WD,
      schedule=dopt.cosine_warm_restart_schedule(LR, first_period=T_0, period_mult=T_MULT),
      mask=MASK,
      weight_decay_convention="paper",
    )
  reference = peer(_torch_warm_restarts(eta_min=0.0))
  ours = run_ours(wrong, STEPS)
  assert max_relative_error(ours, reference)[0] > 1e-2
  # The first step moved the non-decayed bias LR times less than torch's (Adam's step is ~lr).
  ours_step = np.abs(ours[1]["bias"] - ours[0]["bias"]).max()
  torch_step = np.abs(reference[1]["bias"] - reference[0]["bias"]).max()
  np.testing.assert_allclose(ours_step / torch_step, LR, rtol=1e-3)


def test_learning_rate_schedule_in_the_torch_convention(peer):
  """The same torch run, with the schedule as ``learning_rate`` (PyTorch's convention)."""
  lr_sched = dopt.cosine_warm_restart_schedule(
    LR, first_period=T_0, period_mult=T_MULT, min_value=ETA_MIN
  )
  tx = dopt.adamw(lr_sched, WD, mask=MASK, weight_decay_convention="torch")
  reference = peer(_torch_warm_restarts())
  assert_trajectories_match(run_ours(tx, STEPS), reference)


# ---------------------------------------------------------------- the official adamp


@pytest.mark.parametrize("nesterov", [False, True])
def test_official_adamp(nesterov, peer):
  """``adamp.AdamP(p, lr, betas, eps, weight_decay=wd, delta, wd_ratio, nesterov)``."""
  kwargs = dict(betas=(0.85, 0.995), eps=1e-7, delta=0.12, wd_ratio=0.2, nesterov=nesterov)
  tx = dopt.adamp(
    LR, WD, b1=0.85, b2=0.995, eps=1e-7, delta=0.12, wd_ratio=0.2, nesterov=nesterov,
    mask=MASK, weight_decay_convention="torch",
  )  # fmt: skip
  reference = peer(
    lambda live: live.run_torch(_groups(live.AdamP, WD, lr=LR, **kwargs), STEPS, decayed=DECAYED)
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_official_sgdp_nesterov(peer):
  """``adamp.SGDP(p, lr, momentum=mu, weight_decay=wd, nesterov=True, ...)``, 1/(1-mu) kept."""
  tx = dopt.sgdp(SGD_LR, 0.9, WD, nesterov=True, mask=MASK, weight_decay_convention="torch")
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.SGDP, WD, lr=SGD_LR, momentum=0.9, nesterov=True), STEPS, decayed=DECAYED
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_official_sgdp_without_nesterov_is_timms_fixed_sgdp(peer):
  """Without Nesterov the official SGDP projects its buffer in place; ``sgdp`` does not (timm's fix)."""
  tx = dopt.sgdp(SGD_LR, 0.9, WD, mask=MASK, weight_decay_convention="torch")
  fixed = peer(
    lambda live: live.run_torch(
      _groups(live.TimmSGDP, WD, lr=SGD_LR, momentum=0.9), STEPS, decayed=DECAYED
    )
  )
  assert_trajectories_match(run_ours(tx, STEPS), fixed)


# ---------------------------------------------------------------- timm


def _timm_run(opt: str, lr: float):
  """The producer: timm ``create_optimizer_v2(model, opt, lr, weight_decay=WD)``, its own groups."""
  return lambda live: live.timm_run(opt, lr, WD, STEPS)


# timm's default groups (no decay on 1-D params and on biases of any rank) are what
# dopt.weight_decay_mask decides by what each leaf is; the porting rows name it.
timm_mask = dopt.weight_decay_mask


def test_timm_adamp_factory_defaults_and_param_groups(peer):
  """``timm.optim.create_optimizer_v2(model, 'adamp', lr, weight_decay)``."""
  reference = peer(_timm_run("adamp", LR))
  tx = dopt.adamp(
    LR, WD, wd_ratio=0.01, nesterov=True, mask=timm_mask, weight_decay_convention="torch"
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)
  # Without the mask (timm's parameter groups) the port drifts away from timm.
  literal = dopt.adamp(LR, WD, wd_ratio=0.01, nesterov=True, weight_decay_convention="torch")
  assert max_relative_error(run_ours(literal, STEPS), reference)[0] > 1e-4


def test_timm_adamp_on_pytorch_layout_needs_channel_axis_0(peer):
  reference = peer(_timm_run("adamp", LR))
  kwargs = dict(wd_ratio=0.01, nesterov=True, mask=timm_mask, weight_decay_convention="torch")
  ours = run_ours_torch_layout(dopt.adamp(LR, WD, channel_axis=0, **kwargs), STEPS)
  assert_trajectories_match(ours, reference)
  flax_axis = run_ours_torch_layout(dopt.adamp(LR, WD, **kwargs), STEPS)
  assert max_relative_error(flax_axis, reference)[0] > 1e-4


def test_timm_sgdp_factory_defaults_and_param_groups(peer):
  """``timm.optim.create_optimizer_v2(model, 'sgdp', lr, weight_decay)``: momentum 0.9, Nesterov."""
  reference = peer(_timm_run("sgdp", SGD_LR))
  tx = dopt.sgdp(SGD_LR, 0.9, WD, nesterov=True, mask=timm_mask, weight_decay_convention="torch")
  assert_trajectories_match(run_ours(tx, STEPS), reference)


@pytest.mark.parametrize("warmup", [0, 3])
def test_timm_cosine_lr_cycle_decay_is_restart_decay(warmup):
  """timm ``CosineLRScheduler(t_initial, lr_min, cycle_mul, cycle_decay, warmup_prefix=True)``."""
  base, lr_min = 0.1, 0.002
  ours = dopt.cosine_warm_restart_schedule(
    base, first_period=5, period_mult=2, min_value=lr_min, restart_decay=0.5,
    warmup_steps=warmup, warmup_init_value=0.001,
  )  # fmt: skip
  steps = np.arange(80)
  theirs = [
    timm_cosine_lr(
      int(t),
      base=base,
      t_initial=5,
      lr_min=lr_min,
      cycle_mul=2.0,
      cycle_decay=0.5,
      cycle_limit=100,
      warmup_t=warmup,
      warmup_lr_init=0.001,
      warmup_prefix=True,
    )  # fmt: skip
    for t in steps
  ]
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(steps))), theirs, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("cycle_mul", [1, 2])
@pytest.mark.parametrize("warmup", [0, 4])
def test_timm_cycle_limit_is_cycle_limit(cycle_mul, warmup):
  """timm ``CosineLRScheduler(..., cycle_limit=3)``: three periods, then ``lr_min`` for good."""
  base, lr_min = 0.1, 0.002
  ours = dopt.cosine_warm_restart_schedule(
    base, first_period=5, period_mult=cycle_mul, min_value=lr_min, restart_decay=0.5,
    warmup_steps=warmup, warmup_init_value=0.001, cycle_limit=3,
  )  # fmt: skip
  steps = np.arange(60 if cycle_mul == 2 else 30)
  theirs = [
    timm_cosine_lr(
      int(t),
      base=base,
      t_initial=5,
      lr_min=lr_min,
      cycle_mul=float(cycle_mul),
      cycle_decay=0.5,
      cycle_limit=3,
      warmup_t=warmup,
      warmup_lr_init=0.001,
      warmup_prefix=True,
    )  # fmt: skip
    for t in steps
  ]
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(steps))), theirs, rtol=2e-6, atol=1e-9)
  end = warmup + (15 if cycle_mul == 1 else 35)  # the third period ends here
  assert float(ours(end - 1)) > lr_min and float(ours(end)) == np.float32(lr_min)


def test_cycle_limit_ends_on_the_exact_step_where_timms_float_log_does_not():
  # t_initial=1, cycle_mul=3: periods end at 1, 4, 13, 40, 121. timm's float log puts t=121 in
  # the fourth period (lr 0 there, REFERENCE.md); with cycle_limit=5 the schedule must hold its
  # last period's cosine until 120 and reach the floor exactly at 121.
  ours = dopt.cosine_warm_restart_schedule(1.0, first_period=1, period_mult=3, min_value=0.25,
                                           cycle_limit=5)  # fmt: skip
  assert float(ours(120)) > 0.25 and float(ours(121)) == 0.25
  assert float(ours(2**31 - 1)) == 0.25


def test_keras_m_mul_is_restart_decay_only_without_alpha():
  """Keras ``CosineDecayRestarts(init, first_decay_steps, t_mul, m_mul, alpha)``."""
  init, steps = 0.1, np.arange(1, 75)
  restarts = {5, 15, 35}  # Keras's float log may put a restart step in the previous cycle
  steps = np.array([t for t in steps if t not in restarts])
  ours = dopt.cosine_warm_restart_schedule(init, first_period=5, period_mult=2, restart_decay=0.5)
  keras = keras_cosine_decay_restarts(
    steps.astype(np.float64), initial_learning_rate=init, first_decay_steps=5, m_mul=0.5
  )
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(steps))), keras, rtol=2e-6, atol=1e-9)

  # With alpha > 0 Keras decays the amplitude above its floor: equal in the first cycle only.
  alpha = 0.2
  ours = dopt.cosine_warm_restart_schedule(
    init, first_period=5, period_mult=2, min_value=alpha * init, restart_decay=0.5
  )
  keras = keras_cosine_decay_restarts(
    steps.astype(np.float64), initial_learning_rate=init, first_decay_steps=5, m_mul=0.5,
    alpha=alpha,
  )  # fmt: skip
  values = np.asarray(ours(jnp.asarray(steps)))
  first = steps < 5
  np.testing.assert_allclose(values[first], keras[first], rtol=2e-6)
  assert np.abs(values[~first] - keras[~first]).max() > 1e-3


# ---------------------------------------------------------------- optax


def test_optax_adamw():
  """``optax.adamw(lr, b1, b2, eps, weight_decay=wd, mask=m)``."""
  theirs = optax.adamw(LR, b1=0.8, b2=0.99, eps=1e-7, weight_decay=WD, mask=MASK)
  ours = dopt.adamw(LR, WD, b1=0.8, b2=0.99, eps=1e-7, mask=MASK, weight_decay_convention="torch")
  assert_trajectories_match(run_ours(ours, STEPS), run_ours(theirs, STEPS))


def test_optax_sgdr_as_learning_rate():
  """An optax learning-rate schedule, in PyTorch's convention: ``learning_rate=`` may be one."""
  lr = optax.cosine_decay_schedule(LR, decay_steps=STEPS, alpha=0.1)
  theirs = optax.adamw(lr, weight_decay=WD, mask=MASK)
  ours = dopt.adamw(lr, WD, mask=MASK, weight_decay_convention="torch")
  assert_trajectories_match(run_ours(ours, STEPS), run_ours(theirs, STEPS))


# ---------------------------------------------------------------- the paper's convention


def test_composer_decoupled_adamw(peer):
  """Composer ``DecoupledAdamW(p, lr, weight_decay=lam)`` with a scheduler: the paper's lambda."""
  lam = LR * WD
  reference = peer(
    lambda live: live.run_torch(
      _groups(live.ComposerDecoupledAdamW, lam, lr=LR), STEPS, eta=ETA, decayed=DECAYED
    )
  )
  tx = dopt.adamw(LR, lam, schedule=table_schedule(ETA), mask=MASK, weight_decay_convention="paper")
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def big_vision_adam(lr: float, wd: float, schedule, mask):
  """big_vision/optax.py ``make``: chain(adam, scale(lr), add_decayed_weights(wd), schedule, -1)."""
  return optax.chain(
    optax.scale_by_adam(),
    optax.scale(lr),
    optax.add_decayed_weights(wd, mask),
    optax.scale_by_schedule(schedule),
    optax.scale(-1.0),
  )


def axlearn_adamw_decoupled(lr: float, wd: float, update_schedule, per_param_scale):
  """axlearn ``adamw_decoupled_optimizer``: adam, lr, decay * per-param scale, update_schedule, -1."""

  def decay(updates, params):
    scales = per_param_scale(params)
    return jax.tree.map(lambda u, p, s: u + wd * s * p, updates, params, scales)

  add = optax.GradientTransformation(
    lambda params: optax.EmptyState(), lambda u, s, p=None: (decay(u, p), s)
  )
  return optax.chain(
    optax.scale_by_adam(),
    optax.scale_by_schedule(lambda count: lr),
    add,
    optax.scale_by_schedule(update_schedule),
    optax.scale(-1.0),
  )


@pytest.mark.parametrize("library", ["big_vision", "axlearn"])
def test_big_vision_and_axlearn_use_the_papers_convention(library):
  lam = LR * WD
  sched = table_schedule(ETA)
  if library == "big_vision":
    theirs = big_vision_adam(LR, lam, sched, MASK)
  else:
    theirs = axlearn_adamw_decoupled(LR, lam, sched, lambda p: {n: float(MASK[n]) for n in p})
  ours = dopt.adamw(LR, lam, schedule=sched, mask=MASK, weight_decay_convention="paper")
  assert_trajectories_match(run_ours(ours, STEPS), run_ours(theirs, STEPS))
