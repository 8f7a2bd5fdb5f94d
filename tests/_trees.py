"""The one tree comparison of the suite (optax has ``_src/test_utils.py``; no chex here)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def assert_trees_close(
  actual: Any,
  desired: Any,
  rtol: float = 0.0,
  atol: float = 0.0,
  *,
  leaf_scale: bool = False,
  check_dtypes: bool = True,
) -> None:
  """Same structure, same dtypes, and every leaf within ``atol + rtol * |desired|``.

  With the default zero tolerances the leaves must be equal. With ``leaf_scale``
  the absolute tolerance also grows by ``rtol`` times the leaf's largest
  magnitude, so that float rounding near a zero element of a large leaf passes.
  """
  assert jax.tree.structure(actual) == jax.tree.structure(desired), (
    jax.tree.structure(actual),
    jax.tree.structure(desired),
  )
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(desired)[0]]
  for path, a, d in zip(paths, jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
    a, d = np.asarray(a), np.asarray(d)
    if check_dtypes:
      assert a.dtype == d.dtype, f"{path}: dtype {a.dtype}, expected {d.dtype}"
    if rtol == 0.0 and atol == 0.0:
      np.testing.assert_array_equal(a, d, err_msg=path)
      continue
    a64, d64 = a.astype(np.float64), d.astype(np.float64)
    floor = atol + (rtol * float(np.max(np.abs(d64), initial=0.0)) if leaf_scale else 0.0)
    np.testing.assert_allclose(a64, d64, rtol=rtol, atol=floor + 1e-30, err_msg=path)
