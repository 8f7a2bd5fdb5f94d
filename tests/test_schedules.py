"""cosine_warm_restart_schedule against torch's CosineAnnealingWarmRestarts and the SGDR formulas.

Expected values come from torch, from REFERENCE.md, or from the formulas
written out here in float64 Python with integer cycle bookkeeping; none are
produced by the library itself.

torch's values come through the ``peer`` fixture (``_peer_runs.warm_restarts_lrs``):
by default they are read from ``tests/fixtures/peers.npz``, recorded by
``scripts/record_peer_fixtures.sh``, and this module needs no torch; under
``--extended`` and when recording (``--record-peers``) torch runs live (the
``peers`` extra: ``torch>=2.5,<2.16``), and under ``--extended`` must
reproduce its fixture.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoupled_optax as dopt

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


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
  first_period, period_mult, min_value, init_value, peer
):
  steps = 600
  expected = peer(
    lambda live: live.warm_restarts_lrs(steps, init_value, first_period, period_mult, min_value)
  )
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


# ---------------------------------------------------------------- argument validation


def _bad_arguments():
  """(kwargs, exception, argument name) for cosine_warm_restart_schedule(init_value=1.0, ...)."""
  cases = []
  for name in ["init_value", "first_period", "period_mult", "min_value", "restart_decay"]:
    for value in ["1", None, [1], 1 + 2j, True]:
      cases.append(({name: value}, TypeError, name))
  for name in ["warmup_steps", "warmup_init_value"]:
    for value in ["1", None, [3], 1j, False]:
      cases.append(({name: value}, TypeError, name))
  value_errors = {
    "init_value": [-1.0, math.nan, math.inf, -math.inf],
    "first_period": [0, -3, 2.5, math.nan, math.inf],
    "period_mult": [0.5, 0, -2, math.nan, math.inf],
    "min_value": [-0.1, math.nan, math.inf, 1.5],
    "restart_decay": [0.0, -0.5, 1.5, math.nan],
    "warmup_steps": [-1, 2.5, math.nan, math.inf],
    "warmup_init_value": [-1e-3, math.nan, math.inf],
  }
  for name, values in value_errors.items():
    cases += [({name: value}, ValueError, name) for value in values]
  return cases


@pytest.mark.parametrize("kwargs, error, name", _bad_arguments())
def test_cosine_warm_restart_schedule_rejects_bad_arguments_at_construction(kwargs, error, name):
  arguments = dict(init_value=1.0, first_period=3) | kwargs
  with pytest.raises(error, match=name):
    dopt.cosine_warm_restart_schedule(**arguments)


def test_min_value_above_init_value_names_init_value():
  with pytest.raises(ValueError, match=r"min_value must .*\[0, init_value\] = \[0, 0.5\], got 0.6"):
    dopt.cosine_warm_restart_schedule(0.5, first_period=3, min_value=0.6)
  # The boundary is allowed: a constant schedule.
  schedule = dopt.cosine_warm_restart_schedule(0.5, first_period=3, min_value=0.5)
  np.testing.assert_array_equal(_values(schedule, range(7)), 0.5)


@pytest.mark.parametrize(
  "kwargs, error, name",
  [
    (dict(first_period=None), TypeError, "first_period"),
    (dict(first_period="3"), TypeError, "first_period"),
    (dict(first_period=[3]), TypeError, "first_period"),
    (dict(first_period=3j), TypeError, "first_period"),
    (dict(first_period=True), TypeError, "first_period"),
    (dict(first_period=0), ValueError, "first_period"),
    (dict(first_period=1.5), ValueError, "first_period"),
    (dict(first_period=math.inf), ValueError, "first_period"),
    (dict(period_mult=None), TypeError, "period_mult"),
    (dict(period_mult="2"), TypeError, "period_mult"),
    (dict(period_mult=0.9), ValueError, "period_mult"),
    (dict(period_mult=math.nan), ValueError, "period_mult"),
    (dict(period_mult=math.inf), ValueError, "period_mult"),
    (dict(count=True), TypeError, "count"),
    (dict(count="3"), TypeError, "count"),
    (dict(count=None), TypeError, "count"),
    (dict(count=3 + 0j), TypeError, "count"),
    (dict(count=jnp.asarray([True, False])), TypeError, "count"),
  ],
)
def test_restart_position_rejects_bad_arguments(kwargs, error, name):
  arguments = dict(count=5, first_period=3, period_mult=2) | kwargs
  with pytest.raises(error, match=name):
    dopt.restart_position(**arguments)


def test_period_mult_too_close_to_one_raises_at_construction():
  with pytest.raises(ValueError, match="period_mult"):
    dopt.cosine_warm_restart_schedule(1.0, first_period=1, period_mult=1 + 1e-7)


def test_first_period_as_integral_float_is_accepted():
  as_float = dopt.cosine_warm_restart_schedule(1.0, first_period=10.0, warmup_steps=4.0)
  as_int = dopt.cosine_warm_restart_schedule(1.0, first_period=10, warmup_steps=4)
  np.testing.assert_array_equal(_values(as_float, range(50)), _values(as_int, range(50)))


# ---------------------------------------------------------------- count types

# Arguments with warmup, a floor and a decay, so every term of the schedule is exercised.
WARM = dict(first_period=3, period_mult=2, min_value=0.1, restart_decay=0.9, warmup_steps=100)


def _expected(t, **kwargs):
  return sgdr(t, 1.0, **kwargs)


def test_uint32_counts_past_int32_max_are_exact():
  # Before: the count was cast to int32 and wrapped, giving -21474836.0 here.
  kwargs = dict(first_period=3, period_mult=2, warmup_steps=100)
  schedule = dopt.cosine_warm_restart_schedule(1.0, **kwargs)
  count = 2**31 + 50
  assert _expected(count, **kwargs) == pytest.approx(0.7500000396969578, abs=1e-15)
  for value in [schedule(jnp.uint32(count)), jax.jit(schedule)(jnp.uint32(count))]:
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), _expected(count, **kwargs), rtol=2e-6)
  # A restart above 2^31 lands on its step: 3 * (2^30 - 1) steps after the warmup.
  restart = 100 + 3 * (2**30 - 1)
  assert restart > INT32_MAX
  counts = jnp.asarray([restart - 1, restart, restart + 1, UINT32_MAX], jnp.uint32)
  values = np.asarray(jax.jit(jax.vmap(schedule))(counts), np.float64)
  assert values[0] < 1e-6 and values[1] == 1.0
  np.testing.assert_allclose(values, [_expected(int(t), **kwargs) for t in counts], atol=1e-6)


def test_python_int_counts_take_the_narrowest_exact_dtype():
  schedule = dopt.cosine_warm_restart_schedule(1.0, **WARM)
  for count in [0, 99, 100, 2**31 - 1, 2**31 + 50, UINT32_MAX]:
    np.testing.assert_allclose(float(schedule(count)), _expected(count, **WARM), atol=2e-6)
  with jax.enable_x64(False):
    with pytest.raises(OverflowError, match=r"count=4294967296 .*jax_enable_x64"):
      schedule(2**32)
    # NumPy's int64 is wrapped to int32 silently by jnp.asarray; here it is checked.
    np.testing.assert_allclose(
      schedule(np.arange(5, dtype=np.int64) * 10**9),
      [_expected(t * 10**9, **WARM) for t in range(5)],
      atol=2e-6,
    )
    with pytest.raises(OverflowError, match="count"):
      schedule(np.int64(2**40))


@pytest.mark.parametrize("count_dtype", [jnp.int64, jnp.uint64])
def test_64_bit_counts_under_x64_are_exact(count_dtype):
  kwargs = dict(first_period=3, period_mult=2)
  x64_before = jax.config.x64_enabled
  with jax.enable_x64(True):
    schedule = dopt.cosine_warm_restart_schedule(1.0, **kwargs)
    # Before: 2^40 wrapped to the int32 0 and gave 1.0. Cycle 38 starts at 3 (2^38 - 1).
    assert _expected(2**40, **kwargs) == pytest.approx(0.7499999999950511, abs=1e-15)
    top = 2**63 - 1 if count_dtype == jnp.int64 else UINT64_MAX
    restart = max(3 * (2**k - 1) for k in range(70) if 3 * (2**k - 1) <= top)
    counts = [2**40, 2**40 + 12345678901, restart - 1, restart, top, 2**31 + 50]
    array = jnp.asarray(np.asarray(counts, np.dtype(count_dtype)))
    assert array.dtype == count_dtype
    for values in [jax.jit(jax.vmap(schedule))(array), schedule(array)]:
      assert values.dtype == jnp.float32
      np.testing.assert_allclose(values, [_expected(t, **kwargs) for t in counts], atol=2e-6)
      assert float(values[3]) == 1.0 and float(values[2]) < 1e-6
    # Python ints are exact up to 2^64 - 1 and raise above it.
    np.testing.assert_allclose(float(schedule(2**40)), _expected(2**40, **kwargs), atol=2e-6)
    np.testing.assert_allclose(
      float(schedule(UINT64_MAX)), _expected(UINT64_MAX, **kwargs), atol=2e-6
    )
    with pytest.raises(OverflowError, match=r"count=18446744073709551616 .*2\*\*64 - 1"):
      schedule(2**64)
    position = dopt.restart_position(array, **kwargs)
    assert position.t_cur.dtype == count_dtype and position.cycle.dtype == jnp.int32
    np.testing.assert_array_equal(position.t_cur[3], 0)
  # The context restores the flag, so the other tests run as they would alone.
  assert jax.config.x64_enabled == x64_before


@pytest.mark.parametrize(
  "count",
  [
    -1,
    -(10**30),
    jnp.int32(-5),
    jnp.int32(-(2**31)),
    jnp.int8(-128),
    jnp.int16(-7),
    -0.5,
    -math.inf,
    jnp.float32(-3.5),
  ],
)
def test_negative_counts_clip_to_zero_with_and_without_warmup(count):
  # Before: with warmup the ramp extrapolated below warmup_init_value (-0.05 at -1).
  warm = dopt.cosine_warm_restart_schedule(
    1.0, first_period=3, period_mult=2, warmup_steps=20, warmup_init_value=0.05
  )
  cold = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2, min_value=0.1)
  for schedule, at_zero in [(warm, 0.05), (cold, 1.0)]:
    assert float(schedule(count)) == float(schedule(0)) == pytest.approx(at_zero)
    if not isinstance(count, int) or abs(count) <= INT32_MAX:  # jit itself takes only int32
      assert float(jax.jit(schedule)(count)) == float(schedule(0))
  position = dopt.restart_position(count, first_period=3, period_mult=2)
  assert (int(position.cycle), float(position.t_cur)) == (0, 0.0)


def test_negative_64_bit_counts_clip_to_zero():
  with jax.enable_x64(True):
    schedule = dopt.cosine_warm_restart_schedule(1.0, **WARM)
    counts = jnp.asarray([-(2**62), -(2**40), -1, 0], jnp.int64)
    np.testing.assert_array_equal(jax.vmap(schedule)(counts), 0.0)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int16, jnp.uint8, jnp.uint16, jnp.uint32])
def test_small_integer_counts_equal_int32_counts(dtype):
  kwargs = WARM | dict(warmup_steps=7)
  schedule = dopt.cosine_warm_restart_schedule(1.0, **kwargs)
  top = int(jnp.iinfo(dtype).max)
  steps = sorted({*range(0, min(top, 300) + 1), top - 1, top})
  ours = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, dtype))
  if top <= INT32_MAX:
    # Widened to int32: bit-identical to the same steps as int32 counts.
    np.testing.assert_array_equal(ours, _values(schedule, steps))
  np.testing.assert_allclose(ours, [_expected(t, **kwargs) for t in steps], rtol=2e-5, atol=1e-6)
  position = dopt.restart_position(jnp.asarray(top, dtype), first_period=3, period_mult=2)
  assert position.t_cur.dtype == (jnp.uint32 if dtype == jnp.uint32 else jnp.int32)


def sgdr_fractional(
  t,
  init_value,
  first_period,
  period_mult=1,
  min_value=0.0,
  restart_decay=1.0,
  warmup_steps=0,
  warmup_init_value=0.0,
):
  """SGDR at a fractional step t >= 0: the ramp in t; after it, the period of floor(t), T_cur fractional."""
  if t < warmup_steps:
    return warmup_init_value + (init_value - warmup_init_value) * t / warmup_steps
  whole = math.floor(t) - warmup_steps
  cycle, start, length = 0, 0, first_period
  if period_mult == 1:
    cycle = whole // first_period
    start = cycle * first_period
  else:
    for length in _period_lengths(first_period, period_mult, whole):
      if start + length > whole:
        break
      start += length
      cycle += 1
  t_cur = (whole - start) + (t - math.floor(t))
  peak = init_value * restart_decay**cycle
  return min_value + 0.5 * (peak - min_value) * (1 + math.cos(math.pi * t_cur / length))


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(first_period=3, period_mult=2, min_value=0.1),
    dict(first_period=5, period_mult=1, restart_decay=0.8),
    dict(first_period=4, period_mult=1.5, warmup_steps=10, warmup_init_value=0.2, min_value=0.05),
  ],
)
def test_float_counts_are_fractional_steps(kwargs):
  schedule = dopt.cosine_warm_restart_schedule(1.0, **kwargs)
  rng = np.random.default_rng(1)
  counts = np.concatenate([np.arange(0, 120, 0.25), rng.uniform(0, 5000, 200)]).astype(np.float32)
  expected = [sgdr_fractional(float(t), 1.0, **kwargs) for t in counts]
  np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(counts), expected, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(
    [float(schedule(float(t))) for t in counts[:40]], expected[:40], rtol=2e-5, atol=2e-6
  )
  # Integral floats are the integer steps.
  steps = np.arange(300)
  np.testing.assert_allclose(
    jax.vmap(schedule)(steps.astype(np.float32)), _values(schedule, steps), rtol=0, atol=1e-7
  )


def test_float_count_edge_cases():
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=3, period_mult=2, warmup_steps=4)
  assert math.isnan(float(schedule(math.nan)))
  assert math.isnan(float(schedule(jnp.float32(np.nan) + 10)))
  # A float count saturates at the largest float32 below 2^32 instead of wrapping.
  top = float(np.nextafter(np.float32(2**32), np.float32(0)))
  assert top == 2**32 - 256
  assert (
    float(schedule(math.inf))
    == float(schedule(jnp.float32(top)))
    == pytest.approx(sgdr(2**32 - 256, 1.0, 3, 2, warmup_steps=4), abs=2e-6)
  )
  position = dopt.restart_position(jnp.float16(2.5), first_period=3, period_mult=2)
  assert position.t_cur.dtype == jnp.float32 and float(position.t_cur) == 2.5
  with jax.enable_x64(True):
    count = 2.0**40 + 0.5
    np.testing.assert_allclose(
      float(schedule(count)), sgdr_fractional(count, 1.0, 3, 2, warmup_steps=4), atol=2e-6
    )


def test_counts_under_jit_and_vmap_match_eager_evaluation():
  schedule = dopt.cosine_warm_restart_schedule(1.0, **WARM)
  for dtype in [jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.int32, jnp.uint32, jnp.float32]:
    top = jnp.iinfo(dtype).max if jnp.issubdtype(dtype, jnp.integer) else 1e6
    counts = jnp.asarray(np.linspace(0, top, 13).astype(np.dtype(dtype)))
    batched = jax.jit(jax.vmap(schedule))(counts)
    # jit may fuse a multiply-add, so one float32 ulp apart.
    np.testing.assert_allclose(batched, [schedule(c) for c in counts], rtol=3e-7, atol=1e-9)
    # An array count works without vmap too.
    np.testing.assert_allclose(schedule(counts), batched, rtol=3e-7, atol=1e-9)
  jitted = jax.jit(schedule)
  for count in [jnp.uint32(3), jnp.uint32(2**31 + 7), jnp.uint32(UINT32_MAX)]:
    jitted(count)
  assert jitted._cache_size() == 1


@pytest.mark.parametrize("count", [True, np.bool_(False), jnp.asarray(True), np.asarray([True])])
def test_bool_counts_are_rejected(count):
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=3, warmup_steps=2)
  with pytest.raises(TypeError, match="count"):
    schedule(count)
  with pytest.raises(TypeError, match="count"):
    jax.jit(schedule)(jnp.asarray(count))


def test_periods_longer_than_the_count_dtype():
  # first_period above int32 max: every int32 count is in the first period.
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=2**33)
  np.testing.assert_allclose(
    float(schedule(jnp.int32(INT32_MAX))), sgdr(INT32_MAX, 1.0, 2**33), rtol=1e-6
  )
  # warmup_steps above uint32 max: uint32 counts never leave the warmup.
  schedule = dopt.cosine_warm_restart_schedule(1.0, first_period=3, warmup_steps=2**33)
  np.testing.assert_allclose(float(schedule(jnp.uint32(UINT32_MAX))), UINT32_MAX / 2**33, rtol=1e-6)


def test_normalized_weight_decay_schedule_shares_the_count_handling():
  kwargs = dict(first_period=3, period_mult=2, warmup_steps=100)
  wd = dopt.normalized_weight_decay_schedule(0.05, 100, 1000, steps_per_epoch=1, **kwargs)
  lr = dopt.cosine_warm_restart_schedule(1.0, **kwargs)
  # Past int32 max, restart 30 (period 3 * 2^30) starts at 100 + 3 * (2^30 - 1).
  restart = 100 + 3 * (2**30 - 1)
  counts = jnp.asarray([restart - 1, restart], jnp.uint32)
  assert float(lr(counts[1])) == 1.0
  np.testing.assert_allclose(
    wd(counts), 0.05 * np.sqrt(100 / 1000 / (3.0 * np.asarray([2**29, 2**30]))), rtol=1e-6
  )
  # Negative counts and warmup use the first period.
  np.testing.assert_allclose(
    [float(wd(c)) for c in [-5, 0, 99, 1.5]], 0.05 * math.sqrt(100 / 1000 / 3), rtol=1e-6
  )
  with pytest.raises(TypeError, match="count"):
    wd(True)
