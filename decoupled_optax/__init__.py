"""decoupled_optax: the optimizers of "Decoupled Weight Decay Regularization" and AdamP.

Composable optax transforms: decoupled weight decay in the paper's,
PyTorch's or the corrected convention, AdamP/SGDP's radial projection, SGDR warm restarts and
the paper's normalized weight decay, and the aliases built from them.
"""

from decoupled_optax._projection_options import RadialProjection
from decoupled_optax._step_scalars import StepScalarsState
from decoupled_optax.aliases import (
  adamp,
  adamw,
  decoupled_chain,
  sgdp,
  sgdw,
)
from decoupled_optax.conventions import (
  PaperConventionSchedule,
  ScheduleConventionWarning,
  WeightDecayConventionWarning,
)
from decoupled_optax.diagnostics import DiagnosticsState, read_diagnostics, with_diagnostics
from decoupled_optax.directions import (
  AdamDirection,
  Direction,
  MomentumDirection,
  angular_equilibrium_factor,
  scale_by_adamp_nesterov,
)
from decoupled_optax.fused import CPUKernelWarning, cpu_kernel_available, fused_scale_invariance
from decoupled_optax.hyperparams import inject_hyperparams
from decoupled_optax.masks import make_weight_decay_mask, weight_decay_mask
from decoupled_optax.projection import (
  LeafDecision,
  RadialProjectionState,
  RadialProjector,
  detect_scale_invariance,
  project_out_radial,
  scale_invariance,
)
from decoupled_optax.schedules import (
  RestartPosition,
  cosine_warm_restart_schedule,
  normalized_weight_decay_schedule,
  restart_position,
)
from decoupled_optax.sharding import (
  init_sharded,
  keep_param_sharding,
  state_partition_specs,
  state_shardings,
)
from decoupled_optax.weight_decay import (
  AddDecoupledWeightDecayState,
  CautiousWeightDecayState,
  add_decoupled_weight_decay,
  normalized_weight_decay,
  weight_decay_for_timescale,
)

__version__ = "0.1.0"

__all__ = [
  "AdamDirection",
  "AddDecoupledWeightDecayState",
  "CautiousWeightDecayState",
  "CPUKernelWarning",
  "DiagnosticsState",
  "StepScalarsState",
  "Direction",
  "MomentumDirection",
  "angular_equilibrium_factor",
  "LeafDecision",
  "RadialProjection",
  "RadialProjectionState",
  "RadialProjector",
  "RestartPosition",
  "PaperConventionSchedule",
  "ScheduleConventionWarning",
  "WeightDecayConventionWarning",
  "adamp",
  "adamw",
  "add_decoupled_weight_decay",
  "cosine_warm_restart_schedule",
  "cpu_kernel_available",
  "decoupled_chain",
  "detect_scale_invariance",
  "fused_scale_invariance",
  "init_sharded",
  "inject_hyperparams",
  "keep_param_sharding",
  "make_weight_decay_mask",
  "normalized_weight_decay",
  "weight_decay_for_timescale",
  "normalized_weight_decay_schedule",
  "project_out_radial",
  "read_diagnostics",
  "restart_position",
  "scale_by_adamp_nesterov",
  "scale_invariance",
  "sgdp",
  "sgdw",
  "state_partition_specs",
  "state_shardings",
  "weight_decay_mask",
  "with_diagnostics",
]
