"""cosine_warm_restart_schedule against torch's CosineAnnealingWarmRestarts and the SGDR formulas.

Expected values come from torch, from REFERENCE.md, or from the formulas
written out here in float64 Python with integer cycle bookkeeping; none are
produced by the library itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import decoupled_optax as dopt

INT32_MAX = 2**31 - 1


def _values(schedule, steps) -> np.ndarray:
  counts = jnp.asarray(np.asarray(steps, np.int64), jnp.int32)
  return np.asarray(jax.jit(jax.vmap(schedule))(counts), np.float64)


def _period_lengths(first_period, period_mult, limit=INT32_MAX):
  """T_i as documented, with Python integers, for the periods that start at or below limit."""
  lengths, start, i = [], 0, 0
  while start <= limit:
    if float(period_mult).is_integer():
      length = first_period * int(period_mult) ** i
    else:
      length = max(1, round(first_period * period_mult**i))
    lengths.append(length)
    start += length
    i += 1
  return lengths


def _restart_starts(first_period, period_mult, limit=INT32_MAX):
  if period_mult == 1:
    return list(range(0, limit + 1, first_period))
  starts, start = [], 0
  for length in _period_lengths(first_period, period_mult, limit):
    starts.append(start)
    start += length
  return starts


def sgdr(
  t,
  init_value,
  first_period,
  period_mult=1,
  min_value=0.0,
  restart_decay=1.0,
  warmup_steps=0,
  warmup_init_value=0.0,
):
  """The SGDR formula with timm-style single warmup and a per-restart peak decay."""
  if t < warmup_steps:
    return warmup_init_value + (init_value - warmup_init_value) * t / warmup_steps
  t_cur, cycle, length = t - warmup_steps, 0, first_period
  if period_mult == 1:
    cycle, t_cur = divmod(t_cur, first_period)
  else:
    for length in _period_lengths(first_period, period_mult, t_cur):
      if t_cur < length:
        break
      t_cur -= length
      cycle += 1
  peak = init_value * restart_decay**cycle
  return min_value + 0.5 * (peak - min_value) * (1 + math.cos(math.pi * t_cur / length))


# ---------------------------------------------------------------- against torch


@pytest.mark.parametrize(
  "first_period, period_mult, min_value, init_value",
  [
    (1, 1, 0.0, 1.0),
    (3, 2, 0.1, 1.0),
    (10, 1, 0.0, 0.5),
    (7, 3, 0.01, 2.0),
    (5, 2, 1e-4, 1e-3),
    (1, 3, 0.0, 1.0),
    (50, 4, 0.2, 1.0),
  ],
)
def test_matches_torch_cosine_annealing_warm_restarts(
  first_period, period_mult, min_value, init_value
):
  steps = 600
  optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=init_value)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
    optimizer, T_0=first_period, T_mult=period_mult, eta_min=min_value
  )
  expected = []
  for _ in range(steps):
    expected.append(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
  ours = _values(
    dopt.cosine_warm_restart_schedule(
      init_value, first_period=first_period, period_mult=period_mult, min_value=min_value
    ),
    range(steps),
  )
  np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=1e-6 * init_value)


def test_reference_values():
  # REFERENCE.md: torch CosineAnnealingWarmRestarts(T_0=3, T_mult=2, eta_min=0.1), base 1.0.
  expected = [1.0, 0.775, 0.325, 1.0, 0.939711, 0.775, 0.55, 0.325, 0.160289, 1.0]
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2, min_value=0.1)
  np.testing.assert_allclose(_values(schedule, range(10)), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- decay and warmup


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(first_period=10, period_mult=2, restart_decay=0.5),
    dict(first_period=7, period_mult=1, min_value=0.05, restart_decay=0.8),
    dict(first_period=10, period_mult=2, warmup_steps=5),
    dict(first_period=4, period_mult=3, min_value=0.1, warmup_steps=12, warmup_init_value=0.01),
    dict(
      first_period=6,
      period_mult=2,
      min_value=0.02,
      restart_decay=0.7,
      warmup_steps=3,
      warmup_init_value=0.2,
    ),
    dict(first_period=10, period_mult=1.5, restart_decay=0.9, warmup_steps=4),
  ],
)
def test_decay_and_warmup_follow_their_formulas(kwargs):
  steps = range(400)
  ours = _values(dopt.cosine_warm_restart_schedule(1.5, **kwargs), steps)
  expected = [sgdr(t, 1.5, **kwargs) for t in steps]
  np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=1e-6)


def test_warmup_happens_once_and_ends_at_the_peak():
  schedule = dopt.cosine_warm_restart_schedule(
    1.0, first_period=5, period_mult=1, warmup_steps=10, warmup_init_value=0.0
  )
  values = _values(schedule, range(40))
  np.testing.assert_allclose(values[:10], np.arange(10) / 10, atol=1e-7)
  # The first period starts right after the warmup; later periods start at the peak, no ramp.
  np.testing.assert_array_equal(values[[10, 15, 20, 25, 30, 35]], 1.0)


# ---------------------------------------------------------------- exact restarts


@pytest.mark.parametrize(
  "first_period, period_mult",
  [(1, 2), (1, 3), (2, 3), (3, 2), (5, 7), (1, 10), (1000, 1), (3, 1.5), (1, 1.1), (4, 2.5)],
)
def test_every_restart_is_exact_up_to_int32_max(first_period, period_mult):
  starts = _restart_starts(first_period, period_mult)
  if period_mult == 1:
    # Two million restarts; the first and last thousand are enough to pin divmod.
    starts = starts[:1000] + starts[-1000:]
  schedule = dopt.cosine_warm_restart_schedule(
    1.0, first_period=first_period, period_mult=period_mult
  )
  at_start = _values(schedule, starts)
  np.testing.assert_array_equal(at_start, 1.0)
  all_starts = set(starts)
  before = [s - 1 for s in starts if s > 0 and s - 1 not in all_starts]
  assert before or first_period == 1 and period_mult == 1
  assert np.all(_values(schedule, before) < 1.0)


@pytest.mark.parametrize(
  "first_period, period_mult, restart_decay",
  [(1, 2, 0.9), (3, 2, 0.5), (1, 3, 1.0), (7, 1.5, 0.99), (1000, 1, 1.0)],
)
def test_large_counts_follow_the_formula(first_period, period_mult, restart_decay):
  starts = _restart_starts(first_period, period_mult)
  rng = np.random.default_rng(0)
  counts = sorted(
    {INT32_MAX, INT32_MAX - 1, *starts[-3:], *(s + 1 for s in starts[-3:] if s < INT32_MAX)}
    | set(rng.integers(2**20, INT32_MAX, size=50).tolist())
  )
  schedule = dopt.cosine_warm_restart_schedule(
    2.0,
    first_period=first_period,
    period_mult=period_mult,
    min_value=0.1,
    restart_decay=restart_decay,
  )
  expected = [
    sgdr(t, 2.0, first_period, period_mult, min_value=0.1, restart_decay=restart_decay)
    for t in counts
  ]
  # float32 holds T_cur / T_i to about 1e-7 for periods of 2^30 steps.
  np.testing.assert_allclose(_values(schedule, counts), expected, rtol=2e-5, atol=1e-6)


def test_timm_float_log_failure_case():
  # timm: i = floor(log(1 - t / t_initial * (1 - cycle_mul), cycle_mul)) puts t=121 in cycle 4.
  t, t_initial, cycle_mul = 121, 1, 3
  assert math.floor(math.log(1 - t / t_initial * (1 - cycle_mul), cycle_mul)) == 4
  assert _restart_starts(1, 3)[:6] == [0, 1, 4, 13, 40, 121]
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=1, period_mult=3)
  assert float(schedule(121)) == 1.0
  assert float(jax.jit(schedule)(jnp.int32(121))) == 1.0
  assert float(schedule(120)) < 1.0
  position = dopt.restart_position(121, first_period=1, period_mult=3)
  assert (int(position.cycle), int(position.t_cur), float(position.period)) == (5, 0, 243.0)


# ---------------------------------------------------------------- float period_mult


@pytest.mark.parametrize("first_period, period_mult", [(10, 1.5), (1, 1.1), (4, 2.5), (3, 1.7)])
def test_float_period_mult_rounds_period_lengths(first_period, period_mult):
  lengths = _period_lengths(first_period, period_mult, limit=3000)
  counts = np.arange(sum(lengths[:-1]) + 5)
  position = jax.jit(
    jax.vmap(lambda c: dopt.restart_position(c, first_period=first_period, period_mult=period_mult))
  )(jnp.asarray(counts, jnp.int32))
  cycle, t_cur, period = [], [], []
  for i, length in enumerate(lengths):
    cycle += [i] * length
    t_cur += list(range(length))
    period += [length] * length
  np.testing.assert_array_equal(position.cycle, cycle[: len(counts)])
  np.testing.assert_array_equal(position.t_cur, t_cur[: len(counts)])
  np.testing.assert_array_equal(position.period, period[: len(counts)])


def test_float_integer_period_mult_equals_the_integer():
  counts = range(0, 3000, 7)
  as_int = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2)
  as_float = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2.0)
  np.testing.assert_array_equal(_values(as_int, counts), _values(as_float, counts))


# ---------------------------------------------------------------- jit and validation


def test_jit_on_int32_count():
  schedule = dopt.cosine_warm_restart_schedule(
    1.0, first_period=3, period_mult=2, min_value=0.1, restart_decay=0.9, warmup_steps=2
  )
  jitted = jax.jit(schedule)
  for t in [0, 1, 2, 5, 100, 12345, 2**30, INT32_MAX]:
    value = jitted(jnp.asarray(t, jnp.int32))
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(
      float(value),
      sgdr(t, 1.0, 3, 2, min_value=0.1, restart_decay=0.9, warmup_steps=2),
      rtol=2e-5,
      atol=1e-6,
    )
  # One trace serves every count: the count is data, not a constant baked into the trace.
  assert jitted._cache_size() == 1


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(first_period=0),
    dict(first_period=-3),
    dict(first_period=2.5),
    dict(first_period=3, period_mult=0.5),
    dict(first_period=3, period_mult=0),
    dict(first_period=3, period_mult=-2),
    dict(first_period=3, period_mult=math.inf),
    dict(first_period=3, restart_decay=0.0),
    dict(first_period=3, restart_decay=1.5),
    dict(first_period=3, warmup_steps=-1),
  ],
)
def test_invalid_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    dopt.cosine_warm_restart_schedule(1.0, **kwargs)
