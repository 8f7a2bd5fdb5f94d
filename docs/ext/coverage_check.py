"""Fails the docs build when a public name has no API entry (as optax's docs/ext/coverage_check.py).

Every name in ``decoupled_optax.__all__`` must be documented as
``decoupled_optax.<name>`` in the Python domain, which the autosummary of
``api.rst`` does. A missing name raises ``sphinx.errors.ExtensionError`` at the
end of reading, so the build fails with or without ``-W``.
"""

from __future__ import annotations

from typing import Any

MODULE = "decoupled_optax"


def missing_names(public: list[str], documented: set[str]) -> list[str]:
  """The public names with no ``decoupled_optax.<name>`` entry among ``documented``."""
  return sorted(
    name for name in public if f"{MODULE}.{name}" not in documented
  )


def _check(app: Any, env: Any) -> None:
  del app
  from sphinx.errors import ExtensionError

  import decoupled_optax

  documented = set(env.get_domain("py").objects)
  missing = missing_names(list(decoupled_optax.__all__), documented)
  if missing:
    raise ExtensionError(
      f"{len(missing)} public name(s) of {MODULE}.__all__ have no API entry; add them to "
      f"docs/api.rst: {', '.join(missing)}"
    )


def setup(app: Any) -> dict[str, Any]:
  app.connect("env-check-consistency", _check)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
