"""Writes the intersphinx inventories of optax, jax and flax that docs/conf.py reads offline.

The docs build has no network, so intersphinx cannot download ``objects.inv``
at build time. This script writes small inventories, in Sphinx's format
(version 2, zlib-compressed), for the names these docs link to:

* optax: every entry of the ``autosummary`` blocks of optax's ``docs/api/*.rst``
  (pass an optax checkout with ``--optax``; generated with google-deepmind/optax
  at 2edbcbe2390da13983b92cbef94ac0460ecde1c5). optax builds one page per name,
  ``api/generated/<module>.<name>.html``. Each name's role (class, function,
  data) is taken from the installed optax.
* jax and flax: the few names the guides and docstrings use, with the pages
  of jax's ``docs/jax*.rst`` (``_autosummary/<name>.html`` for autosummary
  entries, ``<module>.html#<name>`` for autoclass ones) and of flax's
  ``docs_nnx/api_reference``.

Run it from the repository root (``python docs/ext/make_inventories.py
--optax PATH``) and commit ``docs/_inventories/*.inv``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "_inventories"

# (name, role, uri) relative to the project's base URL in docs/conf.py; "$" is the name.
JAX = (
  [
    (f"jax.{name}", "function", f"_autosummary/jax.{name}.html#$")
    for name in (
      "jit",
      "vmap",
      "grad",
      "jvp",
      "pmap",
      "device_put",
      "eval_shape",
    )
  ]
  + [
    ("jax.Array", "class", "_autosummary/jax.Array.html#$"),
    ("jax.shard_map", "function", "_autosummary/jax.shard_map.html#$"),
    ("jax.lax.scan", "function", "_autosummary/jax.lax.scan.html#$"),
    ("jax.lax.psum", "function", "_autosummary/jax.lax.psum.html#$"),
    (
      "jax.distributed.initialize",
      "function",
      "_autosummary/jax.distributed.initialize.html#$",
    ),
    (
      "jax.ffi.ffi_call",
      "function",
      "_autosummary/jax.ffi.ffi_call.html#$",
    ),
  ]
  + [
    (
      f"jax.sharding.{name}",
      "class",
      f"jax.sharding.html#jax.sharding.{name}",
    )
    for name in ("Sharding", "NamedSharding", "PartitionSpec", "Mesh")
  ]
)

_OPTIMIZER = "api_reference/flax.nnx/training/optimizer.html#flax.nnx.optimizer.Optimizer"
FLAX = [
  ("flax.nnx.optimizer.Optimizer", "class", _OPTIMIZER),
  ("flax.nnx.Optimizer", "class", _OPTIMIZER),
]


def optax_entries(checkout: Path) -> list[tuple[str, str, str]]:
  entries = []
  for rst in sorted((checkout / "docs" / "api").glob("*.rst")):
    module, in_summary = "optax", False
    for line in rst.read_text().splitlines():
      if match := re.match(r"\.\. currentmodule:: (\S+)", line):
        module = match.group(1)
      elif line.startswith(".. autosummary::"):
        in_summary = True
      elif in_summary and (
        match := re.match(r"\s+([A-Za-z_][\w.]*)\s*$", line)
      ):
        entries.append(
          (f"{module}.{match.group(1)}", _role(module, match.group(1)))
        )
      elif in_summary and line and not line[0].isspace():
        in_summary = False
  return [
    (name, role, f"api/generated/{name}.html#$")
    for name, role in dict(entries).items()
    if role
  ]


def _role(module: str, name: str) -> str:
  try:
    obj = importlib.import_module(module)
    for part in name.split("."):
      obj = getattr(obj, part)
  except (ImportError, AttributeError):
    return ""
  if inspect.isclass(obj):
    return "class"
  return "function" if inspect.isroutine(obj) else "data"


def write(
  path: Path,
  project: str,
  version: str,
  entries: list[tuple[str, str, str]],
) -> None:
  header = (
    "# Sphinx inventory version 2\n"
    f"# Project: {project}\n"
    f"# Version: {version}\n"
    "# The remainder of this file is compressed using zlib.\n"
  )
  body = "".join(
    f"{name} py:{role} 1 {uri} -\n"
    for name, role, uri in sorted(set(entries))
  )
  path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))
  print(f"{path}: {len(entries)} names")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--optax",
    type=Path,
    required=True,
    help="a checkout of google-deepmind/optax",
  )
  args = parser.parse_args()
  import optax

  OUT.mkdir(exist_ok=True)
  write(
    OUT / "optax.inv",
    "optax",
    optax.__version__,
    optax_entries(args.optax),
  )
  write(OUT / "jax.inv", "JAX", "latest", JAX)
  write(OUT / "flax.inv", "Flax", "latest", FLAX)


if __name__ == "__main__":
  main()
