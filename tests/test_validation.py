"""Every public constructor checks the type and range of every argument at construction.

The table lists, per constructor, arguments that are valid together and, per
argument, bad values with the exception they must raise. The message must
name the argument and say what was given. A coverage test fails when a public
constructor or one of its arguments is missing from the table.
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

import decoupled_optax as dopt

INF, NAN = float("inf"), float("nan")
T, V = TypeError, ValueError

# Shared bad values by kind of argument.
NON_NEGATIVE = [
  (-1.0, V),
  (INF, V),
  (NAN, V),
  ("1e-3", T),
  (None, T),
  ([1e-3], T),
  (1j, T),
  (True, T),
]
NON_NEGATIVE_OR_SCHEDULE = [(-1.0, V), (INF, V), (NAN, V), ("1e-3", T), (None, T), ([0.1], T)]
POSITIVE = [(0.0, V), (-1.0, V), (INF, V), (NAN, V), ("0.1", T), (None, T)]
UNIT = [(1.0, V), (-0.1, V), (NAN, V), (INF, V), (None, T), ("0.9", T), (0.5j, T)]
BOOL = [(None, T), ("yes", T), (1, T)]
OPTIONAL_BOOL = [("yes", T), (1, T)]
CONVENTION = [("pytorch", V), ("Paper", V), (1, V), (True, V)]
DTYPE = [("not-a-dtype", T), (3.5, T)]
MASK = [(True, V), ("kernel", T), (3, T)]
SCHEDULE = [(-1.0, V), (NAN, V), (INF, V), ("1", T), ([1.0], T)]
CHANNEL_AXIS = [(1.5, T), ("0", T), (jnp.int32(0), T), (True, T), ({"dense": 0.5}, T)]
AXIS_NAME = [(3, T), (("x", 3), T)]
PROJECTION_MASK = [("bias", T), (0.5, T), ({"dense": 1}, T)]
CORRECTED_LEAVES = [("scale", V), ({"w": True}, V)]  # outside the corrected convention
PROJECTION = [({"delta": 0.1}, T), (3, T)]  # a RadialProjection or None
TRANSFORM = [(None, T), ("adam", T), (lambda g: g, T)]
COUNT = [(0, V), (-1, V), (2.5, V), (INF, V), ("8", T), (None, T)]  # integers >= 1

PARAMS = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}

TABLE = {
  "adamw": (
    dict(learning_rate=1e-3, weight_decay=1e-5, weight_decay_convention="paper"),
    dict(
      learning_rate=NON_NEGATIVE,
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      b1=UNIT,
      b2=UNIT,
      eps=NON_NEGATIVE,
      eps_root=NON_NEGATIVE,
      mu_dtype=DTYPE,
      nu_dtype=DTYPE,
      schedule=SCHEDULE,
      mask=MASK,
      nesterov=BOOL,
      weight_decay_convention=CONVENTION,
      cautious_weight_decay=BOOL,
      corrected_decay_leaves=CORRECTED_LEAVES,
    ),
  ),
  "sgdw": (
    dict(learning_rate=0.1),
    dict(
      learning_rate=NON_NEGATIVE,
      momentum=UNIT,
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      nesterov=BOOL,
      accumulator_dtype=DTYPE,
      schedule=SCHEDULE,
      mask=MASK,
      weight_decay_convention=CONVENTION,
      cautious_weight_decay=BOOL,
      corrected_decay_leaves=CORRECTED_LEAVES,
    ),
  ),
  "adamp": (
    dict(learning_rate=1e-3, weight_decay=1e-5, weight_decay_convention="paper"),
    dict(
      learning_rate=NON_NEGATIVE,
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      b1=UNIT,
      b2=UNIT,
      eps=NON_NEGATIVE,
      mu_dtype=DTYPE,
      nu_dtype=DTYPE,
      delta=POSITIVE,
      wd_ratio=NON_NEGATIVE,
      nesterov=BOOL,
      channel_axis=CHANNEL_AXIS,
      projection_mask=PROJECTION_MASK,
      axis_name=AXIS_NAME,
      schedule=SCHEDULE,
      mask=MASK,
      weight_decay_convention=CONVENTION,
      cautious_weight_decay=BOOL,
      corrected_decay_leaves=CORRECTED_LEAVES,
      cpu_kernel=OPTIONAL_BOOL,
    ),
  ),
  "sgdp": (
    dict(learning_rate=0.1, momentum=0.9),
    dict(
      learning_rate=NON_NEGATIVE,
      momentum=UNIT,
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      nesterov=BOOL,
      delta=POSITIVE,
      wd_ratio=NON_NEGATIVE,
      eps=NON_NEGATIVE,
      channel_axis=CHANNEL_AXIS,
      projection_mask=PROJECTION_MASK,
      axis_name=AXIS_NAME,
      accumulator_dtype=DTYPE,
      schedule=SCHEDULE,
      mask=MASK,
      weight_decay_convention=CONVENTION,
      cautious_weight_decay=BOOL,
      corrected_decay_leaves=CORRECTED_LEAVES,
      cpu_kernel=OPTIONAL_BOOL,
    ),
  ),
  "decoupled_chain": (
    dict(
      direction=optax.scale_by_adam(),
      learning_rate=1e-3,
      weight_decay=1e-5,
      weight_decay_convention="paper",
    ),
    dict(
      direction=TRANSFORM,
      learning_rate=NON_NEGATIVE,
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      schedule=SCHEDULE,
      mask=MASK,
      weight_decay_convention=CONVENTION,
      cautious_weight_decay=BOOL,
      corrected_decay_leaves=CORRECTED_LEAVES,
      weight_decay_factor=NON_NEGATIVE,
      radial_projection=PROJECTION,
    ),
  ),
  "add_decoupled_weight_decay": (
    dict(weight_decay=1e-4),
    dict(
      weight_decay=NON_NEGATIVE_OR_SCHEDULE,
      mask=MASK,
      cautious=BOOL,
      projected_weight_decay=[(v, e) for v, e in NON_NEGATIVE_OR_SCHEDULE if v is not None],
    ),
  ),
  "RadialProjection": (
    dict(),
    dict(
      delta=POSITIVE,
      wd_ratio=NON_NEGATIVE,
      eps=NON_NEGATIVE,
      channel_axis=CHANNEL_AXIS,
      projection_mask=PROJECTION_MASK,
      axis_name=AXIS_NAME,
      cpu_kernel=OPTIONAL_BOOL,
    ),
  ),
  "detect_scale_invariance": (
    dict(inner=optax.scale_by_adam()),
    dict(
      inner=TRANSFORM,
      projection=PROJECTION + [(dopt.RadialProjection(cpu_kernel=True), V)],
    ),
  ),
  "scale_invariance": (
    dict(grads=PARAMS, params=PARAMS),
    dict(
      projection=PROJECTION,
      grads=[({"dense": {"kernel": jnp.ones((1, 3)), "bias": jnp.zeros(3)}}, V), ([1.0], V)],
    ),
  ),
  "fused_scale_invariance": (
    dict(direction=dopt.AdamDirection(), tail=dopt.project_out_radial()),
    dict(
      direction=[(optax.scale_by_adam(), T), (None, T)],
      tail=TRANSFORM,
      projection=PROJECTION,
    ),
  ),
  "with_diagnostics": (
    dict(inner=optax.sgd(0.1)),
    dict(
      inner=TRANSFORM,
      axis_name=AXIS_NAME,
      every=[(0, V), (-1, V), (1.5, T), (True, T), (None, T), ("10", T)],
    ),
  ),
  "read_diagnostics": (
    dict(state=dopt.with_diagnostics(optax.sgd(0.1)).init(PARAMS)),
    dict(state=[(optax.sgd(0.1).init(PARAMS), V), (None, V)]),
  ),
  "weight_decay_for_timescale": (
    dict(weight_decay_convention="paper", tau_iterations=1000.0),
    dict(
      weight_decay_convention=[("pytorch", V), (None, V)],
      tau_iterations=[(0.0, V), (-1.0, V), (NAN, V), ("10", T)],
      learning_rate=[(1e-3, V)],  # not in the paper's convention
      tau_epochs=[(1.0, V)],  # besides tau_iterations
      batch_size=[(0, V), (1.5, V), ("8", T)],
      num_train_points=[(0, V), (1.5, V), ("8", T)],
    ),
  ),
  "angular_equilibrium_factor": (dict(beta=0.9, nesterov=False), dict(beta=UNIT, nesterov=BOOL)),
  "AdamDirection": (
    dict(),
    dict(b1=UNIT, b2=UNIT, eps=NON_NEGATIVE, nesterov=BOOL, mu_dtype=DTYPE, nu_dtype=DTYPE),
  ),
  "MomentumDirection": (dict(), dict(decay=UNIT, nesterov=BOOL, accumulator_dtype=DTYPE)),
  "scale_by_adamp_nesterov": (
    dict(),
    dict(b1=UNIT, b2=UNIT, eps=NON_NEGATIVE, eps_root=NON_NEGATIVE, mu_dtype=DTYPE, nu_dtype=DTYPE),
  ),
  "cosine_warm_restart_schedule": (
    dict(init_value=1.0, first_period=10),
    dict(
      init_value=[(-1.0, V), (NAN, V), (INF, V), (None, T), ("1", T)],
      first_period=COUNT,
      period_mult=[(0.5, V), (INF, V), (NAN, V), (None, T), ("2", T)],
      min_value=[(NAN, V), (INF, V), (-1.0, V), (2.0, V), (None, T)],
      restart_decay=[(0.0, V), (1.5, V), (NAN, V), (None, T)],
      warmup_steps=[(-1, V), (1.5, V), (INF, V), (None, T), ("5", T)],
      warmup_init_value=[(NAN, V), (-1.0, V), (INF, V), (None, T)],
      cycle_limit=[(0, V), (1.5, V), (True, T), ("2", T)],
    ),
  ),
  "restart_position": (
    dict(count=0, first_period=10),
    dict(first_period=COUNT, period_mult=[(0.5, V), (INF, V), (None, T)]),
  ),
  "normalized_weight_decay": (
    dict(lambda_norm=0.05, batch_size=128, num_train_points=50_000, num_epochs=100),
    dict(
      lambda_norm=NON_NEGATIVE,
      batch_size=COUNT,
      num_train_points=COUNT,
      num_epochs=POSITIVE,
    ),
  ),
  "normalized_weight_decay_schedule": (
    dict(lambda_norm=0.05, batch_size=128, num_train_points=50_000, first_period=10),
    dict(
      lambda_norm=NON_NEGATIVE,
      batch_size=COUNT,
      num_train_points=COUNT,
      first_period=COUNT,
      period_mult=[(0.5, V), (INF, V), (None, T)],
      steps_per_epoch=[(0.0, V), (INF, V), ("3", T)],
      warmup_steps=[(-1, V), (1.5, V), (None, T)],
    ),
  ),
  "weight_decay_mask": (
    dict(params=PARAMS),
    dict(
      exclude_names=[("embedding", T), ([1], T), (None, T)],
      min_ndim=[("2", T), (-1, V), (1.5, V)],
    ),
  ),
  "make_weight_decay_mask": (
    dict(),
    dict(exclude_names=[("embedding", T), ([1], T)], min_ndim=[("2", T), (-1, V)]),
  ),
  "inject_hyperparams": (
    dict(inner_factory=dopt.adamw),
    dict(
      inner_factory=[(None, T), (3, T)],
      static_args=[(3, T), ((1,), T)],
      hyperparam_dtype=DTYPE,
    ),
  ),
  "keep_param_sharding": (dict(inner=optax.adam(1e-3)), dict(inner=TRANSFORM)),
  "state_shardings": (dict(tx=optax.adam(1e-3), params=PARAMS), dict(tx=TRANSFORM)),
  "state_partition_specs": (
    dict(tx=optax.adam(1e-3), params=PARAMS, param_specs=jax.tree.map(lambda _: P(), PARAMS)),
    dict(tx=TRANSFORM),
  ),
  "init_sharded": (dict(tx=optax.adam(1e-3), params=PARAMS), dict(tx=TRANSFORM)),
  "PaperConventionSchedule": (
    dict(schedule=optax.constant_schedule(1e-5)),
    dict(schedule=[(1e-5, T), (None, T)]),
  ),
}

# Arguments that are not hyperparameters, or are checked where they are used.
NOT_IN_TABLE = {
  ("restart_position", "count"),  # a step count, any integer type (tests/test_schedules.py)
  ("adamp", "param_specs"),  # PartitionSpec trees, checked against the params at the update
  ("sgdp", "param_specs"),
  ("RadialProjection", "param_specs"),
  ("scale_invariance", "params"),  # the params, against which grads are checked
  ("weight_decay_mask", "params"),  # any pytree; a scalar raises (tests/test_masks.py)
  ("state_shardings", "params"),
  ("state_shardings", "shardings"),
  ("state_shardings", "replicated"),
  ("state_partition_specs", "params"),
  ("state_partition_specs", "param_specs"),
  ("init_sharded", "params"),
  ("with_diagnostics", "param_specs"),
}
# Public callables that build nothing from hyperparameters.
NOT_CONSTRUCTORS = {
  "cpu_kernel_available",  # no arguments
  "Direction",  # abstract: AdamDirection and MomentumDirection are in the table
  "project_out_radial",  # no arguments
  "AddDecoupledWeightDecayState",  # states and results: NamedTuples
  "CautiousWeightDecayState",
  "RadialProjector",
  "RestartPosition",
  "DiagnosticsState",
  "StepScalarsState",
  "RadialProjectionState",
  "LeafDecision",
  "CPUKernelWarning",
  "ScheduleConventionWarning",
  "WeightDecayConventionWarning",
}

CASES = [
  (constructor, name, value, error)
  for constructor, (_, arguments) in TABLE.items()
  for name, bad_values in arguments.items()
  for value, error in bad_values
]


@pytest.mark.parametrize(
  "constructor, name, value, error",
  CASES,
  # A function's repr holds its address, which differs between processes (pytest-xdist workers).
  ids=[f"{c}-{n}={getattr(v, '__name__', None) or repr(v)}"[:60] for c, n, v, _ in CASES],
)
def test_a_bad_argument_raises_naming_it(constructor, name, value, error):
  valid, _ = TABLE[constructor]
  with pytest.raises(error) as raised:
    getattr(dopt, constructor)(**{**valid, name: value})
  message = str(raised.value)
  assert re.search(rf"\b{name}\b", message), message
  assert "must" in message, message
  if name not in ("grads",):
    assert "got" in message, message


@pytest.mark.parametrize("constructor", sorted(TABLE))
def test_the_valid_arguments_of_the_table_are_accepted(constructor):
  valid, _ = TABLE[constructor]
  getattr(dopt, constructor)(**valid)


def test_the_table_covers_every_public_constructor_and_argument():
  public = {name for name in dopt.__all__ if callable(getattr(dopt, name))}
  assert public - NOT_CONSTRUCTORS == set(TABLE), "constructors missing from (or extra in) TABLE"
  for constructor, (_, arguments) in TABLE.items():
    parameters = set(inspect.signature(getattr(dopt, constructor)).parameters)
    missing = {p for p in parameters - set(arguments) if (constructor, p) not in NOT_IN_TABLE}
    assert not missing, f"{constructor}: arguments not in TABLE: {sorted(missing)}"


def test_traced_hyperparameters_and_schedules_are_still_accepted():
  params = {"w": jnp.ones((2, 3))}

  @jax.jit
  def step(lr, wd, b1, momentum, delta, eps_root):
    transforms = [
      dopt.adamw(lr, wd, b1=b1, eps_root=eps_root, schedule=lr, weight_decay_convention="paper"),
      dopt.adamp(lr, wd, b1=b1, delta=delta, weight_decay_convention="paper"),
      dopt.sgdp(lr, momentum, wd, weight_decay_convention="paper"),
      dopt.sgdw(
        lr, momentum, wd, schedule=optax.constant_schedule(1.0), weight_decay_convention="paper"
      ),
    ]
    return [tx.update(params, tx.init(params), params)[0] for tx in transforms]

  step(1e-3, 1e-5, 0.9, 0.9, 0.1, 0.0)
  schedule = optax.cosine_decay_schedule(1.0, 100)
  dopt.adamw(
    1e-3, optax.constant_schedule(1e-5), schedule=schedule, weight_decay_convention="paper"
  )
  dopt.adamp(optax.constant_schedule(1e-3), 1e-2, weight_decay_convention="torch")
