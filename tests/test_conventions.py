"""The convention warnings: a PyTorch decay as the paper's lambda, a learning rate as the multiplier."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

import decoupled_optax as dopt


def test_convention_warning_in_paper_mode_only():
  with pytest.warns(dopt.WeightDecayConventionWarning, match=r"weight_decay=1e-05"):
    dopt.adamw(1e-3, weight_decay=1e-2, weight_decay_convention="paper")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    dopt.adamw(1e-3, weight_decay=1e-2, weight_decay_convention="torch")
    dopt.adamw(1e-3, weight_decay=2.5e-4, weight_decay_convention="paper")
    dopt.sgdw(0.1, 0.9, weight_decay=5e-5, weight_decay_convention="paper")


def test_python_filters_decide_how_often_it_is_shown():
  """No private registry: under 'always' every optimizer built with the values warns."""
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    dopt.adamw(1e-3, 1e-2, weight_decay_convention="paper")
    dopt.adamp(1e-3, 1e-2, weight_decay_convention="paper")
    dopt.adamw(1e-3, 1e-2, weight_decay_convention="paper")
  assert [w.category for w in record] == [dopt.WeightDecayConventionWarning] * 3


@pytest.mark.parametrize("alias", [dopt.adamw, dopt.adamp])
def test_convention_warning_for_each_alias(alias):
  with pytest.warns(dopt.WeightDecayConventionWarning):
    alias(1e-4, weight_decay=0.05, weight_decay_convention="paper")


def test_a_weight_decay_schedule_is_judged_at_step_zero():
  torch_like = optax.cosine_decay_schedule(1e-2, 1000)
  with pytest.warns(dopt.WeightDecayConventionWarning, match=r"weight_decay\(0\)=0.01"):
    dopt.adamw(1e-3, weight_decay=torch_like, weight_decay_convention="paper")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    dopt.adamw(
      1e-3, weight_decay=optax.cosine_decay_schedule(1e-5, 1000), weight_decay_convention="paper"
    )
    dopt.adamw(1e-3, weight_decay=torch_like, weight_decay_convention="torch")


def test_warning_is_silent_for_traced_values():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.jit(
      lambda lr, wd: dopt.adamw(lr, wd, weight_decay_convention="paper").init({"w": jnp.ones(2)})
    )(1e-3, 1e-1)


@pytest.mark.parametrize("alias", [dopt.adamw, dopt.sgdw, dopt.adamp, dopt.sgdp])
def test_convention_warning_points_at_the_callers_line(alias):
  with pytest.warns(dopt.WeightDecayConventionWarning) as record:
    alias(1e-3, weight_decay=0.02, weight_decay_convention="paper")
  assert record[0].filename == __file__


def test_under_inject_hyperparams_it_points_at_the_users_line():
  params = {"w": jnp.ones((2, 3))}
  with pytest.warns(dopt.WeightDecayConventionWarning) as record:
    tx = dopt.inject_hyperparams(dopt.adamw)(
      learning_rate=1e-3, weight_decay=1e-2, weight_decay_convention="paper"
    )
  assert [w.filename for w in record] == [__file__]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # judged once, at construction: not again at init or update
    state = tx.init(params)
    tx.update(params, state, params)
  with pytest.warns(dopt.WeightDecayConventionWarning) as record:
    optax.inject_hyperparams(dopt.adamw)(
      learning_rate=1e-3, weight_decay=1e-2, weight_decay_convention="paper"
    ).init(params)
  assert record[0].filename == __file__  # not optax's _inject.py


# A multiplier eta_t (peak 1) and, wrongly, a learning rate passed in its place.
WARMUP_MULTIPLIER = optax.join_schedules(
  [optax.linear_schedule(0.0, 1.0, 5000), optax.cosine_decay_schedule(1.0, 10_000)], [5000]
)


@pytest.mark.parametrize(
  "schedule, reason",
  [
    (dopt.cosine_warm_restart_schedule(3e-4, first_period=100, period_mult=2), "equals"),
    (optax.cosine_decay_schedule(3e-4, 1000), "equals learning_rate=0.0003"),
    (0.01, "below 0.1"),
    (optax.linear_schedule(0.0, 1e-3, 2000), "below 0.1"),
  ],
)
@pytest.mark.parametrize("alias", [dopt.adamw, dopt.adamp])
def test_a_learning_rate_passed_as_the_multiplier_warns(alias, schedule, reason):
  with pytest.warns(dopt.ScheduleConventionWarning, match=reason) as record:
    alias(3e-4, 1e-6, schedule=schedule, weight_decay_convention="paper")
  assert record[0].filename == __file__
  assert "peak of 1" in str(record[0].message)


def test_a_multiplier_equal_to_the_learning_rate_warns():
  with pytest.warns(dopt.ScheduleConventionWarning, match="equals learning_rate=0.1"):
    dopt.sgdw(
      0.1,
      0.9,
      1e-5,
      schedule=optax.cosine_decay_schedule(0.1, 1000),
      weight_decay_convention="paper",
    )


@pytest.mark.parametrize(
  "schedule",
  [
    WARMUP_MULTIPLIER,
    optax.linear_schedule(0.0, 1.0, 1_000_000),  # a long warmup reaches 0.1 within 2^20 steps
    dopt.cosine_warm_restart_schedule(1.0, first_period=10, period_mult=2, min_value=0.0),
    lambda count: 1.0 if count < 10 else 0.5,  # Python control flow: evaluated step by step
    1.0,
    0.5,
    None,
  ],
)
def test_a_multiplier_does_not_warn(schedule):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    dopt.adamw(1e-3, 1e-5, schedule=schedule, weight_decay_convention="paper")
    dopt.sgdp(0.1, 0.9, 1e-5, schedule=schedule, weight_decay_convention="torch")


def test_injected_multipliers_are_judged_as_schedules():
  """optax would hand the factory schedule(0) = 0 for a warmup; the wrapper judges the schedule."""
  params = {"w": jnp.ones((2, 3))}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = dopt.inject_hyperparams(dopt.adamw)(
      1e-3, 1e-5, schedule=WARMUP_MULTIPLIER, weight_decay_convention="paper"
    )
    tx.update(params, tx.init(params), params)
  with pytest.warns(dopt.ScheduleConventionWarning):
    dopt.inject_hyperparams(dopt.adamw)(
      1e-3, 1e-5, schedule=optax.cosine_decay_schedule(1e-3, 100), weight_decay_convention="paper"
    )


def test_the_papers_normalized_decay_schedule_is_not_judged():
  """Its lambda is the paper's by construction, even when short periods make it large."""
  decay = dopt.normalized_weight_decay_schedule(0.05, 32, 1000, first_period=10)
  assert float(decay(0)) > 1e-2
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    dopt.sgdw(1e-2, 0.9, decay, weight_decay_convention="paper")
