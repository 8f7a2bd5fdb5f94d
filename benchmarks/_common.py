"""Shared by the reproductions: the digits data and CNN (from ``examples/_digits.py``), outputs.

Every reproduction writes its figures to ``docs/`` and its results table, as
Markdown and JSON with the command that regenerates it, to
``benchmarks/results/``; ``--out DIR`` sends both to ``DIR`` instead.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(_EXAMPLES) not in sys.path:
  sys.path.insert(0, str(_EXAMPLES))

import _digits as D  # noqa: E402  (puts the checkout on sys.path too)
import numpy as np  # noqa: E402

__all__ = ["D", "Outputs", "markdown_table", "parse_args"]


def parse_args(description: str, argv: list[str] | None, extra: Any = None) -> Any:
  """The common flags (``--seed``, ``--smoke``, ``--out``), plus ``extra(parser)``."""
  parser = D.base_parser(description, default_out=None)
  parser.set_defaults(out=None)
  if extra is not None:
    extra(parser)
  return parser.parse_args(argv)


class Outputs:
  """Where a reproduction writes its figures and tables, and the command that made them."""

  def __init__(self, name: str, out: Path | None, argv: list[str] | None) -> None:
    self.name = name
    self.figures = D.DOCS_DIR if out is None else Path(out)
    self.results = D.RESULTS_DIR if out is None else Path(out)
    self.figures.mkdir(parents=True, exist_ok=True)
    self.results.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else argv
    self.command = shlex.join(["python", f"benchmarks/{name}.py", *args])
    self.start = time.perf_counter()

  def figure(self, filename: str) -> Path:
    """Path of a figure in the figure folder."""
    return self.figures / filename

  def write(self, title: str, markdown: str, data: dict[str, Any]) -> None:
    """Writes ``<name>.md`` and ``<name>.json`` to the results folder."""
    elapsed = time.perf_counter() - self.start
    header = (
      f"# {title}\n\nRegenerate with `{self.command}` (seeded, deterministic on CPU); "
      f"this run took {elapsed:.0f} s.\n\n"
    )
    (self.results / f"{self.name}.md").write_text(header + markdown.rstrip() + "\n")
    payload = {"title": title, "command": self.command, "seconds": round(elapsed, 1), **data}
    (self.results / f"{self.name}.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    print(f"wrote {self.results / self.name}.md/.json; {elapsed:.1f} s")


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A Markdown table; floats are written with 4 significant digits."""

  def cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
      return f"{v:.4g}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"
