"""The conventions: a nonzero decay must state its convention (a ValueError otherwise), PyTorch's
keywords name ours, and the warnings: a PyTorch decay as the paper's lambda, a learning rate as
the multiplier."""

from __future__ import annotations

import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
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
  assert isinstance(decay, dopt.PaperConventionSchedule)
  assert float(decay(0)) > 1e-2
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    dopt.sgdw(1e-2, 0.9, decay, weight_decay_convention="paper")
    dopt.inject_hyperparams(dopt.sgdw)(1e-2, 0.9, decay, weight_decay_convention="paper")
  # The same values as a plain schedule are judged: the type is what states the convention.
  with pytest.warns(dopt.WeightDecayConventionWarning):
    dopt.sgdw(1e-2, 0.9, decay.schedule, weight_decay_convention="paper")


@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamp", "sgdp", "decoupled_chain"])
def test_a_paper_convention_schedule_is_rejected_in_the_torch_convention(name):
  decay = dopt.PaperConventionSchedule(optax.constant_schedule(1e-5))
  with pytest.raises(ValueError, match="PaperConventionSchedule.*weight_decay_convention='paper'"):
    MISSING[name](decay, weight_decay_convention="torch")
  for convention in ("paper", "corrected"):
    MISSING[name](decay, weight_decay_convention=convention)


def test_a_paper_convention_schedule_needs_a_callable():
  with pytest.raises(TypeError, match="schedule must be a callable of the step count, got float"):
    dopt.PaperConventionSchedule(1e-5)  # type: ignore[arg-type]


def test_inject_hyperparams_judges_once_at_construction_not_at_each_step():
  params = {"w": jnp.ones((2, 2))}
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    tx = dopt.inject_hyperparams(dopt.adamw)(1e-3, 1e-2, weight_decay_convention="paper")
    state = tx.init(params)
    jax.jit(tx.update)(params, state, params)
  categories = [w.category for w in record]
  assert categories == [dopt.WeightDecayConventionWarning], categories


# --- The convention of a nonzero decay is always stated (issue 18) ---------------------------

ADAM_LIKE = {"adamw": dopt.adamw, "adamp": dopt.adamp}
MISSING = {
  "adamw": lambda wd, **kw: dopt.adamw(1e-3, wd, **kw),
  "adamp": lambda wd, **kw: dopt.adamp(1e-3, wd, **kw),
  "sgdw": lambda wd, **kw: dopt.sgdw(1e-3, 0.9, wd, **kw),
  "sgdp": lambda wd, **kw: dopt.sgdp(1e-3, 0.0, wd, **kw),
  "decoupled_chain": lambda wd, **kw: dopt.decoupled_chain(
    optax.scale_by_adam(), learning_rate=1e-3, weight_decay=wd, **kw
  ),
}
CONVENTION_LINES = ('weight_decay_convention="paper"', 'weight_decay_convention="torch"')


@pytest.mark.parametrize("name", list(MISSING))
def test_a_nonzero_decay_without_a_convention_raises(name):
  with pytest.raises(ValueError) as error:
    MISSING[name](5e-4)
  message = str(error.value)
  assert message.startswith(f"{name}(): weight_decay=0.0005 with learning_rate=0.001")
  # What the numbers remove per step in each convention, and the keyword to pass.
  assert 'weight_decay_convention="paper":     lambda = 0.0005' in message
  assert 'weight_decay_convention="torch":     learning_rate * lambda = 5e-07' in message
  assert 'weight_decay_convention="corrected": lambda = 0.0005 at eta_t = 1' in message
  assert f'{name}(..., weight_decay_convention="torch")' in message


@pytest.mark.parametrize("name", list(MISSING))
@pytest.mark.parametrize(
  "schedule",
  [optax.cosine_decay_schedule(5e-4, 100), optax.constant_schedule(0.0)],
  ids=["cosine", "zero"],
)
def test_a_decay_schedule_without_a_convention_always_raises(name, schedule):
  with pytest.raises(ValueError, match=r"weight_decay is a schedule \(weight_decay\(0\) = ") as e:
    MISSING[name](schedule)
  assert all(line in str(e.value) for line in CONVENTION_LINES)
  assert "learning_rate * lambda_t" in str(e.value)


def test_a_traced_decay_without_a_convention_raises():
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="weight_decay is traced"):
    jax.jit(lambda wd: dopt.adamw(1e-3, wd).init(params))(1e-4)
  jax.jit(lambda wd: dopt.adamw(1e-3, wd, weight_decay_convention="paper").init(params))(1e-4)


def test_sgdp_states_its_official_factor_and_adamp_its_wd_ratio():
  with pytest.raises(ValueError) as error:
    dopt.sgdp(0.1, 0.9, 1e-5)
  message = str(error.value)
  assert '"paper":     10 * lambda = 0.0001' in message
  assert '"torch":     learning_rate * 10 * lambda = 1e-05' in message
  assert "official 1 / (1 - momentum)" in message and "wd_ratio=0.1" in message
  with pytest.raises(ValueError, match=r"adamp multiplies the decay by wd_ratio=0.01"):
    dopt.adamp(1e-3, 1e-4, wd_ratio=0.01)


@pytest.mark.parametrize("convention", ["paper", "torch", "corrected"])
@pytest.mark.parametrize("name", list(MISSING))
def test_a_stated_convention_builds(name, convention):
  MISSING[name](5e-4, weight_decay_convention=convention)


def test_no_decay_needs_no_convention():
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.full(3, 0.5)}
  txs = [
    dopt.sgdw(0.1),
    dopt.sgdw(0.1, 0.9),
    dopt.sgdp(0.1, 0.9, nesterov=True),
    dopt.sgdw(0.1, 0.9, 0),
    dopt.adamw(1e-3, 0.0),
    dopt.adamp(1e-3, 0),
    dopt.adamw(1e-3, jnp.float32(0.0)),  # a concrete zero
    dopt.decoupled_chain(optax.scale_by_lion(), learning_rate=1e-3, weight_decay=0.0),
  ]
  for tx in txs:
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.isfinite(updates["w"]))
  # Without decay every convention is the same: a learning-rate schedule is accepted.
  tx = dopt.sgdw(optax.constant_schedule(0.1), 0.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.05 * np.ones(3), rtol=1e-6)


def test_an_unknown_convention_is_still_a_value_error():
  with pytest.raises(ValueError, match="weight_decay_convention must be one of"):
    dopt.adamw(1e-3, 1e-4, weight_decay_convention="pytorch")


@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamp", "sgdp", "decoupled_chain"])
def test_scale_weight_decay_by_lr_is_gone(name):
  factory = getattr(dopt, name)
  assert "scale_weight_decay_by_lr" not in inspect.signature(factory).parameters
  with pytest.raises(TypeError, match='weight_decay_convention="torch" for True'):
    MISSING[name](1e-4, scale_weight_decay_by_lr=True)


TORCH_KEYWORDS = {
  "lr": "learning_rate",
  "params": "tx.init(params)",
  "amsgrad": "optax.scale_by_amsgrad",
  "maximize": "negate the loss",
  "foreach": "drop it",
  "fused": "drop it",
  "capturable": "drop it",
  "differentiable": "drop it",
}


@pytest.mark.parametrize("keyword", list(TORCH_KEYWORDS))
@pytest.mark.parametrize("name", ["adamw", "sgdw", "adamp", "sgdp", "decoupled_chain"])
def test_pytorch_keywords_name_our_spelling(name, keyword):
  with pytest.raises(TypeError, match=rf"^{name}\(\) .*{re.escape(TORCH_KEYWORDS[keyword])}"):
    MISSING[name](1e-4, weight_decay_convention="paper", **{keyword: 1e-3})


@pytest.mark.parametrize("name", ["adamw", "adamp"])
def test_adams_pytorch_keywords_name_b1_and_b2(name):
  with pytest.raises(TypeError, match=r"takes b1 and b2.*betas=\(0.9, 0.999\) is b1=0.9, b2=0.999"):
    ADAM_LIKE[name](1e-3, 1e-4, betas=(0.9, 0.999), weight_decay_convention="torch")
  with pytest.raises(TypeError, match=r"has no momentum: Adam's momentum is .* b1"):
    ADAM_LIKE[name](1e-3, 1e-4, momentum=0.9, weight_decay_convention="torch")
  with pytest.raises(TypeError, match="has no dampening, a keyword of PyTorch's SGD"):
    ADAM_LIKE[name](1e-3, 1e-4, dampening=0.0, weight_decay_convention="torch")


@pytest.mark.parametrize("name", ["sgdw", "sgdp"])
def test_sgds_pytorch_keywords_name_ours(name):
  sgd = getattr(dopt, name)
  with pytest.raises(TypeError, match="dampening=0 \\(PyTorch's default\\)"):
    sgd(0.1, 0.9, dampening=0.0)
  with pytest.raises(TypeError, match="has no betas: they are Adam's"):
    sgd(0.1, 0.9, betas=(0.9, 0.999))
  with pytest.raises(TypeError, match="lr"):
    sgd(lr=0.1)


def test_other_unknown_keywords_keep_pythons_error_and_signatures_stay_visible():
  with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
    dopt.adamw(1e-3, 1e-4, weight_decay_convention="paper", bogus=1)
  for name in ["adamw", "sgdw", "adamp", "sgdp", "decoupled_chain"]:
    parameters = inspect.signature(getattr(dopt, name)).parameters
    assert {"learning_rate", "weight_decay", "weight_decay_convention"} <= set(parameters)
    assert getattr(dopt, name).__name__ == name


@pytest.mark.parametrize("name", ["adamw", "adamp"])
def test_the_warning_still_fires_for_an_explicit_paper_or_corrected_convention(name):
  for convention in ("paper", "corrected"):
    with pytest.warns(dopt.WeightDecayConventionWarning, match="weight_decay=1e-05"):
      ADAM_LIKE[name](1e-3, 1e-2, weight_decay_convention=convention)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ADAM_LIKE[name](1e-3, 1e-2, weight_decay_convention="torch")


def test_inject_hyperparams_requires_the_convention_at_construction():
  for weight_decay in (1e-4, optax.constant_schedule(1e-4), jnp.float32(1e-4)):
    with pytest.raises(ValueError, match='adamw\\(\\.\\.\\., weight_decay_convention="torch"\\)'):
      dopt.inject_hyperparams(dopt.adamw)(1e-3, weight_decay)
  params = {"w": jnp.ones(3)}
  tx = dopt.inject_hyperparams(dopt.adamw)(1e-3, 1e-4, weight_decay_convention="torch")
  state = tx.init(params)
  assert float(state.hyperparams["weight_decay"]) == pytest.approx(1e-4)
  jax.jit(tx.update)(params, state, params)


@pytest.mark.parametrize(
  "make",
  [
    lambda: dopt.inject_hyperparams(dopt.sgdw)(0.1, 0.9),
    lambda: dopt.inject_hyperparams(dopt.sgdp)(0.1, 0.9, weight_decay=0.0),
    lambda: dopt.inject_hyperparams(dopt.adamw)(1e-3, 0.0),
  ],
  ids=["omitted", "zero", "adamw_zero"],
)
def test_inject_hyperparams_without_decay_needs_no_convention(make):
  """The injected decay is then applied in the paper's convention (documented)."""
  tx = make()
  params = {"w": jnp.ones((2, 3))}
  state = tx.init(params)
  assert float(state.hyperparams["weight_decay"]) == 0.0
  updates, state = jax.jit(tx.update)(params, state, params)
  reference = make().update(params, make().init(params), params)[0]
  np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-6)
  # A decay set later is the paper's lambda: removed per step, not multiplied by the rate.
  state.hyperparams["weight_decay"] = jnp.asarray(0.5, jnp.float32)
  zero = {"w": jnp.zeros((2, 3))}
  fresh = tx.init(params)
  fresh.hyperparams["weight_decay"] = jnp.asarray(0.5, jnp.float32)
  decayed, _ = jax.jit(tx.update)(zero, fresh, params)
  np.testing.assert_allclose(decayed["w"], -0.5 * np.ones((2, 3)), rtol=1e-5)


def test_optax_inject_hyperparams_without_a_convention_raises_on_a_nonzero_decay():
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="no weight_decay_convention"):
    optax.inject_hyperparams(dopt.adamw)(learning_rate=1e-3, weight_decay=1e-4).init(params)
  # optax injects even the omitted default: under jit its value cannot be read.
  tx = optax.inject_hyperparams(dopt.sgdw)(0.1)
  with pytest.raises(ValueError, match="weight_decay is traced"):
    jax.jit(tx.update)(params, tx.init(params), params)
  tx = optax.inject_hyperparams(dopt.sgdw)(0.1, weight_decay_convention="paper")
  jax.jit(tx.update)(params, tx.init(params), params)
