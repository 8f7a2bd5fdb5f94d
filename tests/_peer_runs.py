"""The live peers: torch, the official ``adamp`` and the authors' sgd.lua, on ``_reference``'s problem.

Only the ``peer`` fixture imports this module (``_peers.py``), and only when
the peers run live (``--extended``, ``--record-peers``); by default the tests
read what these functions returned from ``tests/fixtures/peers.npz``, and
need neither torch nor ``adamp``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from _reference import NAMES, flax_to_torch, init_params, make_targets, shared_loss, torch_to_flax
from adamp import SGDP, AdamP

__all__ = ["AdamP", "SGDP", "torch"]


def loss_torch(params_torch, targets):
  """The same loss on PyTorch layouts, converted to Flax layouts inside autograd."""
  params = {
    "conv": params_torch["conv"].permute(2, 3, 1, 0),  # OIHW -> HWIO
    "dense": params_torch["dense"].T,  # (out, in) -> (in, out)
    "kernel": params_torch["kernel"].T,
    "bias": params_torch["bias"],
    "scale": params_torch["scale"],
  }
  targets = {k: torch.from_numpy(v) for k, v in targets.items()}
  return shared_loss(
    params,
    targets,
    torch.sqrt,
    torch.sum,
    lambda w: torch.sum(w * w, dim=(0, 1, 2), keepdim=True),
  )


def run_torch(
  make_optimizer: Callable,
  steps: int,
  eta: Sequence[float] | None = None,
  decayed: Sequence[str] = NAMES,
  before_step: Callable | None = None,
  params=None,
  buffer: str | None = None,
  make_scheduler: Callable | None = None,
  steps_per_scheduler_step: int = 1,
):
  """Trajectory of a torch optimizer on PyTorch layouts, returned in Flax layout.

  ``make_optimizer(groups)`` gets two param groups, the decayed leaves and
  the others (the torch way to mask weight decay); it must set
  ``weight_decay=0`` on the second. ``eta`` is applied with LambdaLR, so
  ``lr_t = lr * eta[t]``; ``make_scheduler(optimizer)`` builds any other torch
  scheduler instead, stepped every ``steps_per_scheduler_step`` updates (> 1 is
  torch's per-epoch ``step()``). ``before_step(optimizer)`` runs after the
  gradients are computed and before ``optimizer.step()``.
  """
  params = init_params() if params is None else params
  tensors = {
    name: torch.tensor(flax_to_torch(name, np.asarray(p)), requires_grad=True)
    for name, p in params.items()
  }
  groups = [
    {"params": [tensors[n] for n in NAMES if n in decayed], "decay": True},
    {"params": [tensors[n] for n in NAMES if n not in decayed], "decay": False},
  ]
  optimizer = make_optimizer([g for g in groups if g["params"]])
  if eta is not None:
    make_scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: eta[t])  # noqa: E731
  scheduler = None if make_scheduler is None else make_scheduler(optimizer)
  targets = make_targets(steps)

  def snapshot():
    return {n: torch_to_flax(n, t.detach().numpy().copy()) for n, t in tensors.items()}

  trajectory = [snapshot()]
  for t in range(steps):
    optimizer.zero_grad()
    loss_torch(tensors, targets[t]).backward()
    if before_step is not None:
      with torch.no_grad():
        before_step(optimizer)
    optimizer.step()
    if scheduler is not None and (t + 1) % steps_per_scheduler_step == 0:
      scheduler.step()
    trajectory.append(snapshot())
  if buffer is None:
    return trajectory
  buffers = {n: torch_to_flax(n, optimizer.state[t][buffer].numpy()) for n, t in tensors.items()}
  return trajectory, buffers


def decoupled_decay_hook(weight_decay: float) -> Callable:
  """torch.optim.SGD has no decoupled decay: p *= 1 - lr * wd before the step."""

  def hook(optimizer):
    for group in optimizer.param_groups:
      if group["decay"]:
        for p in group["params"]:
          p.mul_(1 - group["lr"] * weight_decay)

  return hook


def sgd_lua(
  steps: int,
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  eta: Sequence[float],
  nesterov: bool = False,
  decayed: Sequence[str] = NAMES,
  corrected: bool = False,
):
  """NumPy transcription of the authors' sgd.lua (SGDW, the paper's convention).

  buf = g at the first step, then mu * buf + g; d = buf, or g + mu * buf with
  Nesterov; theta -= alpha * eta_t * d + eta_t * lambda * theta_old. The
  gradients come from torch autograd at the reference's own params. With
  ``corrected``, Defazio's (2025) SGDC: the decay is lambda * eta_t^2.
  """
  params = {n: flax_to_torch(n, p) for n, p in init_params().items()}
  targets = make_targets(steps)
  bufs: dict[str, np.ndarray] = {}
  trajectory = [{n: torch_to_flax(n, p.copy()) for n, p in params.items()}]
  for t in range(steps):
    tensors = {n: torch.tensor(p, requires_grad=True) for n, p in params.items()}
    loss_torch(tensors, targets[t]).backward()
    for n in NAMES:
      g = tensors[n].grad.numpy()
      bufs[n] = g.copy() if t == 0 else momentum * bufs[n] + g
      d = g + momentum * bufs[n] if nesterov else bufs[n]
      wd = weight_decay if n in decayed else 0.0
      if corrected:
        wd = wd * eta[t]
      params[n] = params[n] - learning_rate * eta[t] * d - eta[t] * wd * params[n]
      params[n] = params[n].astype(np.float32)
    trajectory.append({n: torch_to_flax(n, p.copy()) for n, p in params.items()})
  return trajectory


class TimmSGDP(SGDP):
  """timm/optim/sgdp.py: the official SGDP, with the momentum buffer cloned before the projection.

  The official SGDP without Nesterov projects its momentum buffer in place; timm's copy fixes it.
  """

  def _projection(self, p, grad, perturb, delta, wd_ratio, eps):
    return super()._projection(p, grad, perturb.clone(), delta, wd_ratio, eps)


# ---------------------------------------------------------------- porting: torch.optim schedulers, timm's factory


def warm_restarts(t_0: int, t_mult: int, eta_min: float = 0.0) -> Callable:
  """``make_scheduler`` for ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult, eta_min)``."""
  return lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
    optimizer, T_0=t_0, T_mult=t_mult, eta_min=eta_min
  )


def warm_restarts_lrs(
  steps: int, init_value: float, t_0: int, t_mult: int, eta_min: float
) -> np.ndarray:
  """``CosineAnnealingWarmRestarts``'s ``get_last_lr()`` at steps 0 .. steps - 1, stepped per step."""
  optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=init_value)
  scheduler = warm_restarts(t_0, t_mult, eta_min)(optimizer)
  lrs = []
  for _ in range(steps):
    lrs.append(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
  return np.asarray(lrs, np.float64)


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


def timm_run(opt: str, lr: float, weight_decay: float, steps: int):
  """timm's optimizer ``opt`` from ``create_optimizer_v2``, on a module with the leaves of NAMES.

  run_torch hands over one group with every leaf (in NAMES order); timm makes its own groups.
  """

  def make(groups):
    (group,) = groups
    # named_parameters() of a module that holds the leaves under their names.
    named = list(zip(NAMES, group["params"], strict=True))
    return timm_create_optimizer_v2(named, opt, lr=lr, weight_decay=weight_decay)

  return run_torch(make, steps, decayed=NAMES)


class ComposerDecoupledAdamW(torch.optim.AdamW):
  """Composer's DecoupledAdamW: the step of ``DecoupledAdamW.adamw``, transcribed.

  MosaicML Composer ``composer/optim/decoupled_weight_decay.py`` (commit 6405188). The decay
  is ``p *= 1 - (lr / initial_lr) * weight_decay`` (the paper's convention, eta_t = lr_t /
  initial_lr), then Adam's step with ``lr``.
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
        denom = (exp_avg_sq.sqrt() / float(np.sqrt(bias_correction2))).add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
