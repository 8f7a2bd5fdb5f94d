"""Smoke runs of the examples and the reproductions (a few steps each), so they do not rot.

Each script exposes ``main(argv)``; it is imported from its file and run with
``--smoke --out <tmp>``, in this process (jax and flax are imported once).
The cost is mostly XLA compilation, one program per optimizer; ``--smoke``
compiles without XLA's backend optimisations (``_digits.SMOKE_COMPILER_OPTIONS``)
and runs a narrow CNN on a data subset for 3-9 steps. The MNIST-1D
reproductions (decoupling, warm restarts) have their smoke runs in
``test_benchmark_smoke.py``.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parent.parent
for folder in ("examples", "benchmarks"):
  if str(ROOT / folder) not in sys.path:
    sys.path.insert(0, str(ROOT / folder))


def _load(relative: str) -> ModuleType:
  path = ROOT / relative
  spec = importlib.util.spec_from_file_location(path.stem, path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "script",
  ["examples/flax_linen_digits.py", "examples/flax_nnx_digits.py", "examples/equinox_digits.py"],
)
def test_example_smoke(script: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
  runs = tmp_path / "runs"
  results = _load(script).main(["--smoke", "--out", str(tmp_path), "--tensorboard", str(runs)])
  assert set(results) == {"AdamWR", "AdamP"}
  assert all(0.0 <= acc <= 1.0 for acc in results.values())
  assert (tmp_path / f"{Path(script).stem}.png").stat().st_size > 0
  # Every line is labelled: the steps and time, then each optimizer's accuracy by name.
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-3].endswith(" s in all"), lines
  assert [line.rsplit(": ", 1)[0] for line in lines[-2:]] == [
    "AdamWR test accuracy",
    "AdamP test accuracy",
  ], lines
  # One TensorBoard run per optimizer, holding the diagnostics.
  for name in results:
    (event_file,) = (runs / name).glob("events.out.tfevents.*")
    tags = _scalar_tags(event_file)
    assert "train/loss" in tags and tags.count("diagnostics/learning_rate") == 5
    assert any(t.startswith("diagnostics/angular_update/") for t in tags)


def _scalar_tags(path: Path) -> list[str]:
  """The scalar tags of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2

  data, i, tags = path.read_bytes(), 0, []
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i : i + 8])
    event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
    tags += [value.tag for value in event.summary.value]
    i += 12 + length + 4
  return tags


@pytest.mark.extended
@pytest.mark.parametrize(
  ("script", "figures"),
  [
    ("benchmarks/repro_l2_insensitivity.py", ["repro_l2_insensitivity.png"]),
    ("benchmarks/demo_corrected_decay.py", ["demo_corrected_decay.png"]),
    ("benchmarks/repro_norm_growth.py", ["repro_norm_growth_toy.png", "repro_norm_growth_cnn.png"]),
  ],
)
def test_reproduction_smoke(script: str, figures: list[str], tmp_path: Path) -> None:
  _load(script).main(["--smoke", "--out", str(tmp_path)])
  name = Path(script).stem
  for figure in figures:
    assert (tmp_path / figure).stat().st_size > 0
  assert (tmp_path / f"{name}.md").read_text().startswith("# ")
  payload = json.loads((tmp_path / f"{name}.json").read_text())
  assert payload["command"].startswith(f"python benchmarks/{name}.py")


def test_default_outputs_go_to_an_ignored_folder_not_the_committed_figures() -> None:
  """The Quickstart's first command must leave `git status` clean."""
  import _common
  import _digits

  example_out = _digits.base_parser("x").parse_args([]).out
  reproduction = _common.Outputs("repro_x", _common.parse_args("x", []).out, [])
  published = _common.Outputs("repro_x", None, [], publish=True)
  assert example_out == reproduction.figures == reproduction.results == _digits.OUTPUT_DIR
  assert (published.figures, published.results) == (_digits.DOCS_DIR, _digits.RESULTS_DIR)
  ignored = (ROOT / ".gitignore").read_text().splitlines()
  assert f"/{_digits.OUTPUT_DIR.relative_to(ROOT)}/" in ignored
