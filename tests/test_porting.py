"""Every row of the porting guide (docs/porting.md), run against its peer.

Peers that install here run as they are: torch 2.5-2.14 (``torch.optim.AdamW``,
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
import torch
from _reference import (
  DECAYED,
  MASK,
  NAMES,
  assert_trajectories_match,
  decoupled_decay_hook,
  flax_to_torch,
  init_params,
  loss_jax,
  loss_torch,
  make_targets,
  max_relative_error,
  run_ours,
  run_torch,
  sgdr_table,
  table_schedule,
  torch_to_flax,
)
from adamp import SGDP, AdamP

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


# ---------------------------------------------------------------- timm, transcribed


def timm_param_groups_weight_decay(named_params, weight_decay: float):
  """timm/optim/_param_groups.py ``param_groups_weight_decay`` (weight_decay_exclude_1d=True)."""
  decay, no_decay = [], []
  for name, param in named_params:
    if param.ndim <= 1 or name.endswith(".bias"):
      no_decay.append(param)
    else:
      decay.append(param)
  return [
    {"params": no_decay, "weight_decay": 0.0, "decay": False},
    {"params": decay, "weight_decay": weight_decay, "decay": True},
  ]


def timm_create_optimizer_v2(named_params, opt: str, lr: float, weight_decay: float):
  """timm/optim/_optim_factory.py ``create_optimizer_v2`` for 'adamp' and 'sgdp'.

  ``filter_bias_and_bn=True`` (the default) builds the groups above; the
  registry's defaults are ``adamp: wd_ratio=0.01, nesterov=True`` and
  ``sgdp: nesterov=True``, and ``momentum=0.9`` is passed to optimizers that
  have one.
  """
  groups = timm_param_groups_weight_decay(named_params, weight_decay)
  if opt == "adamp":
    return AdamP(groups, lr=lr, weight_decay=weight_decay, wd_ratio=0.01, nesterov=True)
  if opt == "sgdp":
    return TimmSGDP(groups, lr=lr, weight_decay=weight_decay, momentum=0.9, nesterov=True)
  raise ValueError(opt)


class TimmSGDP(SGDP):
  """timm/optim/sgdp.py: the official SGDP, with the momentum buffer cloned before the projection."""

  def _projection(self, p, grad, perturb, delta, wd_ratio, eps):
    return super()._projection(p, grad, perturb.clone(), delta, wd_ratio, eps)


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


class ComposerDecoupledAdamW(torch.optim.AdamW):
  """Composer's DecoupledAdamW: the step of ``DecoupledAdamW.adamw``, transcribed.

  The decay is ``p *= 1 - (lr / initial_lr) * weight_decay`` (the paper's
  convention, eta_t = lr_t / initial_lr), then Adam's step with ``lr``.
  """

  def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-5):
    super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for group in self.param_groups:
      group["initial_lr"] = group["lr"]

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      beta1, beta2 = group["betas"]
      lr, initial_lr, weight_decay = group["lr"], group["initial_lr"], group["weight_decay"]
      for p in group["params"]:
        state = self.state[p]
        if not state:
          state["step"] = 0
          state["exp_avg"] = torch.zeros_like(p)
          state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay != 0:
          decay_factor = (lr / initial_lr) if initial_lr else 1.0
          p.mul_(1 - decay_factor * weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


# ---------------------------------------------------------------- runners


def run_torch_scheduled(make_optimizer, make_scheduler, steps: int, steps_per_scheduler_step=1):
  """A torch trajectory with a real torch scheduler, stepped every ``steps_per_scheduler_step``."""
  params = init_params()
  tensors = {
    n: torch.tensor(flax_to_torch(n, np.asarray(p)), requires_grad=True) for n, p in params.items()
  }
  groups = [
    {"params": [tensors[n] for n in NAMES if n in DECAYED], "decay": True},
    {"params": [tensors[n] for n in NAMES if n not in DECAYED], "decay": False},
  ]
  optimizer = make_optimizer(groups)
  scheduler = make_scheduler(optimizer)
  targets = make_targets(steps)
  snapshot = lambda: {n: torch_to_flax(n, t.detach().numpy().copy()) for n, t in tensors.items()}
  trajectory = [snapshot()]
  for t in range(steps):
    optimizer.zero_grad()
    loss_torch(tensors, targets[t]).backward()
    optimizer.step()
    if (t + 1) % steps_per_scheduler_step == 0:
      scheduler.step()
    trajectory.append(snapshot())
  return trajectory


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
def test_torch_adamw(form):
  """``torch.optim.AdamW(p, lr, betas, eps, weight_decay=wd)``."""
  if form == "torch_convention":
    tx = dopt.adamw(LR, WD, b1=0.8, b2=0.99, eps=1e-7, mask=MASK, weight_decay_convention="torch")
  else:
    tx = dopt.adamw(
      LR, LR * WD, b1=0.8, b2=0.99, eps=1e-7, mask=MASK, weight_decay_convention="paper"
    )
  reference, _, _ = run_torch(
    _groups(torch.optim.AdamW, WD, lr=LR, betas=(0.8, 0.99), eps=1e-7), STEPS, decayed=DECAYED
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_with_decoupled_decay(nesterov):
  """``torch.optim.SGD(p, lr, momentum=mu, nesterov=n)`` + decoupled ``wd`` (p *= 1 - lr * wd)."""
  tx = dopt.sgdw(SGD_LR, 0.9, WD, nesterov=nesterov, mask=MASK, weight_decay_convention="torch")
  reference, _, _ = run_torch(
    lambda groups: torch.optim.SGD(groups, lr=SGD_LR, momentum=0.9, nesterov=nesterov),
    STEPS,
    decayed=DECAYED,
    before_step=decoupled_decay_hook(WD),
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


# ---------------------------------------------------------------- torch schedulers


T_0, T_MULT, ETA_MIN = 3, 2, 1e-3  # ETA_MIN is torch's absolute floor


def _torch_warm_restarts(optimizer, t_0=T_0):
  return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
    optimizer, T_0=t_0, T_mult=T_MULT, eta_min=ETA_MIN
  )


def _torch_adamw_groups():
  return _groups(torch.optim.AdamW, WD, lr=LR)


def test_cosine_annealing_warm_restarts_stepped_per_batch():
  """``scheduler.step()`` after every batch: T_0 counts updates, as ``first_period`` does."""
  sched = dopt.cosine_warm_restart_schedule(
    1.0, first_period=T_0, period_mult=T_MULT, min_value=ETA_MIN / LR
  )
  tx = dopt.adamw(LR, LR * WD, schedule=sched, mask=MASK, weight_decay_convention="paper")
  reference = run_torch_scheduled(_torch_adamw_groups(), _torch_warm_restarts, STEPS)
  assert_trajectories_match(run_ours(tx, STEPS), reference)


STEPS_PER_EPOCH = 4


def per_epoch(schedule, steps_per_epoch: int):
  """A schedule of the epoch, ``count // steps_per_epoch``: torch's per-epoch ``step()``."""
  return lambda count: schedule(count // steps_per_epoch)


def test_cosine_annealing_warm_restarts_stepped_per_epoch():
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
  reference = run_torch_scheduled(
    _torch_adamw_groups(), _torch_warm_restarts, STEPS, steps_per_scheduler_step=STEPS_PER_EPOCH
  )
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


def test_learning_rate_as_schedule_warns_and_multiplies_by_lr_twice():
  """The trap: ``cosine_warm_restart_schedule(lr, ...)`` passed as ``schedule=``."""
  with pytest.warns(dopt.ScheduleConventionWarning, match="equals learning_rate"):
    wrong = dopt.adamw(
      LR,
      LR * WD,
      schedule=dopt.cosine_warm_restart_schedule(LR, first_period=T_0, period_mult=T_MULT),
      mask=MASK,
      weight_decay_convention="paper",
    )
  reference = run_torch_scheduled(
    _torch_adamw_groups(),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=T_0, T_mult=T_MULT),
    STEPS,
  )
  ours = run_ours(wrong, STEPS)
  assert max_relative_error(ours, reference)[0] > 1e-2
  # The first step moved the non-decayed bias LR times less than torch's (Adam's step is ~lr).
  ours_step = np.abs(ours[1]["bias"] - ours[0]["bias"]).max()
  torch_step = np.abs(reference[1]["bias"] - reference[0]["bias"]).max()
  np.testing.assert_allclose(ours_step / torch_step, LR, rtol=1e-3)


def test_learning_rate_schedule_in_the_torch_convention():
  """The same torch run, with the schedule as ``learning_rate`` (PyTorch's convention)."""
  lr_sched = dopt.cosine_warm_restart_schedule(
    LR, first_period=T_0, period_mult=T_MULT, min_value=ETA_MIN
  )
  tx = dopt.adamw(lr_sched, WD, mask=MASK, weight_decay_convention="torch")
  reference = run_torch_scheduled(_torch_adamw_groups(), _torch_warm_restarts, STEPS)
  assert_trajectories_match(run_ours(tx, STEPS), reference)


# ---------------------------------------------------------------- the official adamp


@pytest.mark.parametrize("nesterov", [False, True])
def test_official_adamp(nesterov):
  """``adamp.AdamP(p, lr, betas, eps, weight_decay=wd, delta, wd_ratio, nesterov)``."""
  kwargs = dict(betas=(0.85, 0.995), eps=1e-7, delta=0.12, wd_ratio=0.2, nesterov=nesterov)
  tx = dopt.adamp(
    LR, WD, b1=0.85, b2=0.995, eps=1e-7, delta=0.12, wd_ratio=0.2, nesterov=nesterov,
    mask=MASK, weight_decay_convention="torch",
  )  # fmt: skip
  reference, _, _ = run_torch(_groups(AdamP, WD, lr=LR, **kwargs), STEPS, decayed=DECAYED)
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_official_sgdp_nesterov():
  """``adamp.SGDP(p, lr, momentum=mu, weight_decay=wd, nesterov=True, ...)``, 1/(1-mu) kept."""
  tx = dopt.sgdp(SGD_LR, 0.9, WD, nesterov=True, mask=MASK, weight_decay_convention="torch")
  reference, _, _ = run_torch(
    _groups(SGDP, WD, lr=SGD_LR, momentum=0.9, nesterov=True), STEPS, decayed=DECAYED
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)


def test_official_sgdp_without_nesterov_is_timms_fixed_sgdp():
  """Without Nesterov the official SGDP projects its buffer in place; ``sgdp`` does not (timm's fix)."""
  tx = dopt.sgdp(SGD_LR, 0.9, WD, mask=MASK, weight_decay_convention="torch")
  fixed, _, _ = run_torch(_groups(TimmSGDP, WD, lr=SGD_LR, momentum=0.9), STEPS, decayed=DECAYED)
  assert_trajectories_match(run_ours(tx, STEPS), fixed)


# ---------------------------------------------------------------- timm


def _timm_run(opt: str, lr: float):
  """run_torch hands over one group with every leaf (in NAMES order); timm makes its own groups."""

  def make(groups):
    (group,) = groups
    # named_parameters() of a module that holds the leaves under their names.
    named = list(zip(NAMES, group["params"], strict=True))
    return timm_create_optimizer_v2(named, opt, lr=lr, weight_decay=WD)

  return run_torch(make, STEPS, decayed=NAMES)[0]


# timm's default groups (no decay on 1-D params and on biases of any rank) are what
# dopt.weight_decay_mask decides by what each leaf is; the porting rows name it.
timm_mask = dopt.weight_decay_mask


def test_timm_adamp_factory_defaults_and_param_groups():
  """``timm.optim.create_optimizer_v2(model, 'adamp', lr, weight_decay)``."""
  reference = _timm_run("adamp", LR)
  tx = dopt.adamp(
    LR, WD, wd_ratio=0.01, nesterov=True, mask=timm_mask, weight_decay_convention="torch"
  )
  assert_trajectories_match(run_ours(tx, STEPS), reference)
  # Without the mask (timm's parameter groups) the port drifts away from timm.
  literal = dopt.adamp(LR, WD, wd_ratio=0.01, nesterov=True, weight_decay_convention="torch")
  assert max_relative_error(run_ours(literal, STEPS), reference)[0] > 1e-4


def test_timm_adamp_on_pytorch_layout_needs_channel_axis_0():
  reference = _timm_run("adamp", LR)
  kwargs = dict(wd_ratio=0.01, nesterov=True, mask=timm_mask, weight_decay_convention="torch")
  ours = run_ours_torch_layout(dopt.adamp(LR, WD, channel_axis=0, **kwargs), STEPS)
  assert_trajectories_match(ours, reference)
  flax_axis = run_ours_torch_layout(dopt.adamp(LR, WD, **kwargs), STEPS)
  assert max_relative_error(flax_axis, reference)[0] > 1e-4


def test_timm_sgdp_factory_defaults_and_param_groups():
  """``timm.optim.create_optimizer_v2(model, 'sgdp', lr, weight_decay)``: momentum 0.9, Nesterov."""
  reference = _timm_run("sgdp", SGD_LR)
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


def test_composer_decoupled_adamw():
  """Composer ``DecoupledAdamW(p, lr, weight_decay=lam)`` with a scheduler: the paper's lambda."""
  lam = LR * WD
  reference, _, _ = run_torch(
    _groups(ComposerDecoupledAdamW, lam, lr=LR), STEPS, eta=ETA, decayed=DECAYED
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


@pytest.mark.parametrize("peer", ["big_vision", "axlearn"])
def test_big_vision_and_axlearn_use_the_papers_convention(peer):
  lam = LR * WD
  sched = table_schedule(ETA)
  if peer == "big_vision":
    theirs = big_vision_adam(LR, lam, sched, MASK)
  else:
    theirs = axlearn_adamw_decoupled(LR, lam, sched, lambda p: {n: float(MASK[n]) for n in p})
  ours = dopt.adamw(LR, lam, schedule=sched, mask=MASK, weight_decay_convention="paper")
  assert_trajectories_match(run_ours(ours, STEPS), run_ours(theirs, STEPS))
